"""The reply worker: runs the rules on stored inbound messages, off the request path.

Messages are handled one at a time in id order, so replies to a lead keep the
order of what the lead wrote. Deciding, queueing the replies and marking the
message handled is one transaction: after a crash, what was not handled is
handled at the next start, and nothing is answered twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.brokers import BrokerConfig
from leadline.runtime.rules import MessageFacts, decide
from leadline.storage.conversation import (
    get_lead,
    is_first_inbound,
    mark_handled,
    unhandled_inbound,
)
from leadline.storage.models import ChatMessage
from leadline.storage.outbox import QueuedMessage, enqueue

log = logging.getLogger(__name__)
BATCH = 100


class ReplyWorker:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        brokers: Mapping[str, BrokerConfig],
        on_queued: Callable[[], None],
    ) -> None:
        self._sessions = sessions
        self._brokers = brokers
        self._on_queued = on_queued
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self._wake.set()  # resume whatever a previous run left unhandled
        while True:
            await self._wake.wait()
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
        while True:
            async with self._sessions() as session:
                batch = await unhandled_inbound(session, BATCH)
            if not batch:
                return handled
            for message in batch:
                if await self._handle(message):
                    self._on_queued()
                handled += 1

    async def _handle(self, message: ChatMessage) -> bool:
        """Returns whether replies were queued."""
        assert message.id is not None
        async with self._sessions() as session, session.begin():
            if not await mark_handled(session, message.id):
                return False
            broker = self._brokers.get(message.broker_id)
            if broker is None:
                return False  # a broker no longer in brokers.toml: store, never answer
            lead = await get_lead(session, message.lead_id)
            facts = MessageFacts(
                provider=message.provider,
                lead_name=lead.name if lead else None,
                first_from_lead=await is_first_inbound(session, message),
            )
            replies = decide(broker, facts)
            for reply in replies:
                await enqueue(
                    session,
                    QueuedMessage(
                        lead_id=message.lead_id,
                        broker_id=message.broker_id,
                        provider=message.provider,
                        channel_user_id=message.channel_user_id,
                        channel_username=message.channel_username,
                        message_text=reply.text,
                        ai_response_used=False,
                        provider_metadata={"rule": reply.rule, "in_reply_to": message.id},
                    ),
                )
        return bool(replies)
