"""Storing inbound messages idempotently and applying status updates monotonically."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus, status_advances
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.models import ChatMessage, EarlyStatus
from leadline.storage.types import utcnow

IDEMPOTENCY_KEY = ["broker_id", "provider", "direction", "channel_message_id"]


@dataclass(frozen=True, slots=True)
class IncomingRow:
    """An inbound message as storage needs it (the runtime maps adapter events to it)."""

    identity: ChannelIdentity
    channel_message_id: str
    message_text: str | None
    attachments: Sequence[Mapping[str, Any]] = ()
    provider_metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StatusChange:
    broker_id: str
    provider: str
    channel_message_id: str
    status: MessageStatus
    error: str | None = None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    lead_id: int


# Lead ids already resolved in this transaction, by (broker, provider, channel user).
LeadCache = dict[tuple[str, str, str], int]


async def insert_incoming(
    session: AsyncSession, row: IncomingRow, leads: LeadCache | None = None
) -> StoredMessage | None:
    """Insert one inbound message; None when it was stored before (a redelivery).

    A delivery often holds several messages of one user: pass the same `leads`
    cache for all of them to resolve the lead once.
    """
    who = row.identity
    key = (who.broker_id, who.provider, who.channel_user_id)
    lead_id = leads.get(key) if leads is not None else None
    if lead_id is None:
        lead_id = await ensure_lead(session, who)
        if leads is not None:
            leads[key] = lead_id
    table = ChatMessage.__table__  # type: ignore[attr-defined]
    now = utcnow()
    result = await session.exec(
        insert_ignoring_conflicts(session, table, IDEMPOTENCY_KEY)
        .values(
            lead_id=lead_id,
            broker_id=who.broker_id,
            provider=who.provider,
            channel_user_id=who.channel_user_id,
            channel_username=who.channel_username,
            channel_message_id=row.channel_message_id,
            message_text=row.message_text,
            direction=Direction.IN,
            status=MessageStatus.DELIVERED,
            provider_metadata=dict(row.provider_metadata),
            attachments=[dict(a) for a in row.attachments],
            created_at=row.created_at or now,
            updated_at=now,
        )
        .returning(table.c.id)
    )
    new_id = result.scalar_one_or_none()
    return None if new_id is None else StoredMessage(new_id, lead_id)


@dataclass(frozen=True, slots=True)
class EditRow:
    """A chat user's edit of a message they sent earlier."""

    identity: ChannelIdentity
    channel_message_id: str
    message_text: str | None
    attachments: Sequence[Mapping[str, Any]] = ()
    edited_at: datetime | None = None


class EditOutcome(enum.StrEnum):
    APPLIED = "applied"
    REPEATED = "repeated"  # this very edit was applied before (a redelivery)
    STORED_NEW = "stored_new"  # the original was never seen: kept as a message


async def apply_edit(
    session: AsyncSession, edit: EditRow, leads: LeadCache
) -> tuple[EditOutcome, StoredMessage | None]:
    """Update the original's text, keeping what it said before in `edits`.

    The stored message is returned only when the original was unknown and the
    edit had to be stored as a message of its own.
    """
    who = edit.identity
    original = (
        await session.exec(
            select(ChatMessage).where(
                col(ChatMessage.broker_id) == who.broker_id,
                col(ChatMessage.provider) == who.provider,
                col(ChatMessage.direction) == Direction.IN,
                col(ChatMessage.channel_message_id) == edit.channel_message_id,
            )
        )
    ).first()
    stamp = (edit.edited_at or utcnow()).isoformat()
    if original is None:
        row = IncomingRow(
            who,
            edit.channel_message_id,
            edit.message_text,
            edit.attachments,
            {"edited_at": stamp},
            edit.edited_at,
        )
        return EditOutcome.STORED_NEW, await insert_incoming(session, row, leads)
    earlier = list(original.provider_metadata.get("edits", []))
    if any(e.get("edited_at") == stamp for e in earlier):
        return EditOutcome.REPEATED, None
    earlier.append(
        {"text": original.message_text, "attachments": original.attachments, "edited_at": stamp}
    )
    original.message_text = edit.message_text
    if edit.attachments:
        original.attachments = [dict(a) for a in edit.attachments]
    original.provider_metadata = {**original.provider_metadata, "edits": earlier}
    original.updated_at = utcnow()
    session.add(original)
    await session.flush()
    return EditOutcome.APPLIED, None


def statuses_before(new: MessageStatus) -> list[MessageStatus]:
    """The stored statuses that `new` may replace."""
    return [s for s in MessageStatus if status_advances(s, new)]


class StatusOutcome(enum.StrEnum):
    APPLIED = "applied"
    STALE = "stale"  # the message is already as far or further
    KEPT = "kept"  # no message has that id yet: kept for when one does


async def apply_status(session: AsyncSession, change: StatusChange) -> StatusOutcome:
    """Move an outbound message forward, never back; keep a report for an unknown id."""
    if await _advance(session, change):
        return StatusOutcome.APPLIED
    known = await session.exec(
        select(ChatMessage.id).where(
            col(ChatMessage.broker_id) == change.broker_id,
            col(ChatMessage.provider) == change.provider,
            col(ChatMessage.direction) == Direction.OUT,
            col(ChatMessage.channel_message_id) == change.channel_message_id,
        )
    )
    if known.first() is not None:
        return StatusOutcome.STALE
    session.add(
        EarlyStatus(
            broker_id=change.broker_id,
            provider=change.provider,
            channel_message_id=change.channel_message_id,
            status=change.status,
            error=change.error,
        )
    )
    await session.flush()
    return StatusOutcome.KEPT


async def _advance(session: AsyncSession, change: StatusChange) -> bool:
    values: dict[str, Any] = {"status": change.status, "updated_at": utcnow()}
    if change.error is not None:
        values["error"] = change.error
    result = await session.exec(
        sa.update(ChatMessage)
        .where(
            col(ChatMessage.broker_id) == change.broker_id,
            col(ChatMessage.provider) == change.provider,
            col(ChatMessage.direction) == Direction.OUT,
            col(ChatMessage.channel_message_id) == change.channel_message_id,
            col(ChatMessage.status).in_(statuses_before(change.status)),
        )
        .values(**values)
    )
    return result.rowcount > 0


async def apply_early_statuses(
    session: AsyncSession, broker_id: str, provider: str, channel_message_id: str
) -> None:
    """Apply the reports that arrived before this id was recorded, then forget them."""
    where = (
        col(EarlyStatus.broker_id) == broker_id,
        col(EarlyStatus.provider) == provider,
        col(EarlyStatus.channel_message_id) == channel_message_id,
    )
    early = (await session.exec(select(EarlyStatus).where(*where))).all()
    for report in sorted(early, key=lambda r: MessageStatus(r.status).rank):
        change = StatusChange(
            broker_id, provider, channel_message_id, MessageStatus(report.status), report.error
        )
        await _advance(session, change)
    if early:
        await session.exec(sa.delete(EarlyStatus).where(*where))
