"""How long to wait before retrying a send, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # With these defaults the last try comes about half an hour after the first:
    # a provider outage of that length loses nothing.
    max_attempts: int = 12
    base_seconds: float = 2.0
    cap_seconds: float = 600.0
    max_age: timedelta = timedelta(hours=24)
    jitter: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds before the next try. A provider's retry_after is honoured exactly;
        otherwise exponential backoff with jitter, so retries do not come in waves."""
        if retry_after is not None:
            return max(0.0, retry_after)
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempts - 1))
        return self.jitter.uniform(ceiling / 2, ceiling)

    def gives_up(
        self, attempts: int, created_at: datetime, now: datetime, *, throttled: bool = False
    ) -> bool:
        """A provider that only asks us to wait (retry_after) is not failing: such tries
        do not count towards `max_attempts`, only towards `max_age`."""
        too_old = now - created_at > self.max_age
        return too_old or (not throttled and attempts >= self.max_attempts)
