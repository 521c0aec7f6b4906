"""What the outbox holds per broker and provider: for `leadline status` and `/healthz`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.models import ChatMessage
from leadline.storage.outbox import ChannelKey, active_pauses

RECENT = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    queued: int = 0  # pending, not taken by a sender (due, scheduled or waiting for a retry)
    retrying: int = 0  # of those, waiting for a retry after a failed attempt
    in_flight: int = 0  # taken by a sender: being sent now
    sent_last_hour: int = 0
    failed_last_hour: int = 0
    paused_until: datetime | None = None
    pause_reason: str | None = None

    def as_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "queued": self.queued,
            "retrying": self.retrying,
            "in_flight": self.in_flight,
            "sent_last_hour": self.sent_last_hour,
            "failed_last_hour": self.failed_last_hour,
        }
        if self.paused_until is not None:
            body["paused_until"] = self.paused_until.isoformat()
            body["pause_reason"] = self.pause_reason
        return body


def _count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


async def delivery_counts(session: AsyncSession, now: datetime) -> dict[ChannelKey, DeliveryCounts]:
    since = now - RECENT
    pending = col(ChatMessage.status) == MessageStatus.PENDING
    leased = sa.and_(pending, col(ChatMessage.lease_until) > now)
    free = sa.and_(
        pending, sa.or_(col(ChatMessage.lease_until).is_(None), col(ChatMessage.lease_until) <= now)
    )
    query = (
        sa.select(
            ChatMessage.broker_id,
            ChatMessage.provider,
            _count(free),
            _count(sa.and_(free, col(ChatMessage.attempts) > 0)),
            _count(leased),
            _count(col(ChatMessage.sent_at) >= since),
            _count(
                sa.and_(
                    col(ChatMessage.status) == MessageStatus.FAILED,
                    col(ChatMessage.updated_at) >= since,
                )
            ),
        )
        .where(
            col(ChatMessage.direction) == Direction.OUT,
            # A row sent or failed within the hour was updated within the hour.
            sa.or_(pending, col(ChatMessage.updated_at) >= since),
        )
        .group_by(ChatMessage.broker_id, ChatMessage.provider)
    )
    counts = {
        (broker, provider): DeliveryCounts(*(int(n) for n in numbers))
        for broker, provider, *numbers in (await session.exec(query)).all()
    }
    for key, pause in (await active_pauses(session, now)).items():
        found = counts.get(key, DeliveryCounts())
        counts[key] = replace(found, paused_until=pause.until, pause_reason=pause.reason)
    return counts
