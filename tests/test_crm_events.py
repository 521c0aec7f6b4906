"""The CRM event queue on SQLite and PostgreSQL: heads per lead, and what status reports."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage import crm_events
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity
from leadline.storage.types import utcnow


async def stored_events(sessions: async_sessionmaker[AsyncSession], users: list[str]) -> None:
    """One stored message, and its event, per entry of `users` (in that order)."""
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo Realty", "UTC")])
        rows = [
            IncomingRow(ChannelIdentity("demo", "webchat", user), f"m{n}", "hola")
            for n, user in enumerate(users)
        ]
        new = await insert_messages(session, rows)
        await crm_events.emit(session, list(new.values()), crm_events.MESSAGE, {"demo"})


async def test_only_each_leads_oldest_event_is_taken_until_it_is_delivered(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await stored_events(sessions, ["u1", "u1", "u2"])
    lease = utcnow() + timedelta(minutes=5)
    async with sessions() as session, session.begin():
        heads = await crm_events.take_due(session, utcnow(), lease, 10)
    assert [e.payload["message"]["channel_message_id"] for e in heads] == ["m0", "m2"]
    async with sessions() as session, session.begin():
        assert await crm_events.take_due(session, utcnow(), lease, 10) == []  # leased, or waiting
        await crm_events.delivered(session, [heads[0].id])
    async with sessions() as session, session.begin():
        after = await crm_events.take_due(session, utcnow(), lease, 10)
    assert [e.payload["message"]["channel_message_id"] for e in after] == ["m1"]


async def test_status_names_the_error_of_the_oldest_failing_event(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await stored_events(sessions, ["u1", "u2", "u3"])
    later = utcnow() + timedelta(minutes=5)
    async with sessions() as session, session.begin():
        first, second, third = await crm_events.take_due(session, utcnow(), later, 10)
        # the oldest failing error sorts first: it must win over the greatest
        await crm_events.failed(session, second.id, "HTTP 404", later)
        await crm_events.failed(session, third.id, "HTTP 500", later)
        await crm_events.failed(session, first.id, "timed out", later)
        await crm_events.delivered(session, [first.id])
    async with sessions() as session:
        counts = (await crm_events.event_counts(session))["demo"]
    assert (counts.pending, counts.failing, counts.last_error) == (2, 2, "HTTP 404")
