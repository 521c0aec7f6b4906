"""Pacing one kind of call that a provider limits apart from the channel's own rate.

The dispatcher keeps each channel within its rate; some providers limit a kind of
message harder (Messenger and Instagram: audio and video at 10 per second, against
100-300 for text). An adapter paces those calls itself with a `Pacer`.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable


class Pacer:
    """At most `count` calls in any `per_seconds`: a sliding window, waited in order."""

    def __init__(
        self, count: int, per_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._count = count
        self._per = per_seconds
        self._clock = clock
        self._recent: collections.deque[float] = collections.deque()
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return once a call may go; the call counts from then."""
        async with self._lock:
            while True:
                now = self._clock()
                while self._recent and self._recent[0] <= now - self._per:
                    self._recent.popleft()
                if len(self._recent) < self._count:
                    self._recent.append(now)
                    return
                await asyncio.sleep(self._recent[0] + self._per - now)
