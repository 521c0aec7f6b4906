"""Group commit: concurrent deliveries share transactions, and one bad delivery fails alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import InboundMessage, MessageStatus, StatusUpdate
from leadline.runtime.batching import BUSY_WITHIN_SECONDS, GATHER_SECONDS
from leadline.runtime.pipeline import InboundPipeline, PipelineStopped
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from tests.helpers import count, rows


@pytest.fixture
async def pipeline(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[InboundPipeline]:
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo", "UTC")])
    pipeline = InboundPipeline(sessions, on_stored=lambda: None)
    pipeline.start()
    yield pipeline
    await pipeline.stop()


def message(i: int, user: str | None = None) -> InboundMessage:
    return InboundMessage(f"m{i}", user or f"u{i % 7}", text=f"#{i}")


def commits(engine: AsyncEngine) -> list[int]:
    seen: list[int] = []
    sa.event.listen(engine.sync_engine, "commit", lambda conn: seen.append(1))
    return seen


async def test_concurrent_deliveries_share_transactions_and_are_each_stored_once(
    pipeline: InboundPipeline, engine: AsyncEngine
):
    seen = commits(engine)
    outcomes = await asyncio.gather(
        *(pipeline.ingest("demo", "signed", [message(i)]) for i in range(200))
    )
    assert all(len(o.stored) == 1 for o in outcomes)
    assert await count(engine, "chat_messages") == 200
    assert await count(engine, "leads") == 7
    assert len(seen) < 100  # batched: far fewer commits than deliveries


async def test_a_duplicate_within_one_batch_is_stored_once(
    pipeline: InboundPipeline, engine: AsyncEngine
):
    outcomes = await asyncio.gather(
        *(pipeline.ingest("demo", "signed", [message(1)]) for _ in range(10))
    )
    assert sum(len(o.stored) for o in outcomes) == 1
    assert sum(o.duplicates for o in outcomes) == 9
    assert await count(engine, "chat_messages") == 1


async def test_a_delivery_the_database_refuses_fails_alone(
    pipeline: InboundPipeline, engine: AsyncEngine
):
    """A broker that is not in the brokers table breaks its foreign key: only its
    delivery fails; the others of the same batch are stored."""
    good = [pipeline.ingest("demo", "signed", [message(i)]) for i in range(20)]
    bad = pipeline.ingest("ghost", "signed", [message(99)])
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert isinstance(results[-1], sa.exc.IntegrityError)
    assert not any(isinstance(r, BaseException) for r in results[:-1])
    stored = await rows(engine, "SELECT broker_id FROM chat_messages")
    assert [r["broker_id"] for r in stored] == ["demo"] * 20


async def test_statuses_and_messages_in_one_batch_are_all_applied(
    pipeline: InboundPipeline, engine: AsyncEngine
):
    await asyncio.gather(
        pipeline.ingest("demo", "signed", [message(1)]),
        pipeline.ingest("demo", "signed", [StatusUpdate("unknown-yet", MessageStatus.READ)]),
    )
    assert await count(engine, "chat_messages") == 1
    assert await count(engine, "early_statuses") == 1


async def test_after_stop_deliveries_are_refused_and_queued_ones_were_stored(
    pipeline: InboundPipeline, engine: AsyncEngine
):
    pending = [asyncio.ensure_future(pipeline.ingest("demo", "s", [message(i)])) for i in range(50)]
    await asyncio.sleep(0)
    await pipeline.stop()
    await asyncio.gather(*pending)
    assert await count(engine, "chat_messages") == 50
    with pytest.raises(PipelineStopped):
        await pipeline.ingest("demo", "s", [message(51)])


async def test_the_writer_waits_for_more_only_while_commits_follow_each_other(
    pipeline: InboundPipeline, engine: AsyncEngine
):
    assert pipeline._writer._gathering() == 0  # nothing committed yet: one loop turn only
    await pipeline.ingest("demo", "signed", [message(0)])
    assert pipeline._writer._gathering() == GATHER_SECONDS  # a commit just now: a stream
    pending = []
    for i in range(1, 41):  # one delivery each millisecond: every one stored
        pending.append(asyncio.ensure_future(pipeline.ingest("demo", "signed", [message(i)])))
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)
    assert await count(engine, "chat_messages") == 41
    await asyncio.sleep(BUSY_WITHIN_SECONDS)
    assert pipeline._writer._gathering() == 0  # a quiet spell: a lone delivery is not held back
