"""Storing inbound messages: many in one idempotent statement (the group-commit path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.leads import ChannelIdentity, identity_of, resolve_leads
from leadline.storage.models import ChatMessage, ChatMessagePart
from leadline.storage.types import utcnow

IDEMPOTENCY_KEY = ["broker_id", "provider", "direction", "channel_message_id"]
MessageKey = tuple[str, str, str]  # broker, provider, channel message id


@dataclass(frozen=True, slots=True)
class IncomingRow:
    """A message a provider reported, as storage needs it (the runtime maps adapter
    events to it): what a chat user wrote, or what the broker's account sent from
    elsewhere (an echo, `direction = out`, already sent)."""

    identity: ChannelIdentity
    channel_message_id: str
    message_text: str | None
    attachments: Sequence[Mapping[str, Any]] = ()
    provider_metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    direction: Direction = Direction.IN
    answer: bool = True  # False: stored as handled, so the reply rules never see it


async def insert_messages(
    session: AsyncSession, rows: Sequence[IncomingRow]
) -> dict[MessageKey, int]:
    """Insert inbound messages idempotently; returns the new rows' ids by key.

    A message stored before (a redelivery, or a second copy in `rows`) stores
    nothing and is absent from the result; so does an echo of a part of our own send.
    """
    rows = await _not_our_parts(session, rows)
    if not rows:
        return {}
    leads = await resolve_leads(session, [row.identity for row in rows])
    now = utcnow()
    values = [_values(row, leads[identity_of(row.identity)], now) for row in rows]
    # One statement executed for many rows, sent in multi-row batches by SQLAlchemy
    # ("insertmanyvalues"); Core on the session's connection, without the ORM.
    conn = await session.connection()
    result = await conn.execute(_insert_statement(session), values)
    return {(b, p, m): message_id for message_id, b, p, m in result}


async def _not_our_parts(session: AsyncSession, rows: Sequence[IncomingRow]) -> list[IncomingRow]:
    """The rows, less echoes of the parts of our own sends (known by the parts' ids):
    the message they belong to is stored already."""
    echoes = {
        (row.identity.broker_id, row.identity.provider, row.channel_message_id)
        for row in rows
        if row.direction == Direction.OUT
    }
    if not echoes:
        return list(rows)
    part = ChatMessagePart.__table__  # type: ignore[attr-defined]
    keys = sa.tuple_(part.c.broker_id, part.c.provider, part.c.channel_message_id)
    query = sa.select(part.c.broker_id, part.c.provider, part.c.channel_message_id).where(
        keys.in_(list(echoes))
    )
    ours = {tuple(found) for found in await (await session.connection()).execute(query)}
    return [
        row
        for row in rows
        if row.direction != Direction.OUT
        or (row.identity.broker_id, row.identity.provider, row.channel_message_id) not in ours
    ]


def _values(row: IncomingRow, lead_id: int, now: datetime) -> dict[str, Any]:
    created = row.created_at or now
    out = row.direction == Direction.OUT
    return {
        "lead_id": lead_id,
        "broker_id": row.identity.broker_id,
        "provider": row.identity.provider,
        "channel_user_id": row.identity.channel_user_id,
        "channel_username": row.identity.channel_username,
        "channel_message_id": row.channel_message_id,
        "message_text": row.message_text,
        "direction": row.direction,
        "status": MessageStatus.SENT if out else MessageStatus.DELIVERED,
        "provider_metadata": dict(row.provider_metadata),
        "attachments": [dict(a) for a in row.attachments],
        "sent_at": created if out else None,
        "handled_at": None if row.answer and not out else now,
        "created_at": created,
        "updated_at": now,
    }


_INSERTS: dict[str, Any] = {}  # by dialect name


def _insert_statement(session: AsyncSession) -> Any:
    """The idempotent insert for the session's database, built once: building and
    looking up a statement cost more than running it for a small group commit."""
    dialect = session.get_bind().dialect.name
    statement = _INSERTS.get(dialect)
    if statement is None:
        table = ChatMessage.__table__  # type: ignore[attr-defined]
        statement = _INSERTS[dialect] = insert_ignoring_conflicts(
            session, table, IDEMPOTENCY_KEY
        ).returning(table.c.id, table.c.broker_id, table.c.provider, table.c.channel_message_id)
    return statement
