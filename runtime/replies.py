"""The reply worker: runs the rules on stored inbound messages, off the request path.

Messages are handled in id order, so replies to a lead keep the order of what the
lead wrote. Deciding, queueing the replies and marking the message handled is one
transaction: after a crash, what was not handled is handled at the next start, and
nothing is answered twice.

A broker's responder (runtime/responder.py) may be slow, and a new lead's profile
may be a moment away (runtime/profiles.py), so both are awaited before that
transaction, outside it, for the messages peeked then; the transaction then claims
exactly those, if no other process did meanwhile. Messages stored during the wait
are left for the next batch, which waits for their own leads' profiles. A crash in
between only means the responder is asked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.brokers import BrokerConfig
from leadline.runtime import reply_facts
from leadline.runtime.dispatcher import UNLESS_ANSWERED
from leadline.runtime.responder import (
    IncomingMessage,
    LeadInfo,
    Responder,
    ResponderError,
    ask,
    load_responder,
)
from leadline.runtime.rules import Reply, decide
from leadline.storage.conversation import (
    Unhandled,
    claim_ids,
    claim_unhandled,
    lead_infos,
    peek_unhandled,
)
from leadline.storage.outbox import QueuedMessage, enqueue
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)
BATCH = 500
SETTLE_SECONDS = 0.05
RESPONDERS_AT_ONCE = 8
INTRODUCE_SECONDS = 2.0  # the longest a reply waits for its lead's name from a profile


class ReplyWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        brokers: Mapping[str, BrokerConfig],
        on_queued: Callable[[], None],
        on_handled: Callable[[Sequence[Unhandled]], None] | None = None,
        clock: Callable[[], datetime] = utcnow,
        introduce: Callable[[Collection[tuple[int, str, str]]], Awaitable[None]] | None = None,
    ) -> None:
        self._sessions = sessions
        self._brokers = brokers
        self._on_queued = on_queued
        self._on_handled = on_handled
        self._clock = clock
        self._introduce = introduce  # leads named from profiles before they are answered
        self._responders = _load_responders(brokers)
        self._asking = asyncio.Semaphore(RESPONDERS_AT_ONCE)
        self._wake = asyncio.Event()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the batch under way, then return from `run`."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        self._wake.set()  # resume whatever a previous run left unhandled
        while not self._stopping:
            await self._wake.wait()
            if self._stopping:
                return
            # Let a burst of deliveries settle: one transaction then answers them all.
            # Replies are not on the request path, so the wait can be long enough for
            # a busy minute to cost few transactions.
            await asyncio.sleep(SETTLE_SECONDS)
            self._wake.clear()
            try:
                await self.drain()
            except Exception:
                log.exception("reply worker failed; retrying in 5 s")
                await asyncio.sleep(5)
                self._wake.set()

    async def drain(self) -> int:
        """Handle every unhandled inbound message; returns how many were handled."""
        handled = 0
        while not self._stopping:
            claimed, queued, taken = await self._handle_next()
            if queued:
                self._on_queued()
            if claimed and self._on_handled is not None:
                self._on_handled(claimed)
            handled += len(claimed)
            # A short batch saw every row there was: rows stored later wake us again.
            if taken < BATCH:
                return handled
        return handled

    async def _handle_next(self) -> tuple[list[Unhandled], bool, int]:
        """Claim the next batch and run the rules on it, in one transaction; returns
        the rows claimed, whether replies were queued, and how many rows were taken
        up (peeked or claimed: fewer than BATCH when no more were there).

        Only rows this worker claims are answered, so two processes never answer
        the same message.
        """
        peeked: list[Unhandled] | None = None
        answers: dict[int, str] = {}
        if self._responders or self._introduce:
            async with self._sessions() as session:
                peeked = await peek_unhandled(session, BATCH)
            if not peeked:
                return [], False, 0
            await self._introduce_leads(peeked)
            if self._responders:
                answers = await self._ask_responders(peeked)
        async with self._sessions() as session, session.begin():
            if peeked is None:
                mine = await claim_unhandled(session, BATCH)
            else:
                # Only what was waited for: a row stored meanwhile waits for its own
                # lead's profile in the next batch. Rows another process took
                # meanwhile are not returned.
                mine = await claim_ids(session, [m.id for m in peeked])
            taken = len(mine) if peeked is None else len(peeked)
            answering = [m for m in mine if self._answers(m.broker_id)]
            if not answering:
                return mine, False, taken
            now = self._clock()
            facts = await reply_facts.gather(session, self._brokers, answering, now)
            queued = False
            for message in answering:
                about = facts.of(message, answers.get(message.id))
                for reply in decide(self._brokers[message.broker_id], about):
                    await enqueue(session, _reply_row(message, reply, now))
                    facts.replied(message, reply)
                    queued = True
        return mine, queued, taken

    async def _introduce_leads(self, messages: Sequence[Unhandled]) -> None:
        """A moment for the leads about to be answered to be named from their profiles."""
        leads = {
            (m.lead_id, m.broker_id, m.provider) for m in messages if self._answers(m.broker_id)
        }
        if self._introduce is None or not leads:
            return
        log.debug("waiting for the profiles of leads %s", sorted({lead for lead, *_ in leads}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._introduce(leads), INTRODUCE_SECONDS)

    async def _ask_responders(self, messages: Sequence[Unhandled]) -> dict[int, str]:
        """The responders' answers, by message id; only for brokers that answer."""
        asked = [
            m for m in messages if m.broker_id in self._responders and self._answers(m.broker_id)
        ]
        if not asked:
            return {}
        async with self._sessions() as session:
            leads = await lead_infos(session, {m.lead_id for m in asked})

        async def one(message: Unhandled) -> tuple[int, str | None]:
            broker = self._brokers[message.broker_id]
            incoming = IncomingMessage(
                message.id,
                message.broker_id,
                message.provider,
                message.channel_user_id,
                message.message_text,
                tuple(message.attachments or ()),
                message.created_at,
            )
            async with self._asking:
                lead = leads[message.lead_id]
                answer = await ask(
                    self._responders[message.broker_id],
                    incoming,
                    LeadInfo(lead.id, lead.name, lead.phone, tuple(lead.tags or ())),
                    broker.responder_timeout,
                )
            return message.id, answer

        results = await asyncio.gather(*(one(m) for m in asked))
        return {message_id: answer for message_id, answer in results if answer}

    def _answers(self, broker_id: str) -> bool:
        # A broker no longer in brokers.toml: its messages are stored, never answered.
        broker = self._brokers.get(broker_id)
        return broker is not None and broker.features.auto_reply


def _reply_row(message: Unhandled, reply: Reply, now: datetime) -> QueuedMessage:
    metadata: dict[str, object] = {"rule": reply.rule, "in_reply_to": message.id}
    if reply.unless_answered:
        metadata[UNLESS_ANSWERED] = True
    return QueuedMessage(
        lead_id=message.lead_id,
        broker_id=message.broker_id,
        provider=message.provider,
        channel_user_id=message.channel_user_id,
        channel_username=message.channel_username,
        message_text=reply.text,
        send_after=reply.send_after,
        ai_response_used=reply.ai,
        provider_metadata=metadata,
        created_at=now,
    )


def _load_responders(brokers: Mapping[str, BrokerConfig]) -> dict[str, Responder]:
    """Each broker's responder; one that cannot be loaded is left out, said once."""
    found = {}
    for broker in brokers.values():
        if broker.responder is None:
            continue
        try:
            found[broker.id] = load_responder(broker.responder)
        except ResponderError as exc:
            log.error("broker %s: responder %s not used: %s", broker.id, broker.responder, exc)
    return found
