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
    channel_message_id: str | None = None


def _claim_statement(limit: int) -> sa.Update:
    """Mark the oldest unhandled inbound rows handled and return them, in one statement.

    Built once per limit: the reply worker runs it for every group commit, and a
    prebuilt Core statement skips the ORM and SQLAlchemy's statement building.
    SKIP LOCKED (PostgreSQL; SQLite has one writer at a time) lets concurrent
    workers take different rows instead of waiting on each other's.
    """
    table = ChatMessage.__table__  # type: ignore[attr-defined]
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
        .returning(
            table.c.id,
            table.c.lead_id,
            table.c.broker_id,
            table.c.provider,
            table.c.channel_user_id,
            table.c.channel_username,
            table.c.channel_message_id,
        )
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


async def lead_names(session: AsyncSession, lead_ids: set[int]) -> dict[int, str | None]:
    query = select(Lead.id, Lead.name).where(col(Lead.id).in_(lead_ids))
    return {lead_id: name for lead_id, name in (await session.exec(query)).all()}
