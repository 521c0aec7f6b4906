"""The outbox: outbound `chat_messages` rows from `pending` to `sent` or `failed`.

A row goes out only when it is its recipient's head: no earlier row to the
same chat is still waiting to go (due, being retried or in flight). A sender
takes a row with a lease (`lease_until`) and counts the attempt before it
calls the provider; a row whose sender died is taken again when the lease
runs out. Every query names its status and direction as literals, so both
databases use the partial index of pending outbound rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.messages import apply_known_early_statuses
from leadline.storage.models import ChatMessage, ChatMessagePart, DeliveryPause, EarlyStatus
from leadline.storage.types import utcnow

ChannelKey = tuple[str, str]  # broker, provider


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
    created_at: datetime | None = None  # the service's clock; now when not given


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """What a sender needs of a due row."""

    id: int
    broker_id: str
    provider: str
    channel_user_id: str
    message_text: str | None
    attachments: list[dict[str, Any]]
    provider_metadata: dict[str, Any]
    attempts: int
    created_at: datetime
    last_inbound_at: datetime | None = None  # when the chat user last wrote on this channel
    last_inbound_id: str | None = None  # the provider's id of that latest message
    lead_id: int = 0

    @property
    def recipient(self) -> tuple[str, str, str]:
        return self.broker_id, self.provider, self.channel_user_id


# --- what a send ended with ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sent:
    id: int
    channel_message_id: str
    status: MessageStatus = MessageStatus.SENT
    metadata: Mapping[str, Any] | None = None  # the row's provider_metadata, when it changed
    # Where the provider echoes sends back (broker, provider): an echo of this send
    # stored before this outcome gives way to it.
    echoed_on: ChannelKey | None = None
    # Every part's provider id, in order, when the message went as several sends (the
    # last is `channel_message_id`): kept in chat_message_parts, where echoes and
    # status reports of any part find the message.
    parts: Sequence[str] = ()

    @property
    def provider_ids(self) -> Sequence[str]:
        return self.parts or (self.channel_message_id,)


@dataclass(frozen=True, slots=True)
class Failed:
    id: int
    error: str


@dataclass(frozen=True, slots=True)
class Retry:
    id: int
    error: str
    at: datetime
    metadata: Mapping[str, Any] | None = None  # the row's provider_metadata, when it changed


@dataclass(frozen=True, slots=True)
class Released:
    """Taken, due again now. Not tried (the channel went down, the limits would not
    let it go in time, the process stops): its attempt is given back. Tried (the
    chat moved): the attempt stays counted."""

    id: int
    tried: bool = False


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """A conditional message that no longer applies (a scheduled reply to a lead a human
    has answered meanwhile): it never was a message, so its row is removed."""

    id: int


Outcome = Sent | Failed | Retry | Released | Withdrawn


# --- queueing -----------------------------------------------------------------------


async def enqueue(session: AsyncSession, message: QueuedMessage) -> int:
    now = message.created_at or utcnow()
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


# --- finding and taking due rows ----------------------------------------------------


def _literal(value: str) -> Any:
    # Written into the SQL, not bound, so the planner can match the partial index (and,
    # unlike literal_execute, it works in executemany). Only our own constants go here.
    assert value.isalpha()
    return sa.literal_column(f"'{value}'")


def _pending_out(table: Any) -> sa.ColumnElement[bool]:
    return sa.and_(
        table.direction == _literal(Direction.OUT.value),
        table.status == _literal(MessageStatus.PENDING.value),
    )


def _waits_first(now: datetime) -> sa.ColumnElement[bool]:
    """An earlier row to the same recipient must go before this one.

    Every earlier pending row does, except one scheduled for later that was
    never tried: a message planned for tomorrow does not hold up today's.
    """
    earlier = aliased(ChatMessage)
    return (
        select(earlier.id)
        .where(
            _pending_out(earlier),
            col(earlier.broker_id) == col(ChatMessage.broker_id),
            col(earlier.provider) == col(ChatMessage.provider),
            col(earlier.channel_user_id) == col(ChatMessage.channel_user_id),
            col(earlier.id) < col(ChatMessage.id),
            sa.or_(
                col(earlier.attempts) > 0,
                col(earlier.send_after).is_(None),
                col(earlier.send_after) <= now,
            ),
        )
        .exists()
    )


def _takeable(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        _pending_out(ChatMessage),
        sa.or_(col(ChatMessage.send_after).is_(None), col(ChatMessage.send_after) <= now),
        sa.or_(col(ChatMessage.lease_until).is_(None), col(ChatMessage.lease_until) <= now),
        ~_waits_first(now),
    )


def _paused(now: datetime) -> sa.ColumnElement[bool]:
    return (
        select(DeliveryPause.broker_id)
        .where(
            col(DeliveryPause.broker_id) == col(ChatMessage.broker_id),
            col(DeliveryPause.provider) == col(ChatMessage.provider),
            col(DeliveryPause.until) > now,
        )
        .exists()
    )


def _recipients_inbound() -> tuple[Any, sa.ColumnElement[bool]]:
    """The recipient's inbound rows on the outbox row's channel."""
    inbound = aliased(ChatMessage)
    return inbound, sa.and_(
        col(inbound.provider) == col(ChatMessage.provider),
        col(inbound.channel_user_id) == col(ChatMessage.channel_user_id),
        col(inbound.broker_id) == col(ChatMessage.broker_id),
        col(inbound.direction) == Direction.IN,
    )


def _last_inbound() -> sa.ScalarSelect[Any]:
    """When the recipient last wrote on this channel: providers' messaging windows
    (WhatsApp's 24 hours, Messenger's) count from it."""
    inbound, theirs = _recipients_inbound()
    return sa.select(sa.func.max(inbound.created_at)).where(theirs).scalar_subquery()


def _last_inbound_id() -> sa.ScalarSelect[Any]:
    """The provider's id of the recipient's latest message: where a typing indicator
    or a read receipt points (WhatsApp)."""
    inbound, theirs = _recipients_inbound()
    return (
        sa.select(inbound.channel_message_id)
        .where(theirs)
        .order_by(col(inbound.created_at).desc(), col(inbound.id).desc())
        .limit(1)
        .scalar_subquery()
    )


OUTBOX_COLUMNS = (
    ChatMessage.id,
    ChatMessage.broker_id,
    ChatMessage.provider,
    ChatMessage.channel_user_id,
    ChatMessage.message_text,
    ChatMessage.attachments,
    ChatMessage.provider_metadata,
    ChatMessage.attempts,
    ChatMessage.created_at,
)


async def due_heads(
    session: AsyncSession, now: datetime, budgets: Mapping[ChannelKey, int]
) -> list[OutboxRow]:
    """The rows that may go now, oldest first, one per recipient, at most `budgets[channel]`
    per channel: a channel with a long queue never crowds out the others."""
    parts = []
    for (broker_id, provider), budget in budgets.items():
        if budget <= 0:
            continue
        part = (
            sa.select(
                *OUTBOX_COLUMNS,
                _last_inbound().label("last_inbound_at"),
                _last_inbound_id().label("last_inbound_id"),
                ChatMessage.lead_id,
            )
            .where(
                col(ChatMessage.broker_id) == broker_id,
                col(ChatMessage.provider) == provider,
                _takeable(now),
                ~_paused(now),
            )
            .order_by(col(ChatMessage.id))
            .limit(budget)
            .subquery()
        )
        parts.append(sa.select(part))
    if not parts:
        return []
    query = parts[0] if len(parts) == 1 else sa.union_all(*parts)
    result = await session.exec(query)
    return sorted((OutboxRow(*row) for row in result.all()), key=lambda row: row.id)


async def claim_many(
    session: AsyncSession, ids: Collection[int], now: datetime, lease_until: datetime
) -> set[int]:
    """Take rows for one send attempt each; returns those taken.

    A row is taken only while it is still its recipient's head and no other
    sender holds it, so two processes never send the same row, nor two rows to
    one chat at once.
    """
    if not ids:
        return set()
    # PostgreSQL: rows another process is taking right now are skipped, not waited for.
    # The outer condition is checked again on the locked rows.
    free = (
        sa.select(ChatMessage.id)
        .where(col(ChatMessage.id).in_(list(ids)), _takeable(now))
        .with_for_update(skip_locked=True)
    )
    result = await session.exec(
        sa.update(ChatMessage)
        .where(col(ChatMessage.id).in_(free), _takeable(now))
        .values(
            lease_until=lease_until, attempts=col(ChatMessage.attempts) + 1, updated_at=utcnow()
        )
        .returning(ChatMessage.id)
    )
    return {row[0] for row in result.all()}


async def unroutable(
    session: AsyncSession, routable: Collection[ChannelKey], limit: int = 500
) -> list[tuple[int, str, str]]:
    """Pending rows for a channel that is not configured or disabled: (id, broker, provider)."""
    query = sa.select(ChatMessage.id, ChatMessage.broker_id, ChatMessage.provider).where(
        _pending_out(ChatMessage)
    )
    if routable:
        keys = sa.tuple_(col(ChatMessage.broker_id), col(ChatMessage.provider))
        query = query.where(~keys.in_(list(routable)))
    result = await session.exec(query.order_by(col(ChatMessage.id)).limit(limit))
    return [(row[0], row[1], row[2]) for row in result.all()]


async def next_due_at(session: AsyncSession, now: datetime) -> datetime | None:
    """The next moment a pending row may become due: a send_after, a lease or a pause ends."""
    later = (
        sa.select(sa.func.min(ChatMessage.send_after))
        .where(_pending_out(ChatMessage), col(ChatMessage.send_after) > now)
        .scalar_subquery()
    )
    leases = (
        sa.select(sa.func.min(ChatMessage.lease_until))
        .where(_pending_out(ChatMessage), col(ChatMessage.lease_until) > now)
        .scalar_subquery()
    )
    pauses = (
        sa.select(sa.func.min(DeliveryPause.until))
        .where(col(DeliveryPause.until) > now)
        .scalar_subquery()
    )
    found = (await session.exec(sa.select(later, leases, pauses))).one()
    times = [t for t in found if t is not None]
    return min(times) if times else None


# --- recording what happened ------------------------------------------------------------


async def record(session: AsyncSession, outcomes: Sequence[Outcome]) -> None:
    """Store how sends ended, many rows per statement; only rows still pending change."""
    if not outcomes:
        return
    now = utcnow()
    still_pending = sa.and_(
        col(ChatMessage.id) == sa.bindparam("row_id"), _pending_out(ChatMessage)
    )
    sent = [o for o in outcomes if isinstance(o, Sent)]
    await _drop_echoes_of(session, sent)
    sent_values = {
        "channel_message_id": sa.bindparam("cmid"),
        "status": sa.bindparam("new_status"),
        "error": None,
        "sent_at": now,
    }
    updates: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [
        (
            sent_values,
            [
                {"row_id": o.id, "cmid": o.channel_message_id, "new_status": o.status}
                for o in sent
                if o.metadata is None
            ],
        ),
        (
            {**sent_values, "provider_metadata": sa.bindparam("meta")},
            [
                {
                    "row_id": o.id,
                    "cmid": o.channel_message_id,
                    "new_status": o.status,
                    "meta": dict(o.metadata),
                }
                for o in sent
                if o.metadata is not None
            ],
        ),
        (
            {"status": MessageStatus.FAILED, "error": sa.bindparam("why")},
            [{"row_id": o.id, "why": o.error} for o in outcomes if isinstance(o, Failed)],
        ),
        (
            {"error": sa.bindparam("why"), "send_after": sa.bindparam("retry_at")},
            [
                {"row_id": o.id, "why": o.error, "retry_at": o.at}
                for o in outcomes
                if isinstance(o, Retry) and o.metadata is None
            ],
        ),
        (
            {
                "error": sa.bindparam("why"),
                "send_after": sa.bindparam("retry_at"),
                "provider_metadata": sa.bindparam("meta"),
            },
            [
                {"row_id": o.id, "why": o.error, "retry_at": o.at, "meta": dict(o.metadata)}
                for o in outcomes
                if isinstance(o, Retry) and o.metadata is not None
            ],
        ),
        (
            {"attempts": col(ChatMessage.attempts) - 1},
            [{"row_id": o.id} for o in outcomes if isinstance(o, Released) and not o.tried],
        ),
        ({}, [{"row_id": o.id} for o in outcomes if isinstance(o, Released) and o.tried]),
    ]
    withdrawn = [{"row_id": o.id} for o in outcomes if isinstance(o, Withdrawn)]
    if withdrawn:
        statement = sa.delete(ChatMessage).where(still_pending)
        await (await session.connection()).execute(statement, withdrawn)
    for values, params in updates:
        if params:
            statement = (
                sa.update(ChatMessage)
                .where(still_pending)
                .values(lease_until=None, updated_at=now, **values)
            )
            await (await session.connection()).execute(statement, params)
    if sent:
        await _keep_parts(session, sent)
        await _apply_early(session, sent)


async def _keep_parts(session: AsyncSession, sent: Sequence[Sent]) -> None:
    """Every part's id of the messages sent in parts, named by the row's channel."""
    params = [
        {"row_id": o.id, "part": index, "cmid": cmid}
        for o in sent
        if len(o.parts) > 1
        for index, cmid in enumerate(o.parts)
    ]
    if not params:
        return
    row = sa.select(
        ChatMessage.id,
        sa.bindparam("part", type_=sa.Integer()),
        ChatMessage.broker_id,
        ChatMessage.provider,
        sa.bindparam("cmid", type_=sa.String()),
    ).where(col(ChatMessage.id) == sa.bindparam("row_id"))
    table = ChatMessagePart.__table__  # type: ignore[attr-defined]
    columns = ["message_id", "part", "broker_id", "provider", "channel_message_id"]
    # A part already kept (the same send recorded twice) stays as it is.
    keep = insert_ignoring_conflicts(session, table, ["message_id", "part"])
    statement = keep.from_select(columns, row)
    await (await session.connection()).execute(statement, params)


async def _drop_echoes_of(session: AsyncSession, sent: Sequence[Sent]) -> None:
    """An echo of our own send that beat the send's answer was stored as a message sent
    from elsewhere (never tried by us: no attempts). Our row is the message: drop it."""
    params = [
        {"b": o.echoed_on[0], "p": o.echoed_on[1], "cmid": cmid}
        for o in sent
        if o.echoed_on is not None
        for cmid in o.provider_ids
    ]
    if not params:
        return
    statement = sa.delete(ChatMessage).where(
        col(ChatMessage.broker_id) == sa.bindparam("b"),
        col(ChatMessage.provider) == sa.bindparam("p"),
        col(ChatMessage.direction) == _literal(Direction.OUT.value),
        col(ChatMessage.channel_message_id) == sa.bindparam("cmid"),
        col(ChatMessage.attempts) == 0,
    )
    await (await session.connection()).execute(statement, params)


async def _apply_early(session: AsyncSession, sent: Sequence[Sent]) -> None:
    """Status reports that beat their send call back: apply them now."""
    await apply_known_early_statuses(
        session,
        col(ChatMessage.id).in_([o.id for o in sent]),
        col(EarlyStatus.channel_message_id).in_([i for o in sent for i in o.provider_ids]),
    )


async def mark_sent(
    session: AsyncSession,
    message_id: int,
    channel_message_id: str,
    status: MessageStatus = MessageStatus.SENT,
) -> None:
    await record(session, [Sent(message_id, channel_message_id, status)])


async def sent_since(
    session: AsyncSession, recipient: tuple[str, str, str], since: datetime | None
) -> int:
    """How many messages went to this chat since then (all of them when `since` is None)."""
    broker_id, provider, user = recipient
    query = sa.select(sa.func.count()).where(
        col(ChatMessage.broker_id) == broker_id,
        col(ChatMessage.provider) == provider,
        col(ChatMessage.channel_user_id) == user,
        col(ChatMessage.direction) == Direction.OUT,
        col(ChatMessage.status).in_(
            [MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.READ]
        ),
    )
    if since is not None:
        query = query.where(col(ChatMessage.sent_at) >= since)
    return (await (await session.connection()).execute(query)).scalar_one()


# --- pauses of a whole channel -------------------------------------------------------------


async def pause_channel(
    session: AsyncSession, broker_id: str, provider: str, until: datetime, reason: str
) -> None:
    """Hold back a channel's sends until then (a pause already longer is kept)."""
    found = await session.get(DeliveryPause, (broker_id, provider))
    if found is None:
        session.add(
            DeliveryPause(broker_id=broker_id, provider=provider, until=until, reason=reason)
        )
    elif found.until < until:
        found.until, found.reason, found.updated_at = until, reason, utcnow()
    await session.flush()


async def active_pauses(session: AsyncSession, now: datetime) -> dict[ChannelKey, DeliveryPause]:
    result = await session.exec(select(DeliveryPause).where(col(DeliveryPause.until) > now))
    return {(p.broker_id, p.provider): p for p in result.all()}
