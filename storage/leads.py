"""Finding or creating the lead behind each chat user, through `lead_channels`.

All chat users of a delivery are resolved with one lookup; the missing leads
and channels are created in bulk. Safe against another process creating the
same leads at the same moment: the unique channel identity decides, and leads
that lost the race are removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.models import ChatMessage, Lead, LeadChannel
from leadline.storage.search import compose, refresh
from leadline.storage.types import utcnow


@dataclass(frozen=True, slots=True)
class ChannelIdentity:
    broker_id: str
    provider: str
    channel_user_id: str
    channel_username: str | None = None
    display_name: str | None = None


Identity = tuple[str, str, str]  # broker, provider, channel user
CHUNK = 400  # rows per statement, well under both databases' parameter limits
T = TypeVar("T")


def chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def identity_of(who: ChannelIdentity) -> Identity:
    return who.broker_id, who.provider, who.channel_user_id


async def ensure_lead(session: AsyncSession, who: ChannelIdentity) -> int:
    """The lead id for one chat user, creating the lead on first contact."""
    return (await resolve_leads(session, [who]))[identity_of(who)]


async def resolve_leads(
    session: AsyncSession, people: Sequence[ChannelIdentity]
) -> dict[Identity, int]:
    """The lead id of every chat user, creating the leads met for the first time."""
    unique = {identity_of(who): who for who in people}
    known = await _known_channels(session, list(unique))
    leads = {key: lead_id for key, (lead_id, _) in known.items()}
    missing = [who for key, who in unique.items() if key not in known]
    if missing:
        leads.update(await _create_leads(session, missing))
    renamed = [
        who
        for key, who in unique.items()
        if key in known and who.channel_username and who.channel_username != known[key][1]
    ]
    await _rename(session, renamed)
    await refresh(session, [leads[identity_of(who)] for who in renamed])
    return leads


_CHANNELS = LeadChannel.__table__  # type: ignore[attr-defined]
_LEADS = Lead.__table__  # type: ignore[attr-defined]
# Prebuilt Core statements: built and compiled once, not for every group commit.
_KNOWN = sa.select(
    _CHANNELS.c.channel_user_id, _CHANNELS.c.lead_id, _CHANNELS.c.channel_username
).where(
    _CHANNELS.c.broker_id == sa.bindparam("broker_id"),
    _CHANNELS.c.provider == sa.bindparam("provider"),
    _CHANNELS.c.channel_user_id.in_(sa.bindparam("users", expanding=True)),
)
_NEW_LEADS = sa.insert(_LEADS).returning(_LEADS.c.id, sort_by_parameter_order=True)
_NEW_CHANNELS: dict[str, Any] = {}  # by dialect name


async def _known_channels(
    session: AsyncSession, keys: list[Identity]
) -> dict[Identity, tuple[int, str | None]]:
    """Lead id and username of each chat user already known."""
    found: dict[Identity, tuple[int, str | None]] = {}
    users: dict[tuple[str, str], list[str]] = {}
    for broker_id, provider, user in keys:
        users.setdefault((broker_id, provider), []).append(user)
    conn = await session.connection()
    for (broker_id, provider), some in users.items():
        for chunk in chunks(some):
            params = {"broker_id": broker_id, "provider": provider, "users": chunk}
            result = await conn.execute(_KNOWN, params)
            found.update({(broker_id, provider, u): (lead, name) for u, lead, name in result})
    return found


def _new_channels(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    statement = _NEW_CHANNELS.get(dialect)
    if statement is None:
        statement = _NEW_CHANNELS[dialect] = insert_ignoring_conflicts(
            session, _CHANNELS, ["broker_id", "provider", "channel_user_id"]
        ).returning(_CHANNELS.c.broker_id, _CHANNELS.c.provider, _CHANNELS.c.channel_user_id)
    return statement


async def _create_leads(
    session: AsyncSession, people: Sequence[ChannelIdentity]
) -> dict[Identity, int]:
    now = utcnow()
    lead_rows = [_lead_row(who, now) for who in people]
    conn = await session.connection()
    lead_ids = list((await conn.execute(_NEW_LEADS, lead_rows)).scalars())
    created = {identity_of(who): lead_id for who, lead_id in zip(people, lead_ids, strict=True)}
    channel_rows = [
        {"lead_id": created[identity_of(who)], "broker_id": who.broker_id,
         "provider": who.provider, "channel_user_id": who.channel_user_id,
         "channel_username": who.channel_username, "created_at": now}
        for who in people
    ]  # fmt: skip
    inserted = await conn.execute(_new_channels(session), channel_rows)
    won: set[Identity] = {(b, p, u) for b, p, u in inserted}
    lost = [key for key in created if key not in won]
    if lost:  # another process created these chat users' leads first: use theirs
        await session.exec(sa.delete(Lead).where(col(Lead.id).in_([created[k] for k in lost])))
        known = await _known_channels(session, lost)
        created.update({key: lead_id for key, (lead_id, _) in known.items()})
    return created


def _lead_row(who: ChannelIdentity, now: datetime) -> dict[str, Any]:
    name = who.display_name or who.channel_username
    return {
        "broker_id": who.broker_id,
        "name": name,
        "tags": [],
        "created_at": now,
        "search_text": compose(name, None, [(who.channel_username, who.channel_user_id)]),
    }


def channel_is(broker_id: str, provider: str, channel_user_id: str) -> sa.ColumnElement[bool]:
    """The `lead_channels` row of one chat user."""
    return sa.and_(
        col(LeadChannel.broker_id) == broker_id,
        col(LeadChannel.provider) == provider,
        col(LeadChannel.channel_user_id) == channel_user_id,
    )


async def _rename(session: AsyncSession, people: Iterable[ChannelIdentity]) -> None:
    """A chat user changed their username: rare, so one statement each is fine."""
    for who in people:
        await session.exec(
            sa.update(LeadChannel)
            .where(channel_is(*identity_of(who)))
            .values(channel_username=who.channel_username)
        )


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
        moved = await session.exec(
            sa.update(LeadChannel)
            .where(col(LeadChannel.broker_id) == broker_id, col(LeadChannel.provider) == provider)
            .where(col(LeadChannel.channel_user_id) == old)
            .values(channel_user_id=new)
            .returning(col(LeadChannel.lead_id))
        )
        await refresh(session, list(moved.scalars()))  # the user id is searched too
    await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.broker_id) == broker_id, col(ChatMessage.provider) == provider)
        .where(col(ChatMessage.channel_user_id) == old, col(ChatMessage.status) == "pending")
        .values(channel_user_id=new)
    )


@dataclass(frozen=True, slots=True)
class LeadChannelRef:
    provider: str
    channel_user_id: str
    channel_username: str | None


async def lead_channels(
    session: AsyncSession, broker_id: str, lead_id: int
) -> list[LeadChannelRef]:
    """A lead's channels, the one it last wrote on first (then the newest)."""
    last_inbound = (
        select(sa.func.max(ChatMessage.id))
        .where(
            col(ChatMessage.lead_id) == lead_id,
            col(ChatMessage.provider) == col(LeadChannel.provider),
            col(ChatMessage.channel_user_id) == col(LeadChannel.channel_user_id),
            col(ChatMessage.direction) == Direction.IN,
        )
        .scalar_subquery()
    )
    query = (
        select(LeadChannel.provider, LeadChannel.channel_user_id, LeadChannel.channel_username)
        .where(col(LeadChannel.broker_id) == broker_id, col(LeadChannel.lead_id) == lead_id)
        .order_by(sa.func.coalesce(last_inbound, 0).desc(), col(LeadChannel.id).desc())
    )
    return [LeadChannelRef(*row) for row in (await session.exec(query)).all()]
