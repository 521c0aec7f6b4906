"""Merging two leads while messages for them are being stored (PostgreSQL's concurrency)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

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


U1 = ChannelIdentity("demo", "webchat", "u1")
U2 = ChannelIdentity("demo", "webchat", "u2")


async def two_leads(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo Realty", "UTC")])
        return await ensure_lead(session, U1), await ensure_lead(session, U2)


async def merged_while(
    sessions: async_sessionmaker[AsyncSession], other: AsyncSession, ana: int, bo: int
) -> None:
    """Merge `bo` into `ana` while `other`'s transaction is open, then let it commit."""

    async def merge() -> object:
        async with sessions() as session, session.begin():
            return await crm.merge_leads(session, "demo", ana, bo)

    merging = asyncio.create_task(merge())
    await asyncio.sleep(0.3)  # the merge is under way, waiting for the other's locks
    await other.commit()
    await other.close()
    assert await asyncio.wait_for(merging, 10) is not None


async def everything_is_anas(engine: AsyncEngine, ana: int) -> None:
    found = await rows(engine, "SELECT lead_id FROM chat_messages")
    assert found and {r["lead_id"] for r in found} == {ana}
    assert [r["id"] for r in await rows(engine, "SELECT id FROM leads")] == [ana]


@pytest.mark.postgres
async def test_a_message_stored_for_a_lead_while_it_is_merged_moves_with_it(
    engine: AsyncEngine,
) -> None:
    sessions = make_session_factory(engine)
    ana, bo = await two_leads(sessions)
    storing = sessions()
    await storing.begin()  # a delivery for u2, stored but not yet committed
    await insert_messages(storing, [IncomingRow(U2, "m1", "hola")])
    await merged_while(sessions, storing, ana, bo)
    await everything_is_anas(engine, ana)


@pytest.mark.postgres
async def test_a_writer_that_locks_a_leads_message_then_names_the_lead_does_not_deadlock(
    engine: AsyncEngine,
) -> None:
    """As the reply worker does: claim a lead's message (a row lock), then store a reply
    naming the lead. Locking the leads first, the merge deadlocked with it."""
    sessions = make_session_factory(engine)
    ana, bo = await two_leads(sessions)
    async with sessions() as session, session.begin():
        await insert_messages(session, [IncomingRow(U2, "m1", "hola")])
    replying = sessions()
    await replying.begin()
    await replying.exec(sa.text("UPDATE chat_messages SET handled_at = now()"))

    async def merge() -> object:
        async with sessions() as session, session.begin():
            return await crm.merge_leads(session, "demo", ana, bo)

    merging = asyncio.create_task(merge())
    await asyncio.sleep(0.3)  # the merge waits for the claimed message
    await insert_messages(replying, [IncomingRow(U2, "m2", "a reply, say")])
    await replying.commit()
    await replying.close()
    assert await asyncio.wait_for(merging, 10) is not None
    await everything_is_anas(engine, ana)
