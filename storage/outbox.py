"""The outbox: outbound `chat_messages` rows from `pending` to `sent` or `failed`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.messages import apply_early_statuses
from leadline.storage.models import ChatMessage
from leadline.storage.types import utcnow


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    lead_id: int
    broker_id: str
    provider: str
    channel_user_id: str
    message_text: str | None
    channel_username: str | None = None
    attachments: Sequence[Mapping[str, Any]] = ()
    send_after: datetime | None = None
    ai_response_used: bool = False
    provider_metadata: Mapping[str, Any] = field(default_factory=dict)


async def enqueue(session: AsyncSession, message: QueuedMessage) -> int:
    now = utcnow()
    row = ChatMessage(
        lead_id=message.lead_id,
        broker_id=message.broker_id,
        provider=message.provider,
        channel_user_id=message.channel_user_id,
        channel_username=message.channel_username,
        message_text=message.message_text,
        direction=Direction.OUT,
        status=MessageStatus.PENDING,
        attachments=[dict(a) for a in message.attachments],
        provider_metadata=dict(message.provider_metadata),
        send_after=message.send_after,
        ai_response_used=message.ai_response_used,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    assert row.id is not None
    return row.id


async def due_messages(session: AsyncSession, now: datetime, limit: int) -> list[ChatMessage]:
    """Pending outbound rows whose time has come, oldest first.

    A row is held back while an earlier row to the same recipient waits for
    its retry, so a retry never lets later messages overtake it.
    """
    earlier = aliased(ChatMessage)
    waiting_retry = (
        select(earlier.id)
        .where(
            col(earlier.direction) == Direction.OUT,
            col(earlier.status) == MessageStatus.PENDING,
            col(earlier.broker_id) == col(ChatMessage.broker_id),
            col(earlier.provider) == col(ChatMessage.provider),
            col(earlier.channel_user_id) == col(ChatMessage.channel_user_id),
            col(earlier.id) < col(ChatMessage.id),
            col(earlier.attempts) > 0,
            col(earlier.send_after) > now,
        )
        .exists()
    )
    query = (
        select(ChatMessage)
        .where(
            col(ChatMessage.direction) == Direction.OUT,
            col(ChatMessage.status) == MessageStatus.PENDING,
            sa.or_(col(ChatMessage.send_after).is_(None), col(ChatMessage.send_after) <= now),
            ~waiting_retry,
        )
        .order_by(col(ChatMessage.id))
        .limit(limit)
    )
    return list((await session.exec(query)).all())


async def next_due_at(session: AsyncSession) -> datetime | None:
    """When the earliest delayed pending row becomes due."""
    query = select(sa.func.min(ChatMessage.send_after)).where(
        col(ChatMessage.direction) == Direction.OUT,
        col(ChatMessage.status) == MessageStatus.PENDING,
    )
    return (await session.exec(query)).first()


async def claim(session: AsyncSession, message_id: int, attempts_seen: int) -> bool:
    """Take a pending row for one send attempt, counting the attempt before the call.

    The row is taken only if it is still pending with the attempts the caller
    read: a second sender holding a stale copy (another cycle, another process)
    gets False and must not send.
    """
    result = await session.exec(
        sa.update(ChatMessage)
        .where(
            col(ChatMessage.id) == message_id,
            col(ChatMessage.status) == MessageStatus.PENDING,
            col(ChatMessage.attempts) == attempts_seen,
        )
        .values(attempts=attempts_seen + 1, updated_at=utcnow())
    )
    return result.rowcount > 0


async def mark_sent(
    session: AsyncSession, message_id: int, channel_message_id: str, status: MessageStatus
) -> None:
    """Record the provider's id, then apply any status report that beat us to it."""
    result = await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.id) == message_id, col(ChatMessage.status) == MessageStatus.PENDING)
        .values(
            channel_message_id=channel_message_id, status=status, error=None, updated_at=utcnow()
        )
        .returning(ChatMessage.broker_id, ChatMessage.provider)
    )
    found = result.first()
    if found is not None:
        await apply_early_statuses(session, found[0], found[1], channel_message_id)


async def mark_failed(session: AsyncSession, message_id: int, error: str) -> None:
    await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.id) == message_id, col(ChatMessage.status) == MessageStatus.PENDING)
        .values(status=MessageStatus.FAILED, error=error, updated_at=utcnow())
    )


async def postpone(session: AsyncSession, message_id: int, error: str, until: datetime) -> None:
    await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.id) == message_id, col(ChatMessage.status) == MessageStatus.PENDING)
        .values(error=error, send_after=until, updated_at=utcnow())
    )
