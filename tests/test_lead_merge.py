"""Merging two leads while messages for them are being stored (PostgreSQL's concurrency)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.storage import crm
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity, ensure_lead
from tests.conftest import _truncate
from tests.helpers import rows


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    """PostgreSQL only: SQLite runs one transaction at a time, so it has no such race."""
    await _truncate(postgres_url)
    engine = make_engine(postgres_url)
    yield engine
    await engine.dispose()


@pytest.mark.postgres
async def test_a_message_stored_for_a_lead_while_it_is_merged_moves_with_it(
    engine: AsyncEngine,
) -> None:
    sessions = make_session_factory(engine)
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo Realty", "UTC")])
        ana = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u1"))
        bo = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u2"))

    storing = sessions()
    await storing.begin()  # a delivery for u2, stored but not yet committed
    await insert_messages(
        storing, [IncomingRow(ChannelIdentity("demo", "webchat", "u2"), "m1", "hola")]
    )

    async def merge() -> object:
        async with sessions() as session, session.begin():
            return await crm.merge_leads(session, "demo", ana, bo)

    merging = asyncio.create_task(merge())
    await asyncio.sleep(0.3)  # the merge is under way, waiting for the delivery's lock
    await storing.commit()
    await storing.close()
    assert await asyncio.wait_for(merging, 10) is not None
    found = await rows(engine, "SELECT lead_id FROM chat_messages")
    assert [r["lead_id"] for r in found] == [ana]
    assert [r["id"] for r in await rows(engine, "SELECT id FROM leads")] == [ana]
