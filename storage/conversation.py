"""Reading messages back: a chat user's history and the inbound rows still to handle."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.models import ChatMessage, Lead
from leadline.storage.types import utcnow

VISIBLE_OUT = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ)


async def channel_history(
    session: AsyncSession, broker_id: str, provider: str, channel_user_id: str, limit: int
) -> list[ChatMessage]:
    """The last `limit` messages with this chat user, oldest first. Outbound rows
    show once sent: a pending or failed one never reached the user."""
    query = (
        select(ChatMessage)
        .where(
            col(ChatMessage.broker_id) == broker_id,
            col(ChatMessage.provider) == provider,
            col(ChatMessage.channel_user_id) == channel_user_id,
            sa.or_(
                col(ChatMessage.direction) == Direction.IN,
                col(ChatMessage.status).in_(VISIBLE_OUT),
            ),
        )
        .order_by(col(ChatMessage.id).desc())
        .limit(limit)
    )
    rows = list((await session.exec(query)).all())
    rows.reverse()
    return rows


@dataclass(frozen=True, slots=True)
class Unhandled:
    """The little the reply rules need of an inbound message (no full row, no JSON)."""

    id: int
    lead_id: int
    broker_id: str
    provider: str
    channel_user_id: str
    channel_username: str | None
    channel_message_id: str | None = None
    message_text: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None


_TABLE = ChatMessage.__table__  # type: ignore[attr-defined]
# What `Unhandled` holds, in its order.
_UNHANDLED = (
    _TABLE.c.id,
    _TABLE.c.lead_id,
    _TABLE.c.broker_id,
    _TABLE.c.provider,
    _TABLE.c.channel_user_id,
    _TABLE.c.channel_username,
    _TABLE.c.channel_message_id,
    _TABLE.c.message_text,
    _TABLE.c.attachments,
    _TABLE.c.created_at,
)


def _claim_statement(limit: int) -> sa.Update:
    """Mark the oldest unhandled inbound rows handled and return them, in one statement.

    Built once per limit: the reply worker runs it for every group commit, and a
    prebuilt Core statement skips the ORM and SQLAlchemy's statement building.
    SKIP LOCKED (PostgreSQL; SQLite has one writer at a time) lets concurrent
    workers take different rows instead of waiting on each other's.
    """
    table = _TABLE
    oldest = (
        sa.select(table.c.id)
        .where(table.c.direction == Direction.IN, table.c.handled_at.is_(None))
        .order_by(table.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (
        sa.update(table)
        # Checked again here: under PostgreSQL a row another worker claimed meanwhile
        # no longer matches, so no message is claimed twice.
        .where(table.c.id.in_(oldest), table.c.handled_at.is_(None))
        .values(handled_at=sa.bindparam("now", type_=table.c.handled_at.type))
        .returning(*_UNHANDLED)
    )


_CLAIMS: dict[int, sa.Update] = {}


async def claim_unhandled(session: AsyncSession, limit: int) -> list[Unhandled]:
    """Mark up to `limit` unhandled inbound rows handled; returns them oldest first.

    Only rows no one had claimed are returned, so two workers never handle the same one.
    """
    statement = _CLAIMS.get(limit)
    if statement is None:
        statement = _CLAIMS[limit] = _claim_statement(limit)
    conn = await session.connection()
    result = await conn.execute(statement, {"now": utcnow()})
    claimed = [Unhandled(*row) for row in result.all()]
    claimed.sort(key=lambda message: message.id)  # RETURNING has no order of its own
    return claimed


async def first_inbound_ids(session: AsyncSession, lead_ids: set[int]) -> dict[int, int]:
    """Each lead's first inbound message id, on any provider."""
    query = (
        select(ChatMessage.lead_id, sa.func.min(ChatMessage.id))
        .where(col(ChatMessage.lead_id).in_(lead_ids), col(ChatMessage.direction) == Direction.IN)
        .group_by(col(ChatMessage.lead_id))
    )
    return {lead_id: first for lead_id, first in (await session.exec(query)).all()}


@dataclass(frozen=True, slots=True)
class LeadSummary:
    id: int
    name: str | None
    phone: str | None
    tags: list[str]


async def lead_infos(session: AsyncSession, lead_ids: set[int]) -> dict[int, LeadSummary]:
    query = select(Lead.id, Lead.name, Lead.phone, Lead.tags).where(col(Lead.id).in_(lead_ids))
    return {row[0]: LeadSummary(*row) for row in (await session.exec(query)).all()}


async def lead_names(session: AsyncSession, lead_ids: set[int]) -> dict[int, str | None]:
    query = select(Lead.id, Lead.name).where(col(Lead.id).in_(lead_ids))
    return {lead_id: name for lead_id, name in (await session.exec(query)).all()}


async def peek_unhandled(session: AsyncSession, limit: int) -> list[Unhandled]:
    """The oldest unhandled inbound rows, not claimed: a slow step (a responder) may look
    at them before a transaction claims them by id."""
    query = (
        sa.select(*_UNHANDLED)
        .where(_TABLE.c.direction == Direction.IN, _TABLE.c.handled_at.is_(None))
        .order_by(_TABLE.c.id)
        .limit(limit)
    )
    result = await (await session.connection()).execute(query)
    return [Unhandled(*row) for row in result.all()]


async def claim_ids(session: AsyncSession, ids: Collection[int]) -> list[Unhandled]:
    """Mark these inbound rows handled, if no one did yet; returns those this call took."""
    if not ids:
        return []
    statement = (
        sa.update(_TABLE)
        .where(_TABLE.c.id.in_(list(ids)), _TABLE.c.handled_at.is_(None))
        .values(handled_at=utcnow())
        .returning(*_UNHANDLED)
    )
    claimed = [Unhandled(*row) for row in (await (await session.connection()).execute(statement))]
    claimed.sort(key=lambda message: message.id)
    return claimed


@dataclass(slots=True)
class LeadReplies:
    """What went out to one lead lately, as the reply rules need it."""

    closed_replies: list[datetime] = field(default_factory=list)  # when each was queued
    human_answers: list[datetime] = field(default_factory=list)
    pending_open_replies: list[datetime] = field(default_factory=list)  # their send_after


async def recent_replies(
    session: AsyncSession, lead_ids: Collection[int], since: datetime
) -> dict[int, LeadReplies]:
    """Outbound rows to these leads since `since`, and their pending open replies.

    A human's answer is an outbound message no rule wrote: sent through the API or
    from the provider's own inbox (an echo). A failed one answered no one. An echo
    that may be a part of a message of ours still being sent is not one (yet).
    """
    found: dict[int, LeadReplies] = {lead_id: LeadReplies() for lead_id in lead_ids}
    if not lead_ids:
        return found
    query = sa.select(
        _TABLE.c.lead_id,
        _TABLE.c.created_at,
        _TABLE.c.send_after,
        _TABLE.c.status,
        _TABLE.c.provider_metadata,
        _TABLE.c.ai_response_used,
        _TABLE.c.provider,
        _TABLE.c.channel_user_id,
        _TABLE.c.attempts,
    ).where(
        _TABLE.c.lead_id.in_(list(lead_ids)),
        _TABLE.c.direction == Direction.OUT,
        sa.or_(_TABLE.c.created_at >= since, _TABLE.c.status == MessageStatus.PENDING),
    )
    rows = list(await (await session.connection()).execute(query))
    sending = _being_sent(rows)
    for lead_id, created, send_after, status, metadata, ai, provider, user, _ in rows:
        rule = (metadata or {}).get("rule")
        replies = found[lead_id]
        if rule == "open_reply" and status == MessageStatus.PENDING and send_after:
            replies.pending_open_replies.append(send_after)
        if created < since:
            continue
        if rule == "closed_reply":
            replies.closed_replies.append(created)
        elif rule is None and not ai and status != MessageStatus.FAILED:
            queued = sending.get((lead_id, provider, user))
            if not (metadata or {}).get("echo") or queued is None or created < queued:
                replies.human_answers.append(created)
    return found


def _being_sent(rows: Collection[Any]) -> dict[tuple[int, str, str], datetime]:
    """When the earliest message of ours still being sent to each chat was queued.

    A message that goes as several sends is recorded only once every part went (or
    between its tries, not at all): an echo of a part that arrived meanwhile is kept
    as sent from elsewhere until the record drops it. Echoes to that chat since the
    message was queued are therefore not counted as a human's answer yet.
    """
    sending: dict[tuple[int, str, str], datetime] = {}
    for lead_id, created, _, status, _, _, provider, user, attempts in rows:
        if status == MessageStatus.PENDING and attempts > 0:
            key = (lead_id, provider, user)
            sending[key] = min(created, sending.get(key, created))
    return sending


async def answered_by_human(session: AsyncSession, lead_id: int, since: datetime) -> bool:
    """Whether a human answered the lead since then (see `recent_replies`)."""
    return bool((await recent_replies(session, [lead_id], since))[lead_id].human_answers)
