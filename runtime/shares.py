"""Each process's share of a channel's rate limit, when several send on it.

A provider counts a channel's sends from every process together. Each process
joins a group per channel while that channel is up in it (storage/ownership.py)
and recounts the groups every few seconds; the dispatcher divides the channel's
limits by the count. A process that joins, dies or loses the channel shifts the
shares at the next count.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from leadline.runtime.stopping import raise_if_cancelling
from leadline.storage.ownership import Ownership

log = logging.getLogger(__name__)

ChannelKey = tuple[str, str]


def sender_group(channel: ChannelKey) -> str:
    """The group of the processes sending on a channel (`leadline status` counts it too)."""
    return f"sender {channel[0]}/{channel[1]}"


class SendShares:
    def __init__(
        self,
        ownership: Ownership,
        channels: Iterable[ChannelKey],
        check_seconds: float,
        is_up: Callable[[ChannelKey], bool] = lambda _: True,
    ) -> None:
        self._ownership = ownership
        self._groups = {key: sender_group(key) for key in channels}
        self._check_seconds = check_seconds
        self._is_up = is_up
        self._joined: set[ChannelKey] = set()
        self._counts: dict[ChannelKey, int] = {}

    def of(self, channel: ChannelKey) -> int:
        """How many processes send on this channel, this one included."""
        return self._counts.get(channel, 1)

    async def join(self) -> None:
        """Count this process in where its channels are up, then count everyone
        (before the first send)."""
        try:
            await self.recount()
        except Exception as exc:  # keep the last count; the next try may do better
            log.warning("cannot count the processes sending here: %s", exc.__class__.__name__)
            raise_if_cancelling()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._check_seconds)
            await self.join()

    async def recount(self) -> None:
        """Join the groups of the channels up here, leave the others, count them all."""
        for key, group in self._groups.items():
            up = self._is_up(key)
            if up and key not in self._joined:
                await self._ownership.join(group)
                self._joined.add(key)
            elif not up and key in self._joined:
                await self._ownership.leave(group)
                self._joined.discard(key)
        counts = await self._ownership.members(list(self._groups.values()))
        for key, group in self._groups.items():
            n = max(1, counts.get(group, 1))  # this process, at least, sends on it
            if n != self.of(key):
                log.info("broker %s: %s sends shared by %d processes", *key, n)
            self._counts[key] = n
