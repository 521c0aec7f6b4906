"""The outbox queries on both databases: heads per recipient, leases, and batched outcomes."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.runtime.batching import GroupCommit
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.outbox import (
    Failed,
    Outcome,
    QueuedMessage,
    Released,
    Retry,
    Sent,
    claim_many,
    due_heads,
    enqueue,
    record,
)
from leadline.storage.types import utcnow
from tests.helpers import rows

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def queue(sessions: Sessions):
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo", "UTC")])

    async def put(user: str, text: str, **extra: object) -> int:
        async with sessions() as session, session.begin():
            lead = await ensure_lead(session, ChannelIdentity("demo", "signed", user))
            message = QueuedMessage(lead, "demo", "signed", user, text, **extra)  # type: ignore[arg-type]
            return await enqueue(session, message)

    return put


async def heads(sessions: Sessions, budget: int = 100) -> list[str]:
    async with sessions() as session:
        found = await due_heads(session, utcnow(), {("demo", "signed"): budget})
    return [r.message_text or "" for r in found]


async def test_only_each_recipients_earliest_row_is_due_and_budgets_cap_a_channel(
    sessions: Sessions, queue
):
    for text, user in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("c1", "c")]:
        await queue(user, text)
    await queue("d", "tomorrow", send_after=utcnow() + timedelta(days=1))
    await queue("d", "d-now")  # a never-tried scheduled row does not hold this one up
    assert await heads(sessions) == ["a1", "b1", "c1", "d-now"]
    assert await heads(sessions, budget=2) == ["a1", "b1"]


async def test_a_leased_row_is_neither_due_nor_taken_again_and_holds_its_chat(
    sessions: Sessions, queue
):
    first = await queue("a", "a1")
    await queue("a", "a2")
    now = utcnow()
    async with sessions() as session, session.begin():
        assert await claim_many(session, [first], now, now + timedelta(seconds=60)) == {first}
    async with sessions() as session, session.begin():
        assert await claim_many(session, [first], now, now + timedelta(seconds=60)) == set()
    assert await heads(sessions) == []  # a2 waits behind the row in flight
    later = now + timedelta(seconds=61)  # the sender died: the lease ran out
    async with sessions() as session:
        found = await due_heads(session, later, {("demo", "signed"): 10})
    assert [r.id for r in found] == [first]


async def test_many_outcomes_are_stored_together_and_only_on_rows_still_pending(
    sessions: Sessions, engine: AsyncEngine, queue
):
    ids = [await queue(f"u{i}", f"m{i}") for i in range(7)]
    # One statement per kind of outcome (executemany): this once failed on every batch.
    now = utcnow()
    async with sessions() as session, session.begin():
        await claim_many(session, ids, now, now + timedelta(seconds=60))
    outcomes: list[Outcome] = [
        Sent(ids[0], "p-0"),
        Sent(ids[1], "p-1"),
        Failed(ids[2], "403: blocked"),
        Failed(ids[3], "400: bad"),
        Retry(ids[4], "500: busy", now + timedelta(seconds=5)),
        Retry(ids[5], "429: wait", now + timedelta(seconds=9), {"throttled": 1}),
        Released(ids[6]),  # never tried: the attempt counted when taking it is given back
    ]
    async with sessions() as session, session.begin():
        await record(session, outcomes)
    async with sessions() as session, session.begin():
        await record(session, [Failed(ids[0], "too late")])  # already sent: unchanged
    found = {
        r["id"]: r
        for r in await rows(engine, "SELECT * FROM chat_messages WHERE direction = 'out'")
    }
    statuses = [
        (found[i]["status"], found[i]["channel_message_id"], found[i]["error"]) for i in ids
    ]
    assert statuses == [
        ("sent", "p-0", None),
        ("sent", "p-1", None),
        ("failed", None, "403: blocked"),
        ("failed", None, "400: bad"),
        ("pending", None, "500: busy"),
        ("pending", None, "429: wait"),
        ("pending", None, None),
    ]
    assert all(found[i]["lease_until"] is None for i in ids)
    assert [found[i]["attempts"] for i in ids] == [1, 1, 1, 1, 1, 1, 0]
    assert found[ids[0]]["sent_at"] is not None
    assert "throttled" in str(found[ids[5]]["provider_metadata"])


async def test_group_commit_stores_concurrent_outcomes_in_one_transaction(
    sessions: Sessions, queue
):
    ids = [await queue(f"u{i}", f"m{i}") for i in range(20)]
    batches: list[int] = []

    async def apply(session: AsyncSession, items):
        batches.append(len(items))
        await record(session, items)
        return [None] * len(items)

    writer: GroupCommit[Outcome, None] = GroupCommit(sessions, apply, "test-writer")
    writer.start()
    await asyncio.gather(*(writer.submit(Sent(i, f"p-{i}")) for i in ids))
    await writer.stop()
    assert sum(batches) == 20 and len(batches) <= 2  # not one commit per outcome


async def test_a_head_knows_when_its_recipient_last_wrote_on_that_channel(
    sessions: Sessions, queue
):
    """Messaging windows (WhatsApp, Messenger) count from it; other chats, other
    providers and outbound rows do not count."""
    early, late = utcnow() - timedelta(hours=30), utcnow() - timedelta(hours=2)
    async with sessions() as session, session.begin():
        await insert_messages(
            session,
            [
                IncomingRow(ChannelIdentity("demo", "signed", "a"), "in-1", "hi", created_at=early),
                IncomingRow(ChannelIdentity("demo", "signed", "a"), "in-2", "hey", created_at=late),
                IncomingRow(ChannelIdentity("demo", "webchat", "b"), "in-3", "yo", created_at=late),
            ],
        )
    await queue("a", "to a")
    await queue("b", "to b")  # b wrote, but on another provider
    async with sessions() as session:
        found = {
            r.channel_user_id: r
            for r in await due_heads(session, utcnow(), {("demo", "signed"): 9})
        }
    assert found["a"].last_inbound_at == late
    assert found["a"].last_inbound_at.tzinfo is not None
    assert found["b"].last_inbound_at is None
