"""Finding or creating the lead behind a chat user, through `lead_channels`."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.models import ChatMessage, Lead, LeadChannel
from leadline.storage.types import utcnow


@dataclass(frozen=True, slots=True)
class ChannelIdentity:
    broker_id: str
    provider: str
    channel_user_id: str
    channel_username: str | None = None
    display_name: str | None = None


async def find_lead_id(session: AsyncSession, who: ChannelIdentity) -> int | None:
    query = select(LeadChannel.lead_id, LeadChannel.channel_username).where(
        LeadChannel.broker_id == who.broker_id,
        LeadChannel.provider == who.provider,
        LeadChannel.channel_user_id == who.channel_user_id,
    )
    found = (await session.exec(query)).first()
    if found is None:
        return None
    lead_id, username = found
    if who.channel_username and who.channel_username != username:
        await session.exec(
            sa.update(LeadChannel)
            .where(col(LeadChannel.lead_id) == lead_id, col(LeadChannel.provider) == who.provider)
            .where(col(LeadChannel.channel_user_id) == who.channel_user_id)
            .values(channel_username=who.channel_username)
        )
    return lead_id


async def ensure_lead(session: AsyncSession, who: ChannelIdentity) -> int:
    """The lead id for this chat user, creating the lead on first contact.

    Safe against a concurrent first contact: the unique identity decides, and
    the loser drops the lead it had just made.
    """
    lead_id = await find_lead_id(session, who)
    if lead_id is not None:
        return lead_id
    lead = Lead(broker_id=who.broker_id, name=who.display_name or who.channel_username)
    session.add(lead)
    await session.flush()
    assert lead.id is not None
    table = LeadChannel.__table__  # type: ignore[attr-defined]
    inserted = await session.exec(
        insert_ignoring_conflicts(session, table, ["broker_id", "provider", "channel_user_id"])
        .values(
            lead_id=lead.id,
            broker_id=who.broker_id,
            provider=who.provider,
            channel_user_id=who.channel_user_id,
            channel_username=who.channel_username,
            created_at=utcnow(),
        )
        .returning(table.c.id)
    )
    if inserted.first() is not None:
        return lead.id
    await session.delete(lead)
    winner = await find_lead_id(session, who)
    assert winner is not None
    return winner


async def rekey_channel(
    session: AsyncSession, broker_id: str, provider: str, old: str, new: str
) -> None:
    """A chat moved to a new id (a Telegram group upgraded to a supergroup): the lead
    and its pending messages follow it."""
    taken = await session.exec(
        select(LeadChannel.id).where(
            LeadChannel.broker_id == broker_id,
            LeadChannel.provider == provider,
            LeadChannel.channel_user_id == new,
        )
    )
    if taken.first() is None:
        await session.exec(
            sa.update(LeadChannel)
            .where(col(LeadChannel.broker_id) == broker_id, col(LeadChannel.provider) == provider)
            .where(col(LeadChannel.channel_user_id) == old)
            .values(channel_user_id=new)
        )
    await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.broker_id) == broker_id, col(ChatMessage.provider) == provider)
        .where(col(ChatMessage.channel_user_id) == old, col(ChatMessage.status) == "pending")
        .values(channel_user_id=new)
    )
