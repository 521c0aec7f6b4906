"""The reply worker: runs the rules on stored inbound messages, off the request path.

Messages are handled one at a time in id order, so replies to a lead keep the
order of what the lead wrote. Deciding, queueing the replies and marking the
message handled is one transaction: after a crash, what was not handled is
handled at the next start, and nothing is answered twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.brokers import BrokerConfig
from leadline.runtime.rules import MessageFacts, Reply, decide
from leadline.storage.conversation import (
    Unhandled,
    claim_unhandled,
    first_inbound_ids,
    lead_names,
)
from leadline.storage.outbox import QueuedMessage, enqueue

log = logging.getLogger(__name__)
BATCH = 500
SETTLE_SECONDS = 0.05


class ReplyWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        brokers: Mapping[str, BrokerConfig],
        on_queued: Callable[[], None],
        on_handled: Callable[[Sequence[Unhandled]], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._brokers = brokers
        self._on_queued = on_queued
        self._on_handled = on_handled
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
            claimed, queued = await self._handle_next()
            if queued:
                self._on_queued()
            if claimed and self._on_handled is not None:
                self._on_handled(claimed)
            handled += len(claimed)
            # A short batch took every row there was: rows stored later wake us again.
            if len(claimed) < BATCH:
                return handled
        return handled

    async def _handle_next(self) -> tuple[list[Unhandled], bool]:
        """Claim the next batch and run the rules on it, in one transaction; returns
        the rows claimed and whether replies were queued.

        Only rows this worker claims are answered, so two processes never answer
        the same message.
        """
        async with self._sessions() as session, session.begin():
            mine = await claim_unhandled(session, BATCH)
            answering = [m for m in mine if self._answers(m.broker_id)]
            if not answering:
                return mine, False
            lead_ids = {m.lead_id for m in answering}
            names = await lead_names(session, lead_ids)
            firsts = await first_inbound_ids(session, lead_ids)
            queued = False
            for message in answering:
                facts = MessageFacts(
                    provider=message.provider,
                    lead_name=names.get(message.lead_id),
                    first_from_lead=firsts.get(message.lead_id) == message.id,
                )
                for reply in decide(self._brokers[message.broker_id], facts):
                    await enqueue(session, _reply_row(message, reply))
                    queued = True
        return mine, queued

    def _answers(self, broker_id: str) -> bool:
        # A broker no longer in brokers.toml: its messages are stored, never answered.
        broker = self._brokers.get(broker_id)
        return broker is not None and broker.features.auto_reply


def _reply_row(message: Unhandled, reply: Reply) -> QueuedMessage:
    return QueuedMessage(
        lead_id=message.lead_id,
        broker_id=message.broker_id,
        provider=message.provider,
        channel_user_id=message.channel_user_id,
        channel_username=message.channel_username,
        message_text=reply.text,
        ai_response_used=False,
        provider_metadata={"rule": reply.rule, "in_reply_to": message.id},
    )
