"""Reading messages back: a chat user's history and the inbound rows still to handle."""

from __future__ import annotations

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


async def unhandled_inbound(session: AsyncSession, limit: int) -> list[ChatMessage]:
    query = (
        select(ChatMessage)
        .where(col(ChatMessage.direction) == Direction.IN, col(ChatMessage.handled_at).is_(None))
        .order_by(col(ChatMessage.id))
        .limit(limit)
    )
    return list((await session.exec(query)).all())


async def mark_handled(session: AsyncSession, message_id: int) -> bool:
    """Claim an inbound row for the reply rules; False if it was handled already."""
    result = await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.id) == message_id, col(ChatMessage.handled_at).is_(None))
        .values(handled_at=utcnow())
    )
    return result.rowcount > 0


async def is_first_inbound(session: AsyncSession, message: ChatMessage) -> bool:
    """Whether no earlier inbound message of this lead exists, on any provider."""
    query = select(sa.func.count()).where(
        col(ChatMessage.lead_id) == message.lead_id,
        col(ChatMessage.direction) == Direction.IN,
        col(ChatMessage.id) < message.id,
    )
    return (await session.exec(query)).one() == 0


async def get_lead(session: AsyncSession, lead_id: int) -> Lead | None:
    return await session.get(Lead, lead_id)
