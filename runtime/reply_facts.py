"""What the reply rules need to know about a batch of messages, read in a few queries.

The business calendar says whether the broker is closed now and since when; the
outbound rows say whether a closed reply already went in that closed stretch,
whether a human answered in it, and whether an open reply already waits for the
next opening. Facts also move as the batch is answered: a second message of a lead
in the same batch sees the replies queued for the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.brokers import BrokerConfig
from leadline.runtime.rules import MessageFacts, Reply
from leadline.storage.conversation import (
    LeadReplies,
    Unhandled,
    first_inbound_ids,
    lead_names,
    recent_replies,
)

# A stretch closed since longer than the calendar can tell is taken from this far back.
LONGEST_CLOSED = timedelta(days=400)


@dataclass(frozen=True, slots=True)
class Closed:
    since: datetime
    until: datetime | None  # the next opening; None: none in sight


class BatchFacts:
    """The facts of one batch at `now`; `replied` keeps them true as replies are queued."""

    def __init__(
        self,
        closed: Mapping[str, Closed | None],
        now: datetime,
        names: dict[int, str | None],
        firsts: dict[int, int],
        replies: dict[int, LeadReplies],
    ) -> None:
        self._closed = closed
        self._now = now
        self._names = names
        self._firsts = firsts
        self._replies = replies

    def of(self, message: Unhandled, responder_reply: str | None = None) -> MessageFacts:
        closed = self._closed[message.broker_id]
        history = self._replies.get(message.lead_id, LeadReplies())
        since = closed.since if closed else self._now
        until = closed.until if closed else None
        return MessageFacts(
            provider=message.provider,
            lead_name=self._names.get(message.lead_id),
            first_from_lead=self._firsts.get(message.lead_id) == message.id,
            text=message.message_text,
            next_open=until,
            closed=closed is not None,
            closed_reply_in_period=any(t >= since for t in history.closed_replies),
            human_answered_in_period=any(t >= since for t in history.human_answers),
            open_reply_queued=until is not None and until in history.pending_open_replies,
            responder_reply=responder_reply,
        )

    def replied(self, message: Unhandled, reply: Reply) -> None:
        history = self._replies.setdefault(message.lead_id, LeadReplies())
        if reply.rule == "closed_reply":
            history.closed_replies.append(self._now)
        elif reply.rule == "open_reply" and reply.send_after is not None:
            history.pending_open_replies.append(reply.send_after)


def closed_now(broker: BrokerConfig, now: datetime) -> Closed | None:
    period = broker.calendar.closed_period(now)
    if period is None:
        return None
    since, until = period
    return Closed(since or now - LONGEST_CLOSED, until)


async def gather(
    session: AsyncSession,
    brokers: Mapping[str, BrokerConfig],
    messages: Sequence[Unhandled],
    now: datetime,
) -> BatchFacts:
    lead_ids = {m.lead_id for m in messages}
    names = await lead_names(session, lead_ids)
    firsts = await first_inbound_ids(session, lead_ids)
    closed = {b: closed_now(brokers[b], now) for b in {m.broker_id for m in messages}}
    # Only leads of brokers closed now, with a closed or open reply to decide, need history.
    waiting = {
        m.lead_id: stretch
        for m in messages
        if (stretch := closed[m.broker_id]) is not None and _has_hours_replies(brokers[m.broker_id])
    }
    replies: dict[int, LeadReplies] = {}
    if waiting:
        since = min(stretch.since for stretch in waiting.values())
        replies = await recent_replies(session, set(waiting), since)
    return BatchFacts(closed, now, names, firsts, replies)


def _has_hours_replies(broker: BrokerConfig) -> bool:
    return bool(broker.templates.closed_reply or broker.templates.open_reply)
