"""The outbound dispatcher: sends due outbox rows through their channel's adapter.

Rows to one recipient go one at a time, in id order; a row waiting for its
retry holds back the later rows to the same recipient, so nothing is
reordered. The attempt is counted before the provider is called: if the
process dies during the call, the row is still `pending` with that attempt
recorded and is sent again at the next start (the one window where a message
can be sent twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import (
    Adapter,
    Attachment,
    OutboundMessage,
    PermanentSendError,
    RecipientMoved,
    RetryableSendError,
)
from leadline.runtime.channels import Channels, ChannelState
from leadline.runtime.retry import RetryPolicy
from leadline.storage.leads import rekey_channel
from leadline.storage.models import ChatMessage
from leadline.storage.outbox import (
    claim,
    due_messages,
    mark_failed,
    mark_sent,
    next_due_at,
    postpone,
)
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)

Recipient = tuple[str, str, str]  # broker, provider, channel user
IDLE_POLL_SECONDS = 5.0
DOWN_CHANNEL_RETRY = timedelta(seconds=30)


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Channels,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        batch: int = 200,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._policy = policy or RetryPolicy()
        self._clock = clock
        self._batch = batch
        self._wake = asyncio.Event()
        self._in_flight: dict[Recipient, asyncio.Task[None]] = {}
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Start no new send; `run` returns once the sends under way are done."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        try:
            while not self._stopping:
                try:
                    timeout = await self.cycle()
                except Exception:
                    log.exception("dispatcher cycle failed; retrying")
                    timeout = IDLE_POLL_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
        finally:
            await self.drain_in_flight()

    async def drain_in_flight(self) -> None:
        """Let the sends already under way finish (clean shutdown)."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def cycle(self) -> float:
        """Start sending what is due; returns the seconds until something may be due."""
        now = self._clock()
        async with self._sessions() as session:
            rows = await due_messages(session, now, self._batch)
            next_due = await next_due_at(session)
        queues: dict[Recipient, list[ChatMessage]] = {}
        for row in rows:
            queues.setdefault((row.broker_id, row.provider, row.channel_user_id), []).append(row)
        for recipient, queue in queues.items():
            if recipient not in self._in_flight:
                task = asyncio.create_task(self._send_queue(recipient, queue))
                self._in_flight[recipient] = task
        if next_due is not None and next_due > now:
            return min(IDLE_POLL_SECONDS, (next_due - now).total_seconds())
        return IDLE_POLL_SECONDS

    async def _send_queue(self, recipient: Recipient, queue: list[ChatMessage]) -> None:
        try:
            for row in queue:
                if not await self.deliver(row):
                    break  # postponed: later rows wait behind it
        except Exception:
            log.exception("sending to %s/%s failed unexpectedly", recipient[0], recipient[1])
        finally:
            self._in_flight.pop(recipient, None)
            self.wake()

    async def deliver(self, row: ChatMessage) -> bool:
        """Send one row; True when it reached a final state (sent or failed)."""
        assert row.id is not None
        channel = self._channels.get(row.broker_id, row.provider)
        if channel is None or channel.state == ChannelState.DISABLED or channel.adapter is None:
            reason = channel.reason if channel else "not configured"
            await self._finish(row.id, failed=f"provider {row.provider} unavailable: {reason}")
            return True
        if channel.state != ChannelState.UP:
            await self._postpone(row.id, f"channel down: {channel.reason}", DOWN_CHANNEL_RETRY)
            return False
        async with self._sessions() as session, session.begin():
            if not await claim(session, row.id, row.attempts):
                return True  # sent, failed or taken by another sender meanwhile
        attempts = row.attempts + 1
        adapter = channel.adapter
        if channel.broker.features.typing_indicator and adapter.capabilities.typing_indicator:
            await _show_typing(adapter, row.channel_user_id)
        try:
            result = await adapter.send(_outbound(row))
        except PermanentSendError as exc:
            await self._finish(row.id, failed=_error_text(exc, exc.code))
            return True
        except RecipientMoved as exc:
            await self._rekey(row, exc.new_channel_user_id)
            return False
        except RetryableSendError as exc:
            return await self._retry(row, attempts, _error_text(exc, exc.code), exc.retry_after)
        except Exception as exc:
            log.exception("adapter %s raised an untyped error", row.provider)
            return await self._retry(row, attempts, _error_text(exc, None), None)
        async with self._sessions() as session, session.begin():
            await mark_sent(session, row.id, result.channel_message_id, result.status)
        return True

    async def _retry(
        self, row: ChatMessage, attempts: int, error: str, retry_after: float | None
    ) -> bool:
        assert row.id is not None
        if self._policy.gives_up(attempts, row.created_at, self._clock()):
            await self._finish(row.id, failed=f"gave up after {attempts} attempts: {error}")
            return True
        delay = timedelta(seconds=self._policy.delay(attempts, retry_after))
        await self._postpone(row.id, error, delay)
        return False

    async def _rekey(self, row: ChatMessage, new_channel_user_id: str) -> None:
        """Follow the chat to its new id; the row goes out again at the next cycle."""
        log.info("chat %s of broker %s moved; re-keyed", row.channel_user_id, row.broker_id)
        async with self._sessions() as session, session.begin():
            await rekey_channel(
                session, row.broker_id, row.provider, row.channel_user_id, new_channel_user_id
            )

    async def _postpone(self, message_id: int, error: str, delay: timedelta) -> None:
        async with self._sessions() as session, session.begin():
            await postpone(session, message_id, error, self._clock() + delay)

    async def _finish(self, message_id: int, *, failed: str) -> None:
        log.warning("outbound message %s failed: %s", message_id, failed)
        async with self._sessions() as session, session.begin():
            await mark_failed(session, message_id, failed)


async def _show_typing(adapter: Adapter, channel_user_id: str) -> None:
    """A nicety: its failure must never hold up the message itself."""
    try:
        await adapter.send_typing(channel_user_id)
    except Exception as exc:
        log.info("typing indicator on %s failed: %s", adapter.name, exc.__class__.__name__)


def _outbound(row: ChatMessage) -> OutboundMessage:
    return OutboundMessage(
        ref=str(row.id),
        channel_user_id=row.channel_user_id,
        text=row.message_text,
        attachments=[Attachment.from_json(a) for a in row.attachments],
        reply_to=row.provider_metadata.get("reply_to"),
    )


def _error_text(exc: BaseException, code: str | None) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{code}: {text}" if code else text
