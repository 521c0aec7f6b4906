"""Reading messages back: a chat user's history and the inbound rows still to handle."""

from __future__ import annotations

from dataclasses import dataclass

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


async def unhandled_inbound(session: AsyncSession, limit: int) -> list[Unhandled]:
    query = (
        select(
            ChatMessage.id,
            ChatMessage.lead_id,
            ChatMessage.broker_id,
            ChatMessage.provider,
            ChatMessage.channel_user_id,
            ChatMessage.channel_username,
        )
        .where(col(ChatMessage.direction) == Direction.IN, col(ChatMessage.handled_at).is_(None))
        .order_by(col(ChatMessage.id))
        .limit(limit)
    )
    return [Unhandled(*row) for row in (await session.exec(query)).all()]


async def claim_unhandled(session: AsyncSession, message_ids: list[int]) -> set[int]:
    """Mark these inbound rows handled; returns those no one had handled yet."""
    if not message_ids:
        return set()
    result = await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.id).in_(message_ids), col(ChatMessage.handled_at).is_(None))
        .values(handled_at=utcnow())
        .returning(ChatMessage.id)
    )
    return set(result.scalars().all())


async def first_inbound_ids(session: AsyncSession, lead_ids: set[int]) -> dict[int, int]:
    """Each lead's first inbound message id, on any provider."""
    query = (
        select(ChatMessage.lead_id, sa.func.min(ChatMessage.id))
        .where(col(ChatMessage.lead_id).in_(lead_ids), col(ChatMessage.direction) == Direction.IN)
        .group_by(col(ChatMessage.lead_id))
    )
    return {lead_id: first for lead_id, first in (await session.exec(query)).all()}


async def lead_names(session: AsyncSession, lead_ids: set[int]) -> dict[int, str | None]:
    query = select(Lead.id, Lead.name).where(col(Lead.id).in_(lead_ids))
    return {lead_id: name for lead_id, name in (await session.exec(query)).all()}
