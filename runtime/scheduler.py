"""Waking the dispatcher at each broker's openings (APScheduler 3, jobs in memory).

What must survive a restart lives in the database: an open reply is an outbound
row with `send_after` = the opening, and the dispatcher finds it due by itself.
The scheduler only makes it go at the minute of the opening: its jobs are made
anew from the calendars at every start. A cron trigger per weekly opening, in the
broker's time zone (APScheduler follows daylight-saving changes), and one dated
job for the next opening, which also catches the end of a holiday or a closure.
With several processes on one database, one of them runs the jobs at a time
(`run`, under runtime/owned.py, as DESIGN.md asks); the others' dispatchers find
what became due at their next look, within seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from leadline.config.brokers import BrokerConfig
from leadline.config.calendar import WEEKDAYS
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)


def next_opening(broker: BrokerConfig, now: datetime) -> datetime | None:
    """The next moment the broker opens after `now` (not `now` itself while open)."""
    calendar = broker.calendar
    if calendar.is_open(now):
        closes = calendar.next_close(now)
        return calendar.next_open(closes) if closes is not None else None
    return calendar.next_open(now)


def weekly_triggers(broker: BrokerConfig) -> list[CronTrigger]:
    """One cron trigger per weekly opening, in the broker's time zone."""
    hours = broker.business_hours
    if hours is None or hours.always_open:
        return []
    zone = broker.calendar.zone
    triggers = []
    for weekday, day in enumerate(WEEKDAYS):
        for span in hours.spans(weekday):
            hour, minute = divmod(span.start_minute, 60)
            triggers.append(CronTrigger(day_of_week=day, hour=hour, minute=minute, timezone=zone))
    return triggers


class OpeningScheduler:
    def __init__(
        self,
        brokers: Mapping[str, BrokerConfig],
        wake: Callable[[], None],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._brokers = {b.id: b for b in brokers.values() if b.business_hours is not None}
        self._wake = wake
        self._clock = clock
        self._scheduler: AsyncIOScheduler | None = None

    def start(self) -> None:
        """Create the jobs from the calendars (needs the running event loop)."""
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        for broker in self._brokers.values():
            for n, trigger in enumerate(weekly_triggers(broker)):
                self._add(f"{broker.id}:weekly:{n}", broker.id, trigger)
            self._plan_next(broker)
        self._scheduler.start()

    async def run(self) -> None:
        """Run the jobs until cancelled: what the process owning the scheduler does."""
        self.start()
        try:
            await asyncio.Event().wait()
        finally:
            self.stop()

    def stop(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)

    def jobs(self) -> list[tuple[str, datetime | None]]:
        """Each job's id and next run, for `/healthz`-like reports and tests."""
        if self._scheduler is None:
            return []
        return [(job.id, job.next_run_time) for job in self._scheduler.get_jobs()]

    def _add(self, job_id: str, broker_id: str, trigger: BaseTrigger) -> None:
        assert self._scheduler is not None
        self._scheduler.add_job(
            self._opened,
            trigger,
            args=[broker_id],
            id=job_id,
            replace_existing=True,
            misfire_grace_time=None,  # late is better than never: a wake is harmless
            coalesce=True,
        )

    def _plan_next(self, broker: BrokerConfig, after: datetime | None = None) -> None:
        opening = next_opening(broker, after or self._clock())
        if opening is not None:
            self._add(f"{broker.id}:next", broker.id, DateTrigger(run_date=opening))

    async def _opened(self, broker_id: str) -> None:
        log.info("broker %s opens: sending what waited for the opening", broker_id)
        self._wake()
        broker = self._brokers.get(broker_id)
        if broker is not None and self._scheduler is not None:
            # It is open now: the next opening is the one after the next closing.
            self._plan_next(broker, self._clock() + timedelta(seconds=1))
