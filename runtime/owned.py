"""Running a one-at-a-time job (a poller) only while this process owns it.

Every process of a cluster starts every channel, so each can send; only the
owner of a poller polls (storage/ownership.py). The others stand by and try
again every few seconds, so when the owner dies, one of them takes over and
fetches what the dead one had not confirmed. The owner checks that it still owns
the poller just as often, and stops polling at once when it does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

from leadline.runtime.stopping import raise_if_cancelling
from leadline.storage.ownership import Ownership

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class OwnedRunner:
    ownership: Ownership
    check_seconds: float = CHECK_SECONDS

    async def run(
        self, name: str, work: Callable[[], Awaitable[None]], standby: Callable[[bool], None]
    ) -> bool:
        """Wait until this process owns `name`, then run `work` while it does.

        True when `work` returned by itself (its exception propagates); False when
        ownership was lost and `work` was cancelled. `standby(True)` is called while
        another process owns it, `standby(False)` once this one does.
        """
        await self._take(name, standby)
        try:
            return await self._while_owned(name, work)
        finally:
            with suppress(Exception):
                await self.ownership.release(name)

    async def _take(self, name: str, standby: Callable[[bool], None]) -> None:
        waiting = False
        while True:
            try:
                if await self.ownership.try_take(name):
                    standby(False)
                    return
            except Exception as exc:
                log.warning("%s: cannot tell who owns it (%s)", name, exc.__class__.__name__)
                raise_if_cancelling()
            if not waiting:
                log.info("%s: another process owns it; standing by", name)
                standby(True)
                waiting = True
            await asyncio.sleep(self.check_seconds)

    async def _while_owned(self, name: str, work: Callable[[], Awaitable[None]]) -> bool:
        task = asyncio.ensure_future(work())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.check_seconds)
                if done:
                    task.result()
                    return True
                if not await self.ownership.holds(name):
                    log.warning("%s: no longer owned by this process; stopping", name)
                    return False
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})  # unlike `await task`, keeps our own cancel


async def own_forever(owner: OwnedRunner, name: str, work: Callable[[], Awaitable[None]]) -> None:
    """Until cancelled: run `work` whenever this process owns `name` (a job that runs
    for as long as it is let, such as the scheduler)."""
    while True:
        try:
            await owner.run(name, work, lambda _: None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again", name)
            raise_if_cancelling()
        await asyncio.sleep(owner.check_seconds)
