"""What a broker's CRM reads and changes through the HTTP API: leads, their channels and
messages, merges, and the API's idempotency keys. Every query names its broker: one
broker never sees another's rows, whatever id it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from leadline.config.vocabulary import Direction
from leadline.storage import search
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.models import (
    ApiIdempotencyKey,
    ChatMessage,
    CrmEvent,
    Lead,
    LeadChannel,
    LeadMerge,
)
from leadline.storage.types import utcnow


@dataclass(frozen=True, slots=True)
class LeadFilter:
    provider: str | None = None
    tag: str | None = None
    text: str | None = None  # in the name, phone, a channel's username or id (search.py)
    updated_since: datetime | None = None  # the lead changed, or a message came or went


@dataclass(frozen=True, slots=True)
class MessageFilter:
    provider: str | None = None
    direction: Direction | None = None


@dataclass(slots=True)
class LeadView:
    lead: Lead
    channels: list[LeadChannel] = field(default_factory=list)


# --- leads ----------------------------------------------------------------------------------


async def list_leads(
    session: AsyncSession, broker_id: str, where: LeadFilter, after_id: int, limit: int
) -> list[Lead]:
    """A page of the broker's leads in id order, after `after_id`."""
    await search.plan_for_the_pattern(session, where.text or "")
    query = leads_query(session, broker_id, where, after_id, limit)
    return list((await session.exec(query)).all())


def leads_query(
    session: AsyncSession, broker_id: str, where: LeadFilter, after_id: int, limit: int
) -> SelectOfScalar[Lead]:
    """The statement of `list_leads` (its plan is tested)."""
    dialect = session.get_bind().dialect.name
    matching = search.matching(dialect, where.text or "")
    broker: sa.ColumnElement[str] = col(Lead.broker_id)
    if matching is not None and dialect == "sqlite":
        # Not the broker's index: SQLite would walk all the broker's leads checking each
        # against the search's hits, where looking the hits up by id is what is quick.
        broker = broker.concat("")
    query = select(Lead).where(broker == broker_id, col(Lead.id) > after_id)
    if where.provider is not None:
        query = query.where(_has_channel(col(LeadChannel.provider) == where.provider))
    if where.tag is not None:
        query = query.where(_has_tag(session, where.tag))
    if matching is not None:
        query = query.where(matching)
    if where.updated_since is not None:
        query = query.where(_changed_since(where.updated_since))
    return query.order_by(col(Lead.id)).limit(limit)


async def get_lead(session: AsyncSession, broker_id: str, lead_id: int) -> LeadView | None:
    lead = (
        await session.exec(
            select(Lead).where(col(Lead.broker_id) == broker_id, col(Lead.id) == lead_id)
        )
    ).first()
    if lead is None:
        return None
    channels = await session.exec(
        select(LeadChannel).where(col(LeadChannel.lead_id) == lead_id).order_by(col(LeadChannel.id))
    )
    return LeadView(lead, list(channels.all()))


async def update_lead(
    session: AsyncSession, broker_id: str, lead_id: int, changes: dict[str, Any]
) -> LeadView | None:
    view = await get_lead(session, broker_id, lead_id)
    if view is None:
        return None
    for name, value in changes.items():
        setattr(view.lead, name, value)
    view.lead.updated_at = utcnow()
    session.add(view.lead)
    await session.flush()
    await _search_anew(session, view.lead)
    return view


async def merge_leads(
    session: AsyncSession, broker_id: str, into_id: int, from_id: int
) -> LeadView | None:
    """Make `from_id` part of `into_id`: its channels, messages and events move, its
    tags join, its name and phone fill what `into_id` lacks; the merge is recorded and
    `from_id` is gone. None if either lead is not the broker's."""
    into = await get_lead(session, broker_id, into_id)
    gone = await get_lead(session, broker_id, from_id)
    if into is None or gone is None:
        return None
    before = {"name": gone.lead.name, "phone": gone.lead.phone, "tags": gone.lead.tags}
    lead = into.lead
    lead.tags = list(dict.fromkeys([*lead.tags, *gone.lead.tags]))
    lead.name = lead.name or gone.lead.name
    lead.phone = lead.phone or gone.lead.phone
    lead.lead_metadata = {**gone.lead.lead_metadata, **lead.lead_metadata}
    lead.updated_at = utcnow()
    session.add(lead)
    session.add(
        LeadMerge(
            broker_id=broker_id,
            into_lead_id=into_id,
            from_lead_id=from_id,
            details={"from": {**before, "metadata": gone.lead.lead_metadata}},
        )
    )
    session.expunge(gone.lead)  # deleted below, by a statement
    await session.flush()
    await _move_and_delete(session, into_id, from_id)
    await _search_anew(session, lead)  # found by what it took in
    return await get_lead(session, broker_id, into_id)


async def _search_anew(session: AsyncSession, lead: Lead) -> None:
    """The lead's `search_text` after its fields or channels were written (and flushed),
    composed from the database rather than from the objects at hand: a channel another
    transaction renamed meanwhile is not lost (search.refresh)."""
    assert lead.id is not None
    texts = await search.refresh(session, [lead.id])
    set_committed_value(lead, "search_text", texts.get(lead.id, lead.search_text))


MERGE_TRIES = 5


async def _move_and_delete(session: AsyncSession, into_id: int, from_id: int) -> None:
    """Move every row naming `from_id` to `into_id`, then delete `from_id`.

    On PostgreSQL another transaction may store a row naming `from_id` while this one
    runs (a delivery, a reply): the delete then waits for it and fails on the foreign
    key. The delete is tried in a savepoint, and such a row is moved too. Locking the
    leads first instead would deadlock with a writer that locks its rows, then the
    lead. SQLite runs one transaction at a time: one pass is all there is.
    """
    delete = sa.delete(Lead).where(col(Lead.id) == from_id)
    postgres = session.get_bind().dialect.name == "postgresql"
    for attempt in range(1, MERGE_TRIES + 1):
        for table in (LeadChannel, ChatMessage, CrmEvent):
            moving = sa.update(table).where(col(table.lead_id) == from_id)
            await session.exec(moving.values(lead_id=into_id))
        if not postgres:
            await session.exec(delete)
            return
        try:
            async with session.begin_nested():
                await session.exec(delete)
            return
        except sa.exc.IntegrityError:
            if attempt == MERGE_TRIES:
                raise


def _has_channel(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    return (
        select(LeadChannel.id).where(col(LeadChannel.lead_id) == col(Lead.id), condition).exists()
    )


def _has_tag(session: AsyncSession, tag: str) -> sa.ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        tags = sa.cast(col(Lead.tags), JSONB)  # the column is JSONB there: `@>` containment
        return tags.contains(sa.func.jsonb_build_array(tag))
    each = sa.func.json_each(col(Lead.tags)).table_valued("value")
    return sa.select(each.c.value).where(each.c.value == tag).exists()


def _changed_since(since: datetime) -> sa.ColumnElement[bool]:
    message = (
        select(ChatMessage.id)
        .where(col(ChatMessage.lead_id) == col(Lead.id), col(ChatMessage.updated_at) >= since)
        .exists()
    )
    return sa.or_(col(Lead.updated_at) >= since, message)


# --- messages ---------------------------------------------------------------------------------


async def lead_messages(
    session: AsyncSession,
    broker_id: str,
    lead_id: int,
    where: MessageFilter,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[ChatMessage]:
    """A page of a lead's messages on every provider, in time order (then id order)."""
    query = select(ChatMessage).where(
        col(ChatMessage.broker_id) == broker_id, col(ChatMessage.lead_id) == lead_id
    )
    if where.provider is not None:
        query = query.where(col(ChatMessage.provider) == where.provider)
    if where.direction is not None:
        query = query.where(col(ChatMessage.direction) == where.direction)
    if after is not None:
        at, after_id = after
        query = query.where(
            sa.or_(
                col(ChatMessage.created_at) > at,
                sa.and_(col(ChatMessage.created_at) == at, col(ChatMessage.id) > after_id),
            )
        )
    query = query.order_by(col(ChatMessage.created_at), col(ChatMessage.id)).limit(limit)
    return list((await session.exec(query)).all())


async def get_message(session: AsyncSession, broker_id: str, message_id: int) -> ChatMessage | None:
    query = select(ChatMessage).where(
        col(ChatMessage.broker_id) == broker_id, col(ChatMessage.id) == message_id
    )
    return (await session.exec(query)).first()


# --- idempotency keys ---------------------------------------------------------------------------


async def remembered(session: AsyncSession, broker_id: str, key: str) -> ApiIdempotencyKey | None:
    return await session.get(ApiIdempotencyKey, (broker_id, key))


async def remember(
    session: AsyncSession, broker_id: str, key: str, request_hash: str, message_id: int
) -> bool:
    """Keep the key's message; False when another request took the key first."""
    table = ApiIdempotencyKey.__table__  # type: ignore[attr-defined]
    statement = insert_ignoring_conflicts(session, table, ["broker_id", "key"]).returning(
        table.c.key
    )
    values = {
        "broker_id": broker_id,
        "key": key,
        "request_hash": request_hash,
        "message_id": message_id,
        "created_at": utcnow(),
    }
    result = await (await session.connection()).execute(statement.values(**values))
    return bool(result.all())
