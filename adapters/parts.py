"""Sending one message as several provider calls, without repeating a part on a retry.

A long text or a text with media goes out as several calls (WhatsApp, Messenger,
Instagram). When a later call fails and the dispatcher retries the message, the
parts that already went must not go again: `PartSender` remembers, per message,
the ids the provider gave to the parts sent, and a retry starts after them. The
memory is the adapter's own (per process): a retry after a crash or on another
process sends the message whole again, inside the engine's one duplicate window.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from leadline.adapters.base import PermanentSendError, RetryableSendError, SendError, SendResult

Part = TypeVar("Part")


class PartSender:
    def __init__(self, budget_seconds: float, capacity: int = 10_000) -> None:
        # All the calls of one message together must end well within the outbox lease
        # (90 s by default), or a second sender could take the row meanwhile.
        self._budget = budget_seconds
        self._capacity = capacity
        self._sent: collections.OrderedDict[str, list[str]] = collections.OrderedDict()

    async def send(
        self, key: str, parts: Sequence[Part], call: Callable[[Part], Awaitable[str]]
    ) -> list[str]:
        """Send the parts not yet sent for `key`, in order; returns every part's id.

        `key` must name the message and how it was cut (the same row cut the same
        way): a changed plan starts over.
        """
        sent = self._sent.pop(key, [])
        try:
            async with asyncio.timeout(self._budget):
                for part in parts[len(sent) :]:
                    sent.append(await call(part))
        except TimeoutError:
            self._remember(key, sent)
            raise RetryableSendError(
                "the provider is too slow: send timed out", code="timeout"
            ) from None
        except SendError as exc:
            if not isinstance(exc, PermanentSendError):
                self._remember(key, sent)
            raise
        return sent

    def _remember(self, key: str, sent: list[str]) -> None:
        if not sent:
            return
        self._sent[key] = sent
        while len(self._sent) > self._capacity:
            self._sent.popitem(last=False)


def sent_in_parts(sent: Sequence[str], metadata: Mapping[str, Any] | None = None) -> SendResult:
    """The result of a message that went as these calls (their ids, in order): the last
    id is the message's, and every id is named when there were several, so echoes and
    status reports of any part find the message."""
    if len(sent) == 1:
        return SendResult(sent[0], metadata=dict(metadata or {}))
    return SendResult(
        sent[-1], metadata={**(metadata or {}), "parts": list(sent)}, parts=tuple(sent)
    )
