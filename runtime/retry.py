"""How long to wait before retrying a send, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 6
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

    def gives_up(self, attempts: int, created_at: datetime, now: datetime) -> bool:
        return attempts >= self.max_attempts or now - created_at > self.max_age
