"""Sending events to brokers' CRMs (`[brokers.X.events]`): signed, retried, in order per lead.

Each event is POSTed as JSON to the broker's `url`, with `X-Leadline-Signature:
sha256=<hex HMAC-SHA256 of the raw body with the broker's secret>` and its id in
`X-Leadline-Event`, so a CRM can check it and drop a repeat. A 2xx delivers it;
anything else is retried with exponential backoff and jitter (at most an hour apart),
forever: the lead's later events wait behind it, others go on. Ingestion never waits
for any of this: events are rows, written with what they report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import aiohttp
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.meta import sign  # the same `sha256=<hex HMAC>` Meta sends
from leadline.config.brokers import BrokerConfig
from leadline.runtime.retry import RetryPolicy
from leadline.runtime.stopping import raise_if_cancelling
from leadline.storage import crm_events
from leadline.storage.types import utcnow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Leadline-Signature"
EVENT_HEADER = "X-Leadline-Event"
BATCH = 100
AT_ONCE = 8
LEASE = timedelta(seconds=60)
TIMEOUT = 10.0
IDLE_SECONDS = 5.0
FIRST_RETRY, LAST_RETRY = 2.0, 3600.0


class CrmSender:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        brokers: Mapping[str, BrokerConfig],
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._brokers = {b.id: b for b in brokers.values() if b.events is not None}
        self._clock = clock
        self._wake = asyncio.Event()
        self._retry = RetryPolicy(base_seconds=FIRST_RETRY, cap_seconds=LAST_RETRY)
        self._gate = asyncio.Semaphore(AT_ONCE)

    @property
    def brokers(self) -> frozenset[str]:
        """The brokers whose CRM takes events."""
        return frozenset(self._brokers)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: send what is due, then wait to be woken or for the next poll."""
        if not self._brokers:
            return
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            while True:
                try:
                    sent = await self.send_due(http)
                except Exception:
                    log.exception("CRM events: a round failed; retrying")
                    sent = 0
                raise_if_cancelling()  # a POST may have turned a cancel into an error
                if sent < BATCH:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), IDLE_SECONDS)
                    self._wake.clear()

    async def send_due(self, http: aiohttp.ClientSession) -> int:
        """One round: take the due heads, send them, record how each ended."""
        now = self._clock()
        async with self._sessions() as session, session.begin():
            due = await crm_events.take_due(session, now, now + LEASE, BATCH)
        results = await asyncio.gather(*(self._send(http, event) for event in due))
        async with self._sessions() as session, session.begin():
            await crm_events.delivered(session, [e.id for e, ok in results if ok is None])
            for event, error in results:
                if error is not None:
                    wait = self._retry.delay(event.attempts + 1)  # no giving up: a CRM waits
                    retry_at = self._clock() + timedelta(seconds=wait)
                    await crm_events.failed(session, event.id, error, retry_at)
        return len(due)

    async def _send(
        self, http: aiohttp.ClientSession, event: crm_events.DueEvent
    ) -> tuple[crm_events.DueEvent, str | None]:
        """The event and None once the CRM took it, else why not."""
        broker = self._brokers.get(event.broker_id)
        if broker is None or broker.events is None:
            return event, "the broker takes no events any more"
        # The lead it belongs to now: a merge may have moved it since it was written.
        sent = {"id": event.id, **event.payload, "lead_id": event.lead_id}
        body = json.dumps(sent, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(broker.events.secret.get_secret_value(), body),
            EVENT_HEADER: str(event.id),
        }
        try:
            async with (
                self._gate,
                http.post(str(broker.events.url), data=body, headers=headers) as r,
            ):
                if 200 <= r.status < 300:
                    return event, None
                return event, f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return event, type(exc).__name__
