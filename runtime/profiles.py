"""Naming the leads whose provider's webhooks carry no name (Messenger, Instagram).

After a delivery is stored, this worker walks the nameless leads met on channels
whose adapter can read profiles (`capabilities.profiles`), asks each profile once,
and names the lead (storage/profiles.py). It never holds up ingestion: a profile
arrives a moment after the lead's first message. A provider with no profile to
give is recorded and not asked again; one that could not be asked now (throttled,
unreachable) is asked again at a later round. At start it looks back a week, so
leads met while the process was down are named too. The reply worker waits a
moment for a round (`introduce`) before it answers, so a welcome can greet the
lead by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import Adapter, AdapterError, Profile
from leadline.runtime.channels import Channels
from leadline.runtime.stopping import raise_if_cancelling
from leadline.storage.profiles import Nameless, name_lead, nameless, no_profile
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)

LOOK_BACK = timedelta(days=7)
BATCH = 100
IDLE_SECONDS = 60.0  # a round this often anyway: retries of profiles not read before
PACE_SECONDS = 0.2  # between two profile reads: a few per second is plenty


class ProfileFinder:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Channels,
        clock: Callable[[], datetime] = utcnow,
        pace: float = PACE_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._channels = channels
        self._clock = clock
        self._pace = pace
        self._wake = asyncio.Event()
        self._after = 0  # leads up to this id were asked (or are waiting to be again)
        self._again: dict[tuple[int, str], Nameless] = {}  # could not be asked yet
        self._rounds = 0  # rounds finished
        self._in_round = False
        self._round_done = asyncio.Condition()

    def wake(self) -> None:
        self._wake.set()

    async def introduce(self, channels: Collection[tuple[str, str]]) -> None:
        """Return once a round that began after this call has ended, if any of these
        (broker, provider) channels reads profiles: messages stored on them by now
        then have their leads named, when their profiles could be read. The caller
        bounds the wait."""
        if not set(channels) & self.capable():
            return
        target = self._rounds + (2 if self._in_round else 1)
        self.wake()
        async with self._round_done:
            await self._round_done.wait_for(lambda: self._rounds >= target)

    async def run(self) -> None:
        while True:
            self._wake.clear()
            self._in_round = True
            try:
                await self.round()
            except Exception:  # the database, most likely: the next round tries again
                log.exception("lead profiles: a round failed")
            finally:
                # Together, with no await between: `introduce` reads both.
                self._rounds += 1
                self._in_round = False
            async with self._round_done:
                self._round_done.notify_all()
            raise_if_cancelling()  # a read may have turned a cancel into an error
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), IDLE_SECONDS)

    async def round(self) -> None:
        """Ask the profiles of the nameless leads met since the last round, and of
        those that could not be asked before."""
        capable = self.capable()
        while capable:
            async with self._sessions() as session:
                since = self._clock() - LOOK_BACK
                found = await nameless(session, capable, since, self._after, BATCH)
            for who in found:
                self._again[(who.lead_id, who.provider)] = who
            if not found:
                break
            self._after = max(who.lead_id for who in found)
        troubled: set[tuple[str, str]] = set()  # channels that failed a read this round
        for key, who in list(self._again.items()):
            channel = (who.broker_id, who.provider)
            if channel in troubled:
                continue
            if await self._ask(who):
                del self._again[key]
            else:
                troubled.add(channel)

    def capable(self) -> set[tuple[str, str]]:
        """The (broker, provider) channels whose leads are named from profiles."""
        return {
            channel.key
            for channel in self._channels
            if channel.adapter is not None
            and channel.adapter.capabilities.profiles
            and channel.broker.features.profile_lookup
        }

    async def _ask(self, who: Nameless) -> bool:
        """Read one profile and record what it said; False to ask again later."""
        adapter = self._channels.up(who.broker_id, who.provider)
        if adapter is None:
            return False
        profile = await _read(adapter, who)
        if profile is False:
            return False
        async with self._sessions() as session, session.begin():
            if profile is None:
                await no_profile(session, who)
            elif await name_lead(session, who, profile.name, profile.username):
                log.info("broker %s: lead %d named from its %s profile", *_where(who))
        await asyncio.sleep(self._pace)
        return True


async def _read(adapter: Adapter, who: Nameless) -> Profile | bool | None:
    """The profile, None for none to give, False when it could not be read now."""
    try:
        return await adapter.profile(who.channel_user_id)
    except AdapterError as exc:
        log.info("broker %s: lead %d: %s profile not read: %s", *_where(who), exc)
    except Exception:
        log.exception("broker %s: lead %d: %s profile not read", *_where(who))
    return False


def _where(who: Nameless) -> tuple[str, int, str]:
    return who.broker_id, who.lead_id, who.provider
