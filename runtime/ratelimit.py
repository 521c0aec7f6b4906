"""Send rate limits: sliding windows per channel and per recipient, and pauses.

A window allows at most `count` sends in any span of `per_seconds`: a send
waits until the count-th previous one is a full span old. Unlike a token
bucket refilled at the same rate, it never lets through a burst above the
limit in any span, which is how providers count. A channel's sends are spaced
evenly, after an idle of any length too, never sent in bursts.

What the provider counts are arrivals, and a send arrives some milliseconds
after it passed, more or less: the span is stretched by MARGIN (2%, 20 ms of a
1 s window) to cover that spread. Between sends a window apart it stayed within
18 ms in 10 of 11 runs at a fake Bot API in another process beside a CPU hog;
in one a stall made it 46 ms, and that second held one send too many. The
first send after an idle arrives later still (up to 110 ms there): it counts
as sent IDLE_GRACE later. A larger margin would cover longer stalls at the
cost of the rate (README: within 3% of the limit)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from leadline.adapters.base import RateLimit
from leadline.config.brokers import RateLimitConfig

MARGIN = 0.02
# The first send after an idle counts in the windows as sent this much later.
IDLE_GRACE = 0.1
Clock = Callable[[], float]


# How often a sender re-checks a window whose oldest send is still unanswered, and
# when such a send counts as answered anyway (a pass its sender never reported:
# longer than any send may take), so that a lost report cannot stop a channel.
UNANSWERED_POLL = 0.01
UNANSWERED_LIMIT = 120.0


@dataclass(slots=True)
class _Send:
    at: float  # when it passed; once answered, when the answer came
    answered: bool = False


class Window:
    def __init__(self, limit: RateLimit, margin: float = MARGIN) -> None:
        # 2.5/s becomes 2 per 0.8 s: whole sends, the same average rate.
        self.size = max(1, math.floor(limit.count))
        self.span = limit.per_seconds * self.size / limit.count * (1 + margin)
        self._sends: deque[_Send] = deque(maxlen=self.size)

    def next_free(self, now: float) -> float:
        if len(self._sends) < self.size:
            return now
        oldest = self._sends[0]
        # The provider saw the oldest send at some moment before its answer: only a
        # span after the answer can the next one not share a window with it there,
        # whatever the delays on the way.
        if not oldest.answered and now < oldest.at + UNANSWERED_LIMIT:
            return max(oldest.at + self.span, now + UNANSWERED_POLL)
        return oldest.at + self.span

    def take(self, at: float) -> None:
        self._sends.append(_Send(at, answered=True))

    def starts(self) -> tuple[float, ...]:
        return tuple(send.at for send in self._sends)

    def sends(self) -> tuple[_Send, ...]:
        return tuple(self._sends)

    def keep(self, send: _Send) -> None:
        self._sends.append(send)

    def idle(self, now: float) -> bool:
        if not self._sends:
            return True
        last = self._sends[-1]
        answered = last.answered or now >= last.at + UNANSWERED_LIMIT
        return answered and last.at + self.span <= now


@dataclass(frozen=True, slots=True)
class Pass:
    """One send let through a gate: told when the provider answered, it counts in the
    gate's windows from then on (see Window.next_free)."""

    sends: tuple[_Send, ...]
    clock: Callable[[], float]

    def answered(self) -> None:
        now = self.clock()
        for send in self.sends:
            send.at = max(send.at, now)
            send.answered = True


class Gate:
    """The limits of one scope (a channel or a recipient) and its pause.

    Senders queue first come, first served; only the one at the head sleeps,
    until the limits let it pass. A pass is recorded at the moment it happens,
    not when it was planned, so a sender that wakes late never lets the next
    one through too early.
    """

    def __init__(
        self,
        limits: Sequence[RateLimit],
        clock: Clock = time.monotonic,
        *,
        smooth: bool = False,
        answers: bool = False,
    ) -> None:
        self._smooth = smooth
        # With answers, a send counts in the windows from when its Pass is answered.
        self._answers = answers
        self._tune(limits)
        self._schedule = 0.0  # when the next evenly spaced send is due
        self._due = 0.0  # when it may go: a schedule fallen behind catches up gradually
        self._woken = False  # the sender passing now slept until the limits let it,
        self._planned = 0.0  # until then
        self._clock = clock
        self._paused_until = 0.0
        self._queue: deque[asyncio.Future[None]] = deque()

    def _tune(self, limits: Sequence[RateLimit]) -> None:
        self.limits = tuple(limits)
        self._windows = [Window(limit) for limit in limits]
        # The shortest spacing the limits allow on average.
        self._pace = min((w.span / w.size for w in self._windows), default=0.0)
        # Smooth: sends spaced evenly at that pace. A burst of the whole count at
        # once goes out over many milliseconds, and its spread could make the
        # provider count one too many in some second.
        self._interval = self._pace if self._smooth else 0.0
        # A sender woken late for its evenly spaced turn (a busy event loop) keeps
        # the schedule, so such delays do not add up into a lower rate: the next
        # ones catch up at up to twice the pace, never two at once, for a delay of
        # up to a window; a longer one starts afresh.
        self._catch_up = min((w.span for w in self._windows), default=0.0)

    def retune(self, limits: Sequence[RateLimit]) -> None:
        """New limits from now on; the sends already made count against them, and
        senders already waiting keep their turn."""
        unique = {id(send): send for window in self._windows for send in window.sends()}
        sends = sorted(unique.values(), key=lambda send: send.at)
        self._tune(limits)
        for window in self._windows:
            for send in sends[-window.size :]:
                window.keep(send)

    def pause(self, seconds: float) -> None:
        """Nothing passes for `seconds` from now (a longer pause already set is kept)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def delay(self) -> float:
        """About how long a sender arriving now would wait (the queue ahead included)."""
        now = self._clock()
        return self._next_free(now) - now + len(self._queue) * self._pace

    async def acquire(self, deadline: float) -> Pass | None:
        """Wait for a pass; None, with nothing taken, if it cannot come by `deadline`."""
        if self._clock() + self.delay() > deadline:
            return None
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            if self._queue[0] is not turn:
                await turn
            return await self._pass(deadline)
        finally:
            self._leave(turn)

    async def _pass(self, deadline: float) -> Pass | None:
        if not await self.ready(deadline):
            return None
        return self.take()

    async def ready(self, deadline: float) -> bool:
        """Wait until the limits would let a send pass, without taking it; False if that
        is after `deadline`. For a scope with one sender at a time (a chat), together
        with `take`: the pass is then recorded when the send really goes."""
        self._woken = False
        while True:
            now = self._clock()
            at = self._next_free(now)
            if at > deadline:
                return False
            if at <= now:
                return True
            # Re-checked on waking: a pause may have come in meanwhile.
            self._planned = at
            await asyncio.sleep(at - now)
            self._woken = True

    def take(self) -> Pass:
        now = self._clock()
        # A sender that found the gate free: it was idle, however briefly. Its send
        # reaches the provider later than those that follow: the loop is busy
        # starting the senders that came with it, and the connection may be cold
        # (up to 110 ms measured beside a CPU hog, when the others take 2-20 ms).
        # Counted as sent IDLE_GRACE later, the window that follows keeps that much
        # more room (with the margin, 120 ms); a channel that never idles loses nothing.
        idle = not self._woken
        grace = IDLE_GRACE if idle and self._interval > 0 else 0.0
        send = _Send(now + grace, answered=not self._answers)
        for window in self._windows:
            window.keep(send)
        behind = now - self._schedule
        if idle or self._planned != self._due or not 0 <= behind <= self._catch_up:
            # After an idle, a wait for a window or a pause, or a long stall: the
            # schedule starts afresh at this send, evenly paced, never a burst.
            self._schedule = now
        self._schedule += self._interval
        self._due = max(self._schedule, now + self._interval / 2)
        self._woken = False
        return Pass((send,), self._clock)

    def _leave(self, turn: asyncio.Future[None]) -> None:
        was_head = self._queue[0] is turn
        self._queue.remove(turn)
        if was_head and self._queue and not self._queue[0].done():
            self._queue[0].set_result(None)

    def _next_free(self, now: float) -> float:
        return max(now, self._due, self._paused_until, *(w.next_free(now) for w in self._windows))

    def idle(self) -> bool:
        now = self._clock()
        return (
            not self._queue
            and self._paused_until <= now
            and all(w.idle(now) for w in self._windows)
        )


def configured_limits(config: RateLimitConfig | None) -> list[RateLimit]:
    """A broker's `rate_limits.<provider>` table as limits (both apply when both are set)."""
    if config is None:
        return []
    limits = []
    if config.messages_per_second is not None:
        limits.append(RateLimit(config.messages_per_second, 1.0))
    if config.messages_per_minute is not None:
        limits.append(RateLimit(config.messages_per_minute, 60.0))
    return limits


class Gates:
    """Every gate of the process: one per channel, one per recipient while it is busy."""

    def __init__(self, clock: Clock = time.monotonic, *, answers: bool = False) -> None:
        self._clock = clock
        self._answers = answers
        self._channels: dict[tuple[str, str], Gate] = {}
        self._recipients: dict[tuple[str, str, str], Gate] = {}

    def channel(self, key: tuple[str, str], limits: Callable[[], Sequence[RateLimit]]) -> Gate:
        """The channel's gate, following its limits as they change (its share of them,
        when several processes send on it)."""
        wanted = tuple(limits())
        gate = self._channels.get(key)
        if gate is None:
            gate = self._channels[key] = Gate(
                wanted, self._clock, smooth=True, answers=self._answers
            )
        elif gate.limits != wanted:
            gate.retune(wanted)
        return gate

    def recipient(
        self, key: tuple[str, str, str], limits: Callable[[], Sequence[RateLimit]]
    ) -> Gate:
        gate = self._recipients.get(key)
        if gate is None:
            gate = self._recipients[key] = Gate(limits(), self._clock, answers=self._answers)
        return gate

    def paused_channels(self) -> dict[tuple[str, str], float]:
        return {key: gate.paused_for() for key, gate in self._channels.items() if gate.paused_for()}

    def prune(self) -> None:
        """Forget recipients whose windows are all past: memory follows the busy chats only."""
        for key in [k for k, gate in self._recipients.items() if gate.idle()]:
            del self._recipients[key]
