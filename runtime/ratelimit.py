"""Send rate limits: sliding windows per channel and per recipient, and pauses.

A window allows at most `count` sends in any span of `per_seconds`: a send
waits until the count-th previous one is a full span old. Unlike a token
bucket refilled at the same rate, it never lets through a burst above the
limit in any span, which is how providers count. The span is stretched by a
small margin so that network jitter never makes the provider see one more.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence

from leadline.adapters.base import RateLimit
from leadline.config.brokers import RateLimitConfig

MARGIN = 0.01
Clock = Callable[[], float]


class Window:
    def __init__(self, limit: RateLimit, margin: float = MARGIN) -> None:
        # 2.5/s becomes 2 per 0.8 s: whole sends, the same average rate.
        self.size = max(1, math.floor(limit.count))
        self.span = limit.per_seconds * self.size / limit.count * (1 + margin)
        self._starts: deque[float] = deque(maxlen=self.size)

    def next_free(self, now: float) -> float:
        if len(self._starts) < self.size:
            return now
        return self._starts[0] + self.span

    def take(self, at: float) -> None:
        self._starts.append(at)

    def idle(self, now: float) -> bool:
        return not self._starts or self._starts[-1] + self.span <= now


class Gate:
    """The limits of one scope (a channel or a recipient) and its pause.

    A sender reserves the earliest slot the limits allow, after every slot
    already reserved, then sleeps until it: first come, first served, and no
    crowd of waiters woken at once.
    """

    def __init__(self, limits: Sequence[RateLimit], clock: Clock = time.monotonic) -> None:
        self._windows = [Window(limit) for limit in limits]
        self._clock = clock
        self._paused_until = 0.0
        self._last = 0.0

    def pause(self, seconds: float) -> None:
        """Nothing passes for `seconds` from now (a longer pause already set is kept)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def delay(self) -> float:
        """How long a sender arriving now would wait."""
        now = self._clock()
        return self._next_slot(now) - now

    async def acquire(self, deadline: float) -> bool:
        """Wait for a slot; False, with nothing waited for, if it is after `deadline`."""
        while True:
            now = self._clock()
            at = self._next_slot(now)
            if at > deadline:
                return False
            for window in self._windows:
                window.take(at)
            self._last = at
            if at > now:
                await asyncio.sleep(at - now)
            if self._paused_until <= self._clock():
                return True
            # A pause came in while we waited: that slot is void, take a later one.

    def _next_slot(self, now: float) -> float:
        return max(now, self._last, self._paused_until, *(w.next_free(now) for w in self._windows))

    def idle(self) -> bool:
        now = self._clock()
        return (
            self._last <= now
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

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._channels: dict[tuple[str, str], Gate] = {}
        self._recipients: dict[tuple[str, str, str], Gate] = {}

    def channel(self, key: tuple[str, str], limits: Callable[[], Sequence[RateLimit]]) -> Gate:
        gate = self._channels.get(key)
        if gate is None:
            gate = self._channels[key] = Gate(limits(), self._clock)
        return gate

    def recipient(
        self, key: tuple[str, str, str], limits: Callable[[], Sequence[RateLimit]]
    ) -> Gate:
        gate = self._recipients.get(key)
        if gate is None:
            gate = self._recipients[key] = Gate(limits(), self._clock)
        return gate

    def paused_channels(self) -> dict[tuple[str, str], float]:
        return {key: gate.paused_for() for key, gate in self._channels.items() if gate.paused_for()}

    def prune(self) -> None:
        """Forget recipients whose windows are all past: memory follows the busy chats only."""
        for key in [k for k, gate in self._recipients.items() if gate.idle()]:
            del self._recipients[key]
