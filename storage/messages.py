"""Edits of inbound messages, and status updates applied monotonically."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus, status_advances
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity
from leadline.storage.models import ChatMessage, ChatMessagePart, EarlyStatus
from leadline.storage.types import utcnow


@dataclass(frozen=True, slots=True)
class StatusChange:
    broker_id: str
    provider: str
    channel_message_id: str
    status: MessageStatus
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EditRow:
    """A chat user's edit of a message they sent earlier."""

    identity: ChannelIdentity
    channel_message_id: str
    message_text: str | None
    attachments: Sequence[Mapping[str, Any]] = ()
    edited_at: datetime | None = None
    deleted: bool = False  # unsent: the text goes to the history, the message stays


class EditOutcome(enum.StrEnum):
    APPLIED = "applied"
    REPEATED = "repeated"  # this very edit was applied before (a redelivery)
    STORED_NEW = "stored_new"  # the original was never seen: kept as a message


async def apply_edit(session: AsyncSession, edit: EditRow) -> tuple[EditOutcome, int | None]:
    """Update the original's text, keeping what it said before in `edits`.

    A message id is returned only when the original was unknown and the edit
    had to be stored as a message of its own.
    """
    who = edit.identity
    original = (
        await session.exec(
            select(ChatMessage).where(
                col(ChatMessage.broker_id) == who.broker_id,
                col(ChatMessage.provider) == who.provider,
                col(ChatMessage.direction) == Direction.IN,
                col(ChatMessage.channel_message_id) == edit.channel_message_id,
            )
        )
    ).first()
    stamp = (edit.edited_at or utcnow()).isoformat()
    marks = {"deleted": True} if edit.deleted else {}
    if original is None:
        row = IncomingRow(
            who,
            edit.channel_message_id,
            edit.message_text,
            edit.attachments,
            {"edited_at": stamp, **marks},
            edit.edited_at,
        )
        new = await insert_messages(session, [row])
        return EditOutcome.STORED_NEW, next(iter(new.values()), None)
    earlier = list(original.provider_metadata.get("edits", []))
    if any(e.get("edited_at") == stamp for e in earlier):
        return EditOutcome.REPEATED, None
    earlier.append(
        {"text": original.message_text, "attachments": original.attachments, "edited_at": stamp}
    )
    original.message_text = edit.message_text
    if edit.attachments or edit.deleted:
        original.attachments = [dict(a) for a in edit.attachments]
    original.provider_metadata = {**original.provider_metadata, "edits": earlier, **marks}
    original.updated_at = utcnow()
    session.add(original)
    await session.flush()
    return EditOutcome.APPLIED, None


@dataclass(frozen=True, slots=True)
class Watermark:
    broker_id: str
    provider: str
    channel_user_id: str
    status: MessageStatus
    up_to: datetime


async def apply_watermark(
    session: AsyncSession, mark: Watermark, changed: list[int] | None = None
) -> int:
    """Move forward every message sent to the user up to the watermark; returns how many
    (and adds their ids to `changed`).

    Our `sent_at` is taken after the provider answered, so it trails the provider's
    own time for the message by the call's latency: a second of slack keeps the last
    message below the watermark from being missed.
    """
    result = await session.exec(
        sa.update(ChatMessage)
        .where(
            col(ChatMessage.broker_id) == mark.broker_id,
            col(ChatMessage.provider) == mark.provider,
            col(ChatMessage.channel_user_id) == mark.channel_user_id,
            col(ChatMessage.direction) == Direction.OUT,
            col(ChatMessage.status).in_(statuses_before(mark.status)),
            col(ChatMessage.status) != MessageStatus.PENDING,
            col(ChatMessage.sent_at) <= mark.up_to + WATERMARK_SLACK,
        )
        .values(status=mark.status, updated_at=utcnow())
        .returning(ChatMessage.id)
    )
    ids = [row[0] for row in result.all()]
    if changed is not None:
        changed.extend(ids)
    return len(ids)


WATERMARK_SLACK = timedelta(seconds=1)


def statuses_before(new: MessageStatus) -> list[MessageStatus]:
    """The stored statuses that `new` may replace."""
    return [s for s in MessageStatus if status_advances(s, new)]


class StatusOutcome(enum.StrEnum):
    APPLIED = "applied"
    STALE = "stale"  # the message is already as far or further
    KEPT = "kept"  # no message has that id yet: kept for when one does


async def apply_status(
    session: AsyncSession, change: StatusChange, changed: list[int] | None = None
) -> StatusOutcome:
    """Move an outbound message forward, never back; keep a report for an unknown id.
    The ids of the rows that moved are added to `changed`."""
    moved = await _advance(session, change)
    if moved:
        if changed is not None:
            changed.extend(moved)
        return StatusOutcome.APPLIED
    named = _outbound_named(change.broker_id, change.provider, change.channel_message_id)
    if (await session.exec(named.limit(1))).first() is not None:
        return StatusOutcome.STALE
    session.add(
        EarlyStatus(
            broker_id=change.broker_id,
            provider=change.provider,
            channel_message_id=change.channel_message_id,
            status=change.status,
            error=change.error,
        )
    )
    await session.flush()
    return StatusOutcome.KEPT


async def _advance(session: AsyncSession, change: StatusChange) -> list[int]:
    values: dict[str, Any] = {"status": change.status, "updated_at": utcnow()}
    if change.error is not None:
        values["error"] = change.error
    result = await session.exec(
        sa.update(ChatMessage)
        .where(
            col(ChatMessage.id).in_(
                _outbound_named(change.broker_id, change.provider, change.channel_message_id)
            ),
            col(ChatMessage.status).in_(statuses_before(change.status)),
        )
        .values(**values)
        .returning(ChatMessage.id)
    )
    return [row[0] for row in result.all()]


def _outbound_named(broker_id: str, provider: str, channel_message_id: str) -> Any:
    """The outbound message a provider id names: by its own id, or by the id of one of
    its parts when it went as several sends. A report on any part moves the whole
    message: the parts go in order, so one delivered or read means the message is
    arriving, and one failed means it did not arrive whole."""
    by_row = select(ChatMessage.id).where(
        col(ChatMessage.broker_id) == broker_id,
        col(ChatMessage.provider) == provider,
        col(ChatMessage.direction) == Direction.OUT,
        col(ChatMessage.channel_message_id) == channel_message_id,
    )
    by_part = select(ChatMessagePart.message_id).where(
        col(ChatMessagePart.broker_id) == broker_id,
        col(ChatMessagePart.provider) == provider,
        col(ChatMessagePart.channel_message_id) == channel_message_id,
    )
    return sa.union_all(by_row, by_part)


async def apply_early_statuses(
    session: AsyncSession, broker_id: str, provider: str, channel_message_id: str
) -> None:
    """Apply the reports that arrived before this id was recorded, then forget them."""
    where = (
        col(EarlyStatus.broker_id) == broker_id,
        col(EarlyStatus.provider) == provider,
        col(EarlyStatus.channel_message_id) == channel_message_id,
    )
    early = (await session.exec(select(EarlyStatus).where(*where))).all()
    for report in sorted(early, key=lambda r: MessageStatus(r.status).rank):
        change = StatusChange(
            broker_id, provider, channel_message_id, MessageStatus(report.status), report.error
        )
        await _advance(session, change)
    if early:
        await session.exec(sa.delete(EarlyStatus).where(*where))


async def apply_known_early_statuses(session: AsyncSession, *where: sa.ColumnElement[bool]) -> int:
    """Apply every kept report whose outbound message is known (among rows matching
    `where`); returns how many messages it concerned."""
    reports = select(EarlyStatus.broker_id, EarlyStatus.provider, EarlyStatus.channel_message_id)
    by_row = reports.join(
        ChatMessage,
        sa.and_(
            col(ChatMessage.broker_id) == col(EarlyStatus.broker_id),
            col(ChatMessage.provider) == col(EarlyStatus.provider),
            col(ChatMessage.channel_message_id) == col(EarlyStatus.channel_message_id),
            col(ChatMessage.direction) == Direction.OUT,
        ),
    ).where(*where)
    by_part = (
        reports.join(
            ChatMessagePart,
            sa.and_(
                col(ChatMessagePart.broker_id) == col(EarlyStatus.broker_id),
                col(ChatMessagePart.provider) == col(EarlyStatus.provider),
                col(ChatMessagePart.channel_message_id) == col(EarlyStatus.channel_message_id),
            ),
        )
        .join(ChatMessage, col(ChatMessage.id) == col(ChatMessagePart.message_id))
        .where(*where)
    )
    found = (await session.exec(sa.union(by_row, by_part))).all()
    for broker_id, provider, channel_message_id in found:
        await apply_early_statuses(session, broker_id, provider, channel_message_id)
    return len(found)


async def settle_early_statuses(session: AsyncSession, forget_before: datetime) -> int:
    """Apply kept reports whose message is known by now, and forget those too old to match.

    On PostgreSQL a report can be kept while the send that records its id commits
    at the same moment; neither transaction sees the other. This catches it up, and
    drops the echoes of a send's parts stored the same way (`drop_echoes_of_parts`).
    """
    settled = await apply_known_early_statuses(session)
    await drop_echoes_of_parts(session, utcnow() - ECHO_RACE)
    await session.exec(sa.delete(EarlyStatus).where(col(EarlyStatus.created_at) < forget_before))
    return settled


# An echo that crossed its send's record is dropped by the next sweep; older ones are not
# looked at again (the index of recent rows keeps the sweep to the last stretch).
ECHO_RACE = timedelta(hours=1)


async def drop_echoes_of_parts(session: AsyncSession, since: datetime) -> None:
    """Drop echoes stored since then of the parts of our own sends.

    An echo is stored as a message sent from elsewhere (never tried by us: no attempts)
    when no send of ours is known by its id; the send's own record drops such echoes
    and later ones are not stored. On PostgreSQL an echo stored while the send's
    record commits sees nothing and is not seen: it is dropped here.
    """
    ours = (
        select(ChatMessagePart.message_id)
        .where(
            col(ChatMessagePart.broker_id) == col(ChatMessage.broker_id),
            col(ChatMessagePart.provider) == col(ChatMessage.provider),
            col(ChatMessagePart.channel_message_id) == col(ChatMessage.channel_message_id),
            col(ChatMessagePart.message_id) != col(ChatMessage.id),
        )
        .exists()
    )
    await session.exec(
        sa.delete(ChatMessage).where(
            col(ChatMessage.direction) == Direction.OUT,
            col(ChatMessage.updated_at) >= since,
            col(ChatMessage.attempts) == 0,
            ours,
        )
    )
