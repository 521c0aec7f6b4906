"""Storing many inbound messages in a few statements: the group-commit path.

Resolves every chat user's lead with one lookup, creates the missing leads and
channels in bulk, and inserts all messages in one idempotent statement. Safe
against another process creating the same leads at the same moment: the
unique channel identity decides, and leads that lost the race are removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.leads import ChannelIdentity
from leadline.storage.messages import IDEMPOTENCY_KEY, IncomingRow
from leadline.storage.models import ChatMessage, Lead, LeadChannel
from leadline.storage.types import utcnow

Identity = tuple[str, str, str]  # broker, provider, channel user
MessageKey = tuple[str, str, str]  # broker, provider, channel message id
CHUNK = 400  # rows per statement, well under both databases' parameter limits


@dataclass(frozen=True, slots=True)
class Stored:
    """What one bulk insert did: new message ids by key, and the duplicates seen."""

    new: dict[MessageKey, int]
    duplicates: int


T = TypeVar("T")


def _chunks(items: Sequence[T]) -> list[Sequence[T]]:
    return [items[i : i + CHUNK] for i in range(0, len(items), CHUNK)]


def _identity(who: ChannelIdentity) -> Identity:
    return who.broker_id, who.provider, who.channel_user_id


async def resolve_leads(
    session: AsyncSession, people: Sequence[ChannelIdentity]
) -> dict[Identity, int]:
    """The lead id of every chat user, creating the leads met for the first time."""
    unique = {_identity(who): who for who in people}
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
    return leads


async def _known_channels(
    session: AsyncSession, keys: list[Identity]
) -> dict[Identity, tuple[int, str | None]]:
    """Lead id and username of each chat user already known."""
    found: dict[Identity, tuple[int, str | None]] = {}
    identity = sa.tuple_(LeadChannel.broker_id, LeadChannel.provider, LeadChannel.channel_user_id)
    for chunk in _chunks(keys):
        result = await session.exec(
            sa.select(
                LeadChannel.broker_id,
                LeadChannel.provider,
                LeadChannel.channel_user_id,
                LeadChannel.lead_id,
                LeadChannel.channel_username,
            ).where(identity.in_(chunk))
        )
        found.update({(b, p, u): (lead, name) for b, p, u, lead, name in result.all()})
    return found


async def _create_leads(
    session: AsyncSession, people: Sequence[ChannelIdentity]
) -> dict[Identity, int]:
    now = utcnow()
    lead_rows = [
        {"broker_id": who.broker_id, "name": who.display_name or who.channel_username,
         "tags": [], "created_at": now}
        for who in people
    ]  # fmt: skip
    result = await session.exec(
        sa.insert(Lead).returning(Lead.id, sort_by_parameter_order=True), params=lead_rows
    )
    lead_ids = list(result.scalars().all())
    created = {_identity(who): lead_id for who, lead_id in zip(people, lead_ids, strict=True)}
    table = LeadChannel.__table__  # type: ignore[attr-defined]
    channel_rows = [
        {"lead_id": created[_identity(who)], "broker_id": who.broker_id,
         "provider": who.provider, "channel_user_id": who.channel_user_id,
         "channel_username": who.channel_username, "created_at": now}
        for who in people
    ]  # fmt: skip
    statement = insert_ignoring_conflicts(
        session, table, ["broker_id", "provider", "channel_user_id"]
    ).returning(table.c.broker_id, table.c.provider, table.c.channel_user_id)
    inserted = await session.exec(statement, params=channel_rows)
    won: set[Identity] = {(b, p, u) for b, p, u in inserted.all()}
    lost = [key for key in created if key not in won]
    if lost:  # another process created these chat users' leads first: use theirs
        await session.exec(sa.delete(Lead).where(col(Lead.id).in_([created[k] for k in lost])))
        known = await _known_channels(session, lost)
        created.update({key: lead_id for key, (lead_id, _) in known.items()})
    return created


async def _rename(session: AsyncSession, people: Iterable[ChannelIdentity]) -> None:
    """A chat user changed their username: rare, so one statement each is fine."""
    for who in people:
        await session.exec(
            sa.update(LeadChannel)
            .where(
                col(LeadChannel.broker_id) == who.broker_id,
                col(LeadChannel.provider) == who.provider,
                col(LeadChannel.channel_user_id) == who.channel_user_id,
            )
            .values(channel_username=who.channel_username)
        )


async def insert_messages(session: AsyncSession, rows: Sequence[IncomingRow]) -> Stored:
    """Insert inbound messages idempotently; a message stored before stores nothing."""
    if not rows:
        return Stored({}, 0)
    leads = await resolve_leads(session, [row.identity for row in rows])
    table = ChatMessage.__table__  # type: ignore[attr-defined]
    now = utcnow()
    values = [
        {
            "lead_id": leads[_identity(row.identity)],
            "broker_id": row.identity.broker_id,
            "provider": row.identity.provider,
            "channel_user_id": row.identity.channel_user_id,
            "channel_username": row.identity.channel_username,
            "channel_message_id": row.channel_message_id,
            "message_text": row.message_text,
            "direction": Direction.IN,
            "status": MessageStatus.DELIVERED,
            "provider_metadata": dict(row.provider_metadata),
            "attachments": [dict(a) for a in row.attachments],
            "created_at": row.created_at or now,
            "updated_at": now,
        }
        for row in rows
    ]
    # One statement executed for many rows: compiled once and cached, then sent in
    # multi-row batches by SQLAlchemy ("insertmanyvalues").
    statement = insert_ignoring_conflicts(session, table, IDEMPOTENCY_KEY).returning(
        table.c.id, table.c.broker_id, table.c.provider, table.c.channel_message_id
    )
    result = await session.exec(statement, params=values)
    new = {(b, p, m): message_id for message_id, b, p, m in result.all()}
    return Stored(new, len(rows) - len(new))
