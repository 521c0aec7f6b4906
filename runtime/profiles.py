"""Naming the leads whose provider's webhooks carry no name (Messenger, Instagram).

After a delivery is stored, this worker walks the nameless leads met on channels
whose adapter can read profiles (`capabilities.profiles`), asks each profile once,
and names the lead (storage/profiles.py). It never holds up ingestion: a profile
arrives a moment after the lead's first message. A provider with no profile to
give is recorded and not asked again; one that could not be asked now (throttled,
unreachable) is asked again at a later round. At start it looks back a week, so
leads met while the process was down are named too.

The reply worker, before it answers, asks for the leads it is about to answer
(`introduce`): their profiles are read at once, beside the round's, and a read
already under way for a lead is shared rather than repeated. So a lead's welcome
waits for its own profile only, never behind another lead's slow one.
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
PACE_SECONDS = 0.2  # between two profile reads of a round: a few per second is plenty
READS_AT_ONCE = 4  # profile reads under way at once, so a hanging one stops no other

Key = tuple[int, str]  # (lead id, provider)


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
        self._again: dict[Key, Nameless] = {}  # could not be asked yet
        self._reading: dict[Key, asyncio.Task[bool]] = {}  # reads under way, shared
        self._reads = asyncio.Semaphore(READS_AT_ONCE)
        self._stopped = False

    def wake(self) -> None:
        self._wake.set()

    async def introduce(self, leads: Collection[tuple[int, str, str]]) -> None:
        """Read now the profiles of these (lead id, broker, provider) leads that are still
        nameless on a channel that reads profiles; return once each read has ended, so
        a lead whose profile answered is named. The caller bounds the wait: a read that
        outlasts it goes on, and names the lead when it answers."""
        capable = self.capable()
        lead_ids = {lead for lead, broker, provider in leads if (broker, provider) in capable}
        if not lead_ids or self._stopped:
            return
        async with self._sessions() as session:
            found = await nameless(session, capable, self._since(), 0, None, leads=lead_ids)
        if found:
            # asyncio.wait: a caller's timeout cancels this wait, never the reads.
            await asyncio.wait([self._reading_of(who) for who in found])

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    await self.round()
                except Exception:  # the database, most likely: the next round tries again
                    log.exception("lead profiles: a round failed")
                raise_if_cancelling()  # a read may have turned a cancel into an error
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_SECONDS)
        finally:
            self._stopped = True
            await self._cancel_reads()

    async def round(self) -> None:
        """Ask the profiles of the nameless leads met since the last round, and of
        those that could not be asked before."""
        capable = self.capable()
        while capable:
            async with self._sessions() as session:
                found = await nameless(session, capable, self._since(), self._after, BATCH)
            for who in found:
                self._again[(who.lead_id, who.provider)] = who
            if not found:
                break
            self._after = max(who.lead_id for who in found)
        troubled: set[tuple[str, str]] = set()  # channels that failed a read this round
        for key, who in list(self._again.items()):
            channel = (who.broker_id, who.provider)
            if channel in troubled or key not in self._again:  # read meanwhile for a reply
                continue
            if await self._reading_of(who):
                await asyncio.sleep(self._pace)
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

    def _since(self) -> datetime:
        return self._clock() - LOOK_BACK

    def _reading_of(self, who: Nameless) -> asyncio.Task[bool]:
        """The read of this lead's profile: the one under way, or a new one."""
        key = (who.lead_id, who.provider)
        task = self._reading.get(key)
        if task is None:
            task = asyncio.create_task(self._ask(who), name=f"profile of lead {who.lead_id}")
            self._reading[key] = task
            task.add_done_callback(lambda _: self._reading.pop(key, None))
        return task

    async def _ask(self, who: Nameless) -> bool:
        """Read one profile and record what it said; False to ask again later."""
        key = (who.lead_id, who.provider)
        try:
            asked = await self._read_and_record(who)
        except Exception:  # the database: asked again at a later round
            log.exception("broker %s: lead %d: %s profile not recorded", *_where(who))
            asked = False
        if asked:
            self._again.pop(key, None)
        else:
            self._again[key] = who
        return asked

    async def _read_and_record(self, who: Nameless) -> bool:
        # Checked again: a read that ended just before this one began (another
        # caller's) may have named the lead already.
        async with self._sessions() as session:
            found = await nameless(
                session,
                [(who.broker_id, who.provider)],
                self._since(),
                0,
                None,
                leads=[who.lead_id],
            )
        if who not in found:
            return True
        adapter = self._channels.up(who.broker_id, who.provider)
        if adapter is None:
            return False
        async with self._reads:
            profile = await _read(adapter, who)
        if profile is False:
            return False
        async with self._sessions() as session, session.begin():
            if profile is None:
                await no_profile(session, who)
            elif await name_lead(session, who, profile.name, profile.username):
                log.info("broker %s: lead %d named from its %s profile", *_where(who))
        return True

    async def _cancel_reads(self) -> None:
        reads = list(self._reading.values())
        for task in reads:
            task.cancel()
        if reads:
            await asyncio.wait(reads)


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
