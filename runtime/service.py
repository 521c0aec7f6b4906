"""The running service: database, channels and background workers, opened and closed together."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.registry import Registry
from leadline.config.brokers import BrokersFile
from leadline.config.settings import Settings
from leadline.runtime.channels import Channels, ChannelState
from leadline.runtime.crm_sender import CrmSender
from leadline.runtime.dispatcher import DeliveryOptions, Dispatcher
from leadline.runtime.inbox import ChannelInbox
from leadline.runtime.logs import Redactor
from leadline.runtime.owned import OwnedRunner, own_forever
from leadline.runtime.pipeline import InboundPipeline
from leadline.runtime.profiles import ProfileFinder
from leadline.runtime.receipts import ReadReceipts
from leadline.runtime.replies import ReplyWorker
from leadline.runtime.retry import RetryPolicy
from leadline.runtime.scheduler import OpeningScheduler
from leadline.runtime.sending import Outgoing, queue_message
from leadline.runtime.shares import SendShares
from leadline.runtime.supervisor import supervise
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory, safe_url
from leadline.storage.migrate import upgrade
from leadline.storage.ownership import Ownership, ownership_for
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)


@dataclass
class Service:
    settings: Settings
    brokers: BrokersFile
    registry: Registry
    redactor: Redactor
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    channels: Channels
    pipeline: InboundPipeline
    replies: ReplyWorker
    dispatcher: Dispatcher
    scheduler: OpeningScheduler
    ownership: Ownership
    shares: SendShares
    clock: Callable[[], datetime] = utcnow
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _inboxes: dict[tuple[str, str], ChannelInbox] = field(default_factory=dict)

    def inbox(self, broker_id: str, provider: str) -> ChannelInbox:
        key = (broker_id, provider)
        if key not in self._inboxes:
            channel = self.channels.get(broker_id, provider)
            assert channel is not None
            senders = functools.partial(self.shares.of, key)
            self._inboxes[key] = ChannelInbox(self.pipeline, self.sessions, channel, senders)
        return self._inboxes[key]

    async def queue(self, message: Outgoing) -> int:
        """Queue a message for a lead (see `queue_message`) and wake the dispatcher."""
        async with self.sessions() as session, session.begin():
            message_id = await queue_message(session, self.brokers.brokers, message, self.clock())
        self.dispatcher.wake()
        return message_id

    async def stop(self) -> None:
        """Stop taking work, finish what was taken, then close every channel.

        Pollers stop first; queued deliveries are stored; the workers stop (sends
        under way finish); then the channels close. Every step is bounded: a step
        that hangs is logged and left behind, so shutdown always ends. Safe to
        call twice.
        """
        self.scheduler.stop()
        tasks, self._tasks = self._tasks, []
        workers = [t for t in tasks if t.get_name() in WORKERS]
        await _cancel([t for t in tasks if t not in workers])
        await _bounded(self.pipeline.stop(), "storing queued deliveries")
        self.replies.stop()
        self.dispatcher.stop()
        await _finish(workers)
        await _bounded(self.channels.close(), "closing the channels")
        await _bounded(self.ownership.close(), "handing over the pollers")

    async def close(self) -> None:
        await self.stop()
        await self.engine.dispose()


# Where the aiohttp application keeps the running service.
SERVICE = web.AppKey("service", Service)

WORKERS = frozenset({"reply-worker", "dispatcher"})


STEP_SECONDS = 15.0


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=STEP_SECONDS)
    for task in stuck:
        log.warning("shutdown: task %s did not stop in %.0f s", task.get_name(), STEP_SECONDS)


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    """Let tasks that were asked to stop end on their own, then cancel the late ones."""
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=STEP_SECONDS)
        await _cancel(list(late))


async def _bounded(step: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await asyncio.wait_for(step, STEP_SECONDS)
    except TimeoutError:
        log.warning("shutdown: %s took over %.0f s; going on", what, STEP_SECONDS)


def delivery_options(settings: Settings) -> DeliveryOptions:
    return DeliveryOptions(
        lease=timedelta(seconds=settings.send_lease_seconds),
        policy=RetryPolicy(
            max_attempts=settings.send_max_attempts,
            max_age=timedelta(hours=settings.send_max_age_hours),
        ),
    )


async def open_service(
    settings: Settings,
    brokers: BrokersFile,
    registry: Registry,
    redactor: Redactor,
    clock: Callable[[], datetime] = utcnow,
) -> Service:
    """Migrate the database, record the brokers, start every channel and the workers."""
    engine = make_engine(settings.database_url)
    try:
        log.info("database %s", safe_url(settings.database_url))
        await upgrade(engine)
        sessions = make_session_factory(engine)
        async with sessions() as session, session.begin():
            await upsert_brokers(
                session,
                (BrokerRecord(b.id, b.name, b.timezone) for b in brokers.brokers.values()),
            )
    except BaseException:
        await engine.dispose()
        raise
    public_url = str(settings.public_url).rstrip("/") if settings.public_url else None
    channels = Channels.build(brokers, registry, public_url)
    ownership = ownership_for(engine)
    shares = SendShares(
        ownership,
        [c.key for c in channels if c.adapter],
        settings.cluster_check_seconds,
        is_up=lambda key: channels.up(*key) is not None,
    )
    crm = CrmSender(sessions, brokers.brokers, clock)
    dispatcher = Dispatcher(
        sessions,
        channels,
        clock=clock,
        options=delivery_options(settings),
        events_for=crm.brokers,
        on_events=crm.wake,
        shares=shares.of,
    )
    receipts = ReadReceipts(channels)
    profiles = ProfileFinder(sessions, channels, clock)
    replies = ReplyWorker(
        sessions,
        brokers.brokers,
        on_queued=dispatcher.wake,
        on_handled=receipts.handled,
        clock=clock,
        introduce=profiles.introduce if profiles.capable() else None,
    )
    scheduler = OpeningScheduler(brokers.brokers, dispatcher.wake, clock)

    def stored() -> None:
        replies.wake()
        crm.wake()
        profiles.wake()

    pipeline = InboundPipeline(sessions, on_stored=stored, events_for=crm.brokers)
    service = Service(
        settings,
        brokers,
        registry,
        redactor,
        engine,
        sessions,
        channels,
        pipeline,
        replies,
        dispatcher,
        scheduler,
        ownership,
        shares,
        clock,
    )
    pipeline.start()
    await channels.start()
    await shares.join()
    owner = OwnedRunner(service.ownership, settings.cluster_check_seconds)
    service._tasks = [
        asyncio.create_task(own_forever(owner, "scheduler", scheduler.run), name="scheduler"),
        asyncio.create_task(shares.run(), name="send-shares"),
        asyncio.create_task(replies.run(), name="reply-worker"),
        asyncio.create_task(dispatcher.run(), name="dispatcher"),
        asyncio.create_task(receipts.run(), name="read-receipts"),
        asyncio.create_task(crm.run(), name="crm-events"),
        asyncio.create_task(profiles.run(), name="lead-profiles"),
    ]
    service._tasks.extend(
        asyncio.create_task(
            supervise(c, service.inbox(*c.key), owner=owner), name=f"channel {c.key}"
        )
        for c in channels
        if c.adapter is not None and (c.state != ChannelState.UP or c.adapter.polls)
    )
    return service
