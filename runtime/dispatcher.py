"""The outbound dispatcher: sends due outbox rows through their channel's adapter.

Each cycle takes the due head of every recipient (one row per chat, in id
order), as many per channel as its rate lets go within a few seconds, with a
lease and the attempt counted (one transaction). Each taken row then waits
for its recipient's and its channel's rate limits, is sent, and its outcome is
committed at once, in a transaction of outcomes only: those that ended while
the previous one committed go with it (group commit), and on SQLite it goes
before every other writer of the process that waits (`urgent_writes`).

The one window where a message can go out twice: the process dies while the
provider call is under way. The row is then still `pending` with the attempt
recorded, and is sent again once its lease has run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import (
    Adapter,
    Attachment,
    OutboundMessage,
    PauseScope,
    PermanentSendError,
    RateLimit,
    RecipientMoved,
    RetryableSendError,
    SendResult,
    TemplateRef,
)
from leadline.runtime.batching import GroupCommit
from leadline.runtime.channels import Channel, Channels, ChannelState
from leadline.runtime.ratelimit import Gates, Pass, configured_limits
from leadline.runtime.retry import RetryPolicy
from leadline.runtime.sanitize import FULL_IDS, UNREACHABLE_USER, is_digest, sent_ids
from leadline.storage import crm_events
from leadline.storage.conversation import answered_by_human
from leadline.storage.engine import ReservedSessions, urgent_writes
from leadline.storage.leads import rekey_channel
from leadline.storage.messages import settle_early_statuses
from leadline.storage.outbox import (
    ChannelKey,
    Failed,
    OutboxRow,
    Outcome,
    Released,
    Retry,
    Sent,
    Withdrawn,
    claim_many,
    due_heads,
    next_due_at,
    pause_channel,
    record,
    sent_since,
    unroutable,
)
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)

Recipient = tuple[str, str, str]  # broker, provider, channel user
IDLE_POLL_SECONDS = 5.0
SWEEP_SECONDS = 30.0
KEEP_EARLY_STATUSES = timedelta(days=7)  # a report for an id never seen: kept this long
THROTTLED = "throttled"  # provider_metadata: tries the provider only asked us to wait
# provider_metadata: send only if no human answered the lead since the row was queued.
UNLESS_ANSWERED = "unless_answered"


@dataclass(frozen=True, slots=True)
class _Take:
    """Take the due heads, within each channel's budget."""

    now: datetime
    budgets: dict[ChannelKey, int]


@dataclass(frozen=True, slots=True)
class _Taken:
    rows: list[OutboxRow]
    next_due: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryOptions:
    # A taken row waits at most this long for its rate limits, so it is sent
    # (or handed back) well within its lease.
    max_wait: float = 10.0
    lease: timedelta = timedelta(seconds=90)
    per_channel: int = 500  # rows in progress per channel when its limits allow more
    policy: RetryPolicy = field(default_factory=RetryPolicy)


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Channels,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        options: DeliveryOptions | None = None,
        gates: Gates | None = None,
        events_for: frozenset[str] = frozenset(),
        on_events: Callable[[], None] = lambda: None,
        shares: Callable[[ChannelKey], int] = lambda _: 1,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._options = options or DeliveryOptions()
        # Waiting for the limits must leave most of the lease to the provider call.
        self._max_wait = min(self._options.max_wait, self._options.lease.total_seconds() / 3)
        self._policy = policy or self._options.policy
        self._clock = clock
        self._gates = gates or Gates(answers=True)
        self._events_for = events_for  # brokers whose CRM hears of sends and failures
        self._on_events = on_events  # wakes the CRM sender
        self._shares = shares  # how many processes send on a channel, this one included
        # Outcomes only: taking new heads (queries that may take long) never holds them up;
        # on a connection of their own while running: never waiting for the pool either.
        self._reserved = ReservedSessions(sessions)
        self._outcomes: GroupCommit[Outcome, None] = GroupCommit(
            self._reserved, self._record, "outcome-writer", gather_seconds=0
        )
        self._wake = asyncio.Event()
        self._in_flight: dict[Recipient, asyncio.Task[None]] = {}
        self._waiting: set[Recipient] = set()  # taken, waiting for the limits (not sending)
        self._busy: Counter[ChannelKey] = Counter()
        self._last_sweep = -math.inf
        self._stopping = False

    @property
    def gates(self) -> Gates:
        return self._gates

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Start no new send; `run` returns once the sends under way are done."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        self._reserved.open()
        self._outcomes.start()
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
            await self._outcomes.stop()
            await self._reserved.close()

    async def drain_in_flight(self) -> None:
        """Let the sends under way finish; rows still waiting for their limits go back."""
        if self._stopping:
            for recipient in self._waiting:
                self._in_flight[recipient].cancel()
        if self._in_flight:
            await asyncio.gather(*self._in_flight.values(), return_exceptions=True)

    async def cycle(self) -> float:
        """Start sending what is due; returns the seconds until something may be due."""
        now = self._clock()
        await self._sweep(now)
        budgets = {c.key: self._budget(c) for c in self._channels if _sendable(c)}
        async with self._sessions() as session, session.begin():
            taken = await self._take(session, _Take(now, budgets))
        for row in taken.rows:
            self._start(row)
        self._gates.prune()
        if taken.next_due is not None and taken.next_due > now:
            return min(IDLE_POLL_SECONDS, (taken.next_due - now).total_seconds())
        return IDLE_POLL_SECONDS

    async def _record(self, session: AsyncSession, outcomes: Sequence[Outcome]) -> list[None]:
        """Outcomes, with their CRM events, in a transaction of their own: from the
        provider's answer to this commit is the window in which a crash sends a message
        twice. On SQLite it goes before the other writers of this process that wait (API
        requests, the taking of heads), though not before one already inside its
        transaction; on PostgreSQL it touches only rows this process holds (leased, so
        no claim locks them) and waits for no claim."""
        with urgent_writes():
            await record(session, outcomes)
            if self._events_for:
                ended = [o.id for o in outcomes if isinstance(o, Sent | Failed)]
                await crm_events.emit(session, ended, crm_events.STATUS, self._events_for)
        return [None] * len(outcomes)

    async def _take(self, session: AsyncSession, take: _Take) -> _Taken:
        heads = [r for r in await due_heads(session, take.now, take.budgets) if self._may_start(r)]
        lease_until = take.now + self._options.lease
        taken = await claim_many(session, [r.id for r in heads], take.now, lease_until)
        next_due = await next_due_at(session, take.now)
        return _Taken([r for r in heads if r.id in taken], next_due)

    def _budget(self, channel: Channel) -> int:
        """Rows of this channel that may be taken now: what its rate lets go within
        `max_wait`, less those already taken."""
        assert channel.adapter is not None
        limits = self._channel_limits(channel)
        ceiling = self._options.per_channel
        if limits:
            rate = min(limit.count / limit.per_seconds for limit in limits)
            ceiling = min(ceiling, max(1, math.floor(rate * self._max_wait)))
        gate = self._gates.channel(channel.key, lambda: limits)
        if gate.paused_for() > 0:
            return 0
        return ceiling - self._busy[channel.key]

    def _may_start(self, row: OutboxRow) -> bool:
        if row.recipient in self._in_flight:
            return False
        channel = self._channels.get(row.broker_id, row.provider)
        assert channel is not None and channel.adapter is not None
        adapter = channel.adapter
        gate = self._gates.recipient(
            row.recipient, lambda: adapter.recipient_limits(row.channel_user_id)
        )
        # A chat at its limit for long (a busy group) is left alone until it is nearly free.
        return gate.delay() <= self._max_wait

    def _start(self, row: OutboxRow) -> None:
        key = (row.broker_id, row.provider)
        self._busy[key] += 1
        self._waiting.add(row.recipient)
        task = asyncio.create_task(self._send(row), name=f"send {row.id}")
        self._in_flight[row.recipient] = task

    async def _send(self, row: OutboxRow) -> None:
        try:
            outcome = await self.deliver(row)
            await self._outcomes.submit(outcome)  # committed, with its CRM event if any
            if isinstance(outcome, Sent | Failed) and row.broker_id in self._events_for:
                self._on_events()
        except asyncio.CancelledError:
            # Stopped while it waited for its limits: hand the row back for the next start.
            await self._outcomes.submit(Released(row.id))
            raise
        except Exception:
            log.exception("sending message %s failed unexpectedly", row.id)
            with contextlib.suppress(Exception):
                await self._outcomes.submit(Released(row.id))
        finally:
            self._waiting.discard(row.recipient)
            self._in_flight.pop(row.recipient, None)
            self._busy[(row.broker_id, row.provider)] -= 1
            self.wake()

    async def deliver(self, row: OutboxRow) -> Outcome:
        """Wait for the limits, send one taken row; returns how it ended."""
        channel = self._channels.get(row.broker_id, row.provider)
        if channel is None or channel.adapter is None or channel.state != ChannelState.UP:
            return Released(row.id)  # it went down meanwhile: due again once it is up
        adapter = channel.adapter
        if row.provider_metadata.get(UNLESS_ANSWERED) and await self._answered(row):
            log.info("scheduled message %s withdrawn: a human answered the lead", row.id)
            return Withdrawn(row.id)
        message = _outbound(row)
        if is_digest(row.channel_user_id):
            return self._failed(row, UNREACHABLE_USER)
        if message.template is not None and not adapter.capabilities.templates:
            return self._failed(row, f"{row.provider} cannot send message templates")
        if (over := await self._over_quota(adapter, row)) is not None:
            return self._failed(row, over)
        # Typing first: nothing may come between passing the limits and the send.
        if channel.broker.features.typing_indicator and adapter.capabilities.typing_indicator:
            await _show_typing(adapter, message)
        passes = await self._pass_gates(channel, row)
        if passes is None:
            return Released(row.id)
        self._waiting.discard(row.recipient)
        try:
            result = await _send_answered(adapter, message, passes)
        except PermanentSendError as exc:
            return self._failed(row, _error_text(exc, exc.code))
        except RecipientMoved as exc:
            await self._rekey(row, exc.new_channel_user_id)
            return Released(row.id, tried=True)
        except RetryableSendError as exc:
            return await self._retry(row, exc)
        except Exception as exc:
            log.exception("adapter %s raised an untyped error", row.provider)
            return await self._retry(row, RetryableSendError(_error_text(exc, None)))
        metadata = {**row.provider_metadata, **result.metadata} if result.metadata else None
        echoed_on = channel.key if adapter.capabilities.echoes else None
        sent_id, parts, full = sent_ids(result.channel_message_id, tuple(result.parts))
        if full:  # an id over 255 characters: kept under its digest, as statuses name it
            metadata = {**(metadata or row.provider_metadata), FULL_IDS: full}
        return Sent(row.id, sent_id, result.status, metadata, echoed_on, parts)

    async def _over_quota(self, adapter: Adapter, row: OutboxRow) -> str | None:
        """Why the provider would refuse one more message to this user now, if it would."""
        quota = adapter.capabilities.reply_quota
        if quota is None:
            return None
        async with self._sessions() as session:
            sent = await sent_since(session, row.recipient, row.last_inbound_at)
        if sent < quota:
            return None
        return (
            f"reply_quota: {row.provider} allows {quota} messages after each message of the "
            f"user; {sent} went since the user last wrote"
        )

    async def _answered(self, row: OutboxRow) -> bool:
        async with self._sessions() as session:
            return await answered_by_human(session, row.lead_id, row.created_at)

    async def _pass_gates(self, channel: Channel, row: OutboxRow) -> tuple[Pass, Pass] | None:
        assert channel.adapter is not None
        adapter = channel.adapter
        deadline = time.monotonic() + self._max_wait
        recipient = self._gates.recipient(
            row.recipient, lambda: adapter.recipient_limits(row.channel_user_id)
        )
        whole = self._gates.channel(channel.key, lambda: self._channel_limits(channel))
        # The chat must be free first (a channel slot taken while the chat still waits
        # would be lost), and both record the send at the moment it goes: a chat has
        # one sender at a time, so it is still free once the channel lets the send pass.
        if not await recipient.ready(deadline):
            return None
        channel_pass = await whole.acquire(deadline)
        return None if channel_pass is None else (channel_pass, recipient.take())

    def _channel_limits(self, channel: Channel) -> Sequence[RateLimit]:
        """The channel's limits, this process's share of them."""
        assert channel.adapter is not None
        configured = configured_limits(channel.broker.rate_limits.get(channel.provider))
        default = channel.adapter.capabilities.rate_limit
        limits = configured or ([default] if default is not None else [])
        share = self._shares(channel.key)
        return [RateLimit(limit.count / share, limit.per_seconds) for limit in limits]

    async def _retry(self, row: OutboxRow, exc: RetryableSendError) -> Outcome:
        """Try again later. A provider that only asked us to wait (retry_after) is not
        failing: such tries are counted apart (`throttled` in the row's metadata) and
        neither end the message nor lengthen its backoff; only its age can end it."""
        attempts = row.attempts + 1
        throttled = int(row.provider_metadata.get(THROTTLED, 0))
        error = _error_text(exc, exc.code)
        now = self._clock()
        if exc.retry_after is not None:
            throttled += 1
        failures = attempts - throttled
        waited_only = exc.retry_after is not None
        if self._policy.gives_up(failures, row.created_at, now, throttled=waited_only):
            return self._failed(row, f"gave up after {attempts} attempts: {error}")
        delay = self._policy.delay(failures, exc.retry_after)
        if waited_only and exc.scope == PauseScope.CHANNEL:
            await self._pause(row, delay, error)
        metadata = {**row.provider_metadata, THROTTLED: throttled} if waited_only else None
        return Retry(row.id, error, now + timedelta(seconds=delay), metadata)

    async def _pause(self, row: OutboxRow, seconds: float, reason: str) -> None:
        """The provider holds back the whole channel: so do we, and so does every process."""
        log.warning(
            "broker %s: provider %s asks to wait %.0f s: %s",
            row.broker_id, row.provider, seconds, reason,
        )  # fmt: skip
        channel = self._channels.get(row.broker_id, row.provider)
        if channel is not None:
            self._gates.channel(channel.key, lambda: self._channel_limits(channel)).pause(seconds)
        until = self._clock() + timedelta(seconds=seconds)
        async with self._sessions() as session, session.begin():
            await pause_channel(session, row.broker_id, row.provider, until, reason)

    def _failed(self, row: OutboxRow, error: str) -> Failed:
        log.warning("outbound message %s failed: %s", row.id, error)
        return Failed(row.id, error)

    async def _rekey(self, row: OutboxRow, new_channel_user_id: str) -> None:
        """Follow the chat to its new id; the row goes out again at the next cycle."""
        log.info("chat %s of broker %s moved; re-keyed", row.channel_user_id, row.broker_id)
        async with self._sessions() as session, session.begin():
            await rekey_channel(
                session, row.broker_id, row.provider, row.channel_user_id, new_channel_user_id
            )

    async def _sweep(self, now: datetime) -> None:
        """Housekeeping every SWEEP_SECONDS: fail the rows no channel will ever send (a
        provider disabled or not configured); apply status reports that raced their send."""
        moment = time.monotonic()
        if moment - self._last_sweep < SWEEP_SECONDS:
            return
        self._last_sweep = moment
        routable = [c.key for c in self._channels if c.state != ChannelState.DISABLED]
        async with self._sessions() as session:
            stranded = await unroutable(session, routable)
        outcomes: list[Outcome] = []
        for message_id, broker_id, provider in stranded:
            channel = self._channels.get(broker_id, provider)
            reason = channel.reason if channel else "not configured"
            outcomes.append(Failed(message_id, f"provider {provider} unavailable: {reason}"))
            log.warning("outbound message %s failed: provider %s unavailable", message_id, provider)
        async with self._sessions() as session, session.begin():
            await record(session, outcomes)
            await settle_early_statuses(session, now - KEEP_EARLY_STATUSES)


def _sendable(channel: Channel) -> bool:
    return channel.state == ChannelState.UP and channel.adapter is not None


async def _send_answered(
    adapter: Adapter, message: OutboundMessage, passes: Sequence[Pass]
) -> SendResult:
    """The send; however it ends, the gates count it from now: the provider saw it
    before it answered, and only a window after that may the limits' next send go."""
    try:
        return await adapter.send(message)
    finally:
        for passed in passes:
            passed.answered()


async def _show_typing(adapter: Adapter, message: OutboundMessage) -> None:
    """A nicety: its failure must never hold up the message itself."""
    try:
        await adapter.send_typing(message)
    except Exception as exc:
        log.info("typing indicator on %s failed: %s", adapter.name, exc.__class__.__name__)


def _outbound(row: OutboxRow) -> OutboundMessage:
    template = row.provider_metadata.get("template")
    return OutboundMessage(
        ref=str(row.id),
        channel_user_id=row.channel_user_id,
        text=row.message_text,
        attachments=[Attachment.from_json(a) for a in row.attachments],
        reply_to=row.provider_metadata.get("reply_to"),
        last_inbound_at=row.last_inbound_at,
        last_inbound_id=row.last_inbound_id,
        template=TemplateRef.from_json(template) if template else None,
        human_agent=bool(row.provider_metadata.get("human_agent")),
    )


def _error_text(exc: BaseException, code: str | None) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{code}: {text}" if code else text
