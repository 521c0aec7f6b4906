"""A lead's CRM events from two writers at once keep their order (PostgreSQL's concurrency:
SQLite runs one transaction at a time, so it has no such race)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.storage import crm_events
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity
from leadline.storage.types import utcnow
from tests.conftest import _truncate


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    await _truncate(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    await engine.dispose()


@pytest.mark.postgres
async def test_a_leads_later_event_waits_for_an_earlier_one_still_uncommitted(
    engine: AsyncEngine,
) -> None:
    sessions = make_session_factory(engine)
    ana = ChannelIdentity("demo", "webchat", "u1")
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo Realty", "UTC")])

    async def store(message_id: str) -> None:
        async with sessions() as session, session.begin():
            new = await insert_messages(session, [IncomingRow(ana, message_id, "hola")])
            await crm_events.emit(session, list(new.values()), crm_events.MESSAGE, {"demo"})

    await store("m0")  # the lead exists before the race
    first = sessions()
    await first.begin()  # a writer stored m1 and its event, not yet committed
    new = await insert_messages(first, [IncomingRow(ana, "m1", "hola")])
    await crm_events.emit(first, list(new.values()), crm_events.MESSAGE, {"demo"})
    second = asyncio.create_task(store("m2"))  # another writer, a moment later
    await asyncio.sleep(0.3)
    assert not second.done(), "the later event did not wait for the earlier one"
    await first.commit()
    await first.close()
    await asyncio.wait_for(second, 10)

    sent = []
    for _ in range(3):  # as the sender goes: each time the lead's head, then delivered
        async with sessions() as session, session.begin():
            due = await crm_events.take_due(session, utcnow(), utcnow() + timedelta(minutes=1), 9)
            sent += [e.payload["message"]["channel_message_id"] for e in due]
            await crm_events.delivered(session, [e.id for e in due])
    assert sent == ["m0", "m1", "m2"]
