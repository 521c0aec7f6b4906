"""Storing inbound messages idempotently and applying status updates monotonically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus, status_advances
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.models import ChatMessage
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


async def insert_incoming(session: AsyncSession, row: IncomingRow) -> StoredMessage | None:
    """Insert one inbound message; None when it was stored before (a redelivery)."""
    lead_id = await ensure_lead(session, row.identity)
    table = ChatMessage.__table__  # type: ignore[attr-defined]
    now = utcnow()
    who = row.identity
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


def statuses_before(new: MessageStatus) -> list[MessageStatus]:
    """The stored statuses that `new` may replace."""
    return [s for s in MessageStatus if status_advances(s, new)]


async def apply_status(session: AsyncSession, change: StatusChange) -> bool:
    """Move an outbound message forward; False when nothing matched or it is already further."""
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
