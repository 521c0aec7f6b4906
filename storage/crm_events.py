"""Events for brokers' CRMs: written with what they report, sent in order per lead.

An event is a row in `crm_events`, written in the same transaction as the message or
the status change it reports, so none is lost and none is invented. A sender takes
each lead's oldest undelivered event (its head) with a lease, like the outbox: a
lead's later events wait behind a failing one, other leads go on.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage.models import ChatMessage, CrmEvent
from leadline.storage.types import utcnow

MESSAGE = "message.stored"  # a message came in (or went out from the provider's inbox)
STATUS = "message.status"  # a message's delivery status moved


def message_payload(message: ChatMessage, kind: str) -> dict[str, Any]:
    return {
        "event": kind,
        "broker": message.broker_id,
        "lead_id": message.lead_id,
        "message": {
            "id": message.id,
            "provider": message.provider,
            "direction": message.direction.value,
            "status": message.status.value,
            "text": message.message_text,
            "attachments": message.attachments,
            "channel_user_id": message.channel_user_id,
            "channel_message_id": message.channel_message_id,
            "error": message.error,
            "ai_response_used": message.ai_response_used,
            "created_at": message.created_at.isoformat(),
            "updated_at": message.updated_at.isoformat(),
        },
    }


async def emit(
    session: AsyncSession, message_ids: Collection[int], kind: str, brokers: Collection[str]
) -> int:
    """An event of `kind` for each of these messages whose broker takes events."""
    if not message_ids or not brokers:
        return 0
    found = await session.exec(
        select(ChatMessage).where(
            col(ChatMessage.id).in_(list(message_ids)),
            col(ChatMessage.broker_id).in_(list(brokers)),
        )
    )
    now = utcnow()
    rows = [
        {
            "broker_id": m.broker_id,
            "lead_id": m.lead_id,
            "kind": kind,
            "payload": message_payload(m, kind),
            "attempts": 0,
            "created_at": now,
        }
        for m in sorted(found.all(), key=lambda m: m.id or 0)
    ]
    if rows:
        await _hold_leads(session, {row["lead_id"] for row in rows})
        table = CrmEvent.__table__  # type: ignore[attr-defined]
        await (await session.connection()).execute(sa.insert(table), rows)
    return len(rows)


LEAD_LOCKS = 0x43524D  # "CRM": the first key of the two-key advisory locks on leads


async def _hold_leads(session: AsyncSession, lead_ids: Collection[int]) -> None:
    """Until this transaction ends, no other may add events for these leads (PostgreSQL).

    An event's id is taken when it is inserted, but the sender sees it only once its
    transaction commits: without this, a lead's later event from one writer (the
    dispatcher) could commit, and be sent, before an earlier one from another (the
    inbound pipeline). SQLite runs one transaction at a time. In id order: no deadlock.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    leads = sa.bindparam("leads", sorted(lead_ids), type_=sa.ARRAY(sa.BigInteger))
    ordered = sa.select(sa.func.unnest(leads).label("lead")).subquery()
    objid = sa.cast(ordered.c.lead % 2147483647, sa.Integer)
    await session.exec(sa.select(sa.func.pg_advisory_xact_lock(LEAD_LOCKS, objid)))


@dataclass(frozen=True, slots=True)
class DueEvent:
    id: int
    broker_id: str
    lead_id: int
    payload: dict[str, Any]
    attempts: int


def _undelivered(table: Any) -> sa.ColumnElement[bool]:
    return col(table.delivered_at).is_(None)


async def take_due(
    session: AsyncSession, now: datetime, lease_until: datetime, limit: int
) -> list[DueEvent]:
    """Each lead's head, if due and free, leased to this sender; oldest first."""
    earlier = aliased(CrmEvent)
    waits = (
        select(earlier.id)
        .where(
            _undelivered(earlier),
            col(earlier.broker_id) == col(CrmEvent.broker_id),
            col(earlier.lead_id) == col(CrmEvent.lead_id),
            col(earlier.id) < col(CrmEvent.id),
        )
        .exists()
    )
    due = sa.and_(
        _undelivered(CrmEvent),
        sa.or_(col(CrmEvent.next_attempt_at).is_(None), col(CrmEvent.next_attempt_at) <= now),
        sa.or_(col(CrmEvent.lease_until).is_(None), col(CrmEvent.lease_until) <= now),
        ~waits,
    )
    free = (
        select(CrmEvent.id)
        .where(due)
        .order_by(col(CrmEvent.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.exec(
        sa.update(CrmEvent)
        .where(col(CrmEvent.id).in_(free), due)
        .values(lease_until=lease_until)
        .returning(
            CrmEvent.id, CrmEvent.broker_id, CrmEvent.lead_id, CrmEvent.payload, CrmEvent.attempts
        )
    )
    return sorted((DueEvent(*row) for row in result.all()), key=lambda e: e.id)


async def delivered(session: AsyncSession, ids: Sequence[int]) -> None:
    if ids:
        await session.exec(
            sa.update(CrmEvent)
            .where(col(CrmEvent.id).in_(list(ids)))
            .values(delivered_at=utcnow(), lease_until=None, last_error=None)
        )


async def failed(session: AsyncSession, event_id: int, error: str, retry_at: datetime) -> None:
    await session.exec(
        sa.update(CrmEvent)
        .where(col(CrmEvent.id) == event_id)
        .values(
            attempts=col(CrmEvent.attempts) + 1,
            last_error=error,
            next_attempt_at=retry_at,
            lease_until=None,
        )
    )


@dataclass(frozen=True, slots=True)
class EventCounts:
    pending: int = 0
    failing: int = 0  # pending events that failed at least once
    last_error: str | None = None  # of the oldest failing event: the one stuck longest


def _oldest_error() -> sa.ScalarSelect[Any]:
    failing = aliased(CrmEvent)
    return (
        select(failing.last_error)
        .where(
            _undelivered(failing),
            col(failing.broker_id) == col(CrmEvent.broker_id),
            col(failing.last_error).is_not(None),
        )
        .order_by(col(failing.id))
        .limit(1)
        .scalar_subquery()
    )


async def event_counts(session: AsyncSession) -> dict[str, EventCounts]:
    """Undelivered events per broker, for `leadline status`."""
    result = await session.exec(
        select(
            CrmEvent.broker_id,
            sa.func.count(),
            sa.func.sum(sa.case((col(CrmEvent.attempts) > 0, 1), else_=0)),
            _oldest_error(),
        )
        .where(_undelivered(CrmEvent))
        .group_by(col(CrmEvent.broker_id))
    )
    return {
        broker: EventCounts(int(pending), int(failing or 0), error)
        for broker, pending, failing, error in result.all()
    }
