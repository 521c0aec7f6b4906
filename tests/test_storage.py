"""The storage layer on SQLite and PostgreSQL: schema names, idempotency, leads, timestamps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import MessageStatus
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory, safe_url
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.messages import (
    StatusChange,
    StatusOutcome,
    apply_status,
    settle_early_statuses,
)
from leadline.storage.migrate import current_revision, head_revision, upgrade
from leadline.storage.models import ChatMessage, EarlyStatus
from leadline.storage.outbox import QueuedMessage, enqueue, mark_sent
from leadline.storage.types import utcnow
from tests.helpers import count, rows

CONTRACT = {
    "brokers": {"id", "name", "timezone", "created_at"},
    "leads": {"id", "broker_id", "name", "phone", "tags", "created_at"},
    "lead_channels": {"lead_id", "broker_id", "provider", "channel_user_id", "channel_username"},
    "chat_messages": {
        "id", "lead_id", "broker_id", "provider", "channel_user_id", "channel_username",
        "channel_message_id", "message_text", "direction", "status", "provider_metadata",
        "attachments", "ai_response_used", "error", "attempts", "send_after", "created_at",
        "updated_at",
    },
}  # fmt: skip


@pytest.fixture
async def broker(sessions: async_sessionmaker[AsyncSession]) -> str:
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo Realty", "UTC")])
    return "demo"


def incoming(message_id: str, user: str = "u1", text: str = "hola") -> IncomingRow:
    return IncomingRow(ChannelIdentity("demo", "webchat", user), message_id, text)


async def insert_one(session: AsyncSession, row: IncomingRow) -> int | None:
    """The new row's id, or None when the message was stored before."""
    new = await insert_messages(session, [row])
    return next(iter(new.values()), None)


async def test_migrations_create_every_table_and_column_of_the_design(engine: AsyncEngine):
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda sync: {
                table: {c["name"] for c in sa.inspect(sync).get_columns(table)}
                for table in CONTRACT
            }
        )
    for table, expected in CONTRACT.items():
        assert expected <= columns[table], f"{table} lacks {expected - columns[table]}"


async def test_design_indexes_exist(engine: AsyncEngine):
    async with engine.connect() as conn:
        indexes = await conn.run_sync(
            lambda sync: (
                [tuple(i["column_names"]) for i in sa.inspect(sync).get_indexes("chat_messages")]
                + [
                    tuple(u["column_names"])
                    for u in sa.inspect(sync).get_unique_constraints("chat_messages")
                ]
            )
        )
    for columns in (
        ("lead_id", "provider"),
        ("broker_id", "provider"),
        ("provider", "channel_user_id"),
        ("broker_id", "provider", "direction", "channel_message_id"),
    ):
        assert columns in indexes


async def test_upgrade_twice_is_a_no_op_at_head(engine: AsyncEngine):
    await upgrade(engine)
    await upgrade(engine)
    assert await current_revision(engine) == head_revision() == "0006"


async def test_same_inbound_message_twice_is_stored_once(
    sessions: async_sessionmaker[AsyncSession], broker: str, engine: AsyncEngine
):
    async with sessions() as session, session.begin():
        first = await insert_one(session, incoming("m1"))
        again = await insert_one(session, incoming("m1"))
    assert first is not None and again is None
    assert await count(engine, "chat_messages") == 1


async def test_same_message_id_from_another_provider_or_direction_is_a_new_row(
    sessions: async_sessionmaker[AsyncSession], broker: str, engine: AsyncEngine
):
    async with sessions() as session, session.begin():
        await insert_one(session, incoming("m1"))
        other = IncomingRow(ChannelIdentity("demo", "telegram", "u1"), "m1", "x")
        assert await insert_one(session, other) is not None
    assert await count(engine, "chat_messages") == 2


async def test_concurrent_first_contacts_make_one_lead(
    database_url: str, broker: str, engine: AsyncEngine
):
    """Ten transactions race to create the same chat user's lead; one lead survives."""
    engines = [make_engine(database_url) for _ in range(4)]
    factories = [make_session_factory(e) for e in engines]
    who = ChannelIdentity("demo", "webchat", "racer", display_name="Racer")

    async def contact(i: int) -> int:
        async with factories[i % 4]() as session, session.begin():
            return await ensure_lead(session, who)

    try:
        lead_ids = await asyncio.gather(*(contact(i) for i in range(10)))
    finally:
        for e in engines:
            await e.dispose()
    assert len(set(lead_ids)) == 1
    assert await count(engine, "leads") == 1
    assert await count(engine, "lead_channels") == 1


async def test_username_change_is_recorded_on_the_channel(
    sessions: async_sessionmaker[AsyncSession], broker: str, engine: AsyncEngine
):
    async with sessions() as session, session.begin():
        first = await ensure_lead(session, ChannelIdentity("demo", "tg", "1", "old_name"))
        second = await ensure_lead(session, ChannelIdentity("demo", "tg", "1", "new_name"))
    assert first == second
    (channel,) = await rows(engine, "SELECT channel_username FROM lead_channels")
    assert channel["channel_username"] == "new_name"


async def test_timestamps_come_back_aware_utc_on_both_databases(
    sessions: async_sessionmaker[AsyncSession], broker: str
):
    local = datetime(2026, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=-3)))
    async with sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u1"))
        row_id = await enqueue(
            session, QueuedMessage(lead_id, "demo", "webchat", "u1", "x", send_after=local)
        )
    async with sessions() as session:
        row = await session.get(ChatMessage, row_id)
    assert row is not None
    assert row.send_after == local
    assert row.send_after.tzinfo == UTC
    assert row.created_at.tzinfo == UTC


async def test_naive_datetimes_are_refused(sessions: async_sessionmaker[AsyncSession], broker: str):
    with pytest.raises(sa.exc.StatementError, match="naive datetime"):
        async with sessions() as session, session.begin():
            lead_id = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u1"))
            await enqueue(
                session,
                QueuedMessage(
                    lead_id, "demo", "webchat", "u1", "x", send_after=datetime(2026, 1, 1)
                ),
            )


async def test_json_columns_round_trip(sessions: async_sessionmaker[AsyncSession], broker: str):
    attachments = [{"kind": "image", "ref": "file-1", "extra": {"w": 10, "ñ": "ü"}}]
    async with sessions() as session, session.begin():
        stored = await insert_one(
            session,
            IncomingRow(
                ChannelIdentity("demo", "webchat", "u1"),
                "m1",
                None,
                attachments=attachments,
                provider_metadata={"raw_type": "image"},
            ),
        )
    assert stored is not None
    async with sessions() as session:
        row = await session.get(ChatMessage, stored)
    assert row is not None
    assert row.attachments == attachments
    assert row.provider_metadata == {"raw_type": "image"}


async def test_status_changes_are_monotonic_and_failed_is_terminal(
    sessions: async_sessionmaker[AsyncSession], broker: str
):
    async with sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u1"))
        row_id = await enqueue(session, QueuedMessage(lead_id, "demo", "webchat", "u1", "x"))
        await mark_sent(session, row_id, "p-1", MessageStatus.SENT)

    async def change(status: MessageStatus) -> StatusOutcome:
        async with sessions() as session, session.begin():
            return await apply_status(
                session, StatusChange("demo", "webchat", "p-1", status, error=None)
            )

    applied, stale = StatusOutcome.APPLIED, StatusOutcome.STALE
    assert await change(MessageStatus.DELIVERED) == applied
    assert await change(MessageStatus.SENT) == stale
    assert await change(MessageStatus.DELIVERED) == stale
    assert await change(MessageStatus.FAILED) == applied
    assert await change(MessageStatus.READ) == stale
    assert await change(MessageStatus.DELIVERED) == stale


async def test_brokers_upsert_updates_and_never_deletes(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
):
    async with sessions() as session, session.begin():
        await upsert_brokers(
            session, [BrokerRecord("a", "A", "UTC"), BrokerRecord("b", "B", "UTC")]
        )
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("a", "A2", "Europe/Madrid")])
    found = await rows(engine, "SELECT id, name, timezone FROM brokers ORDER BY id")
    assert found == [
        {"id": "a", "name": "A2", "timezone": "Europe/Madrid"},
        {"id": "b", "name": "B", "timezone": "UTC"},
    ]


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str):
    engine = make_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            mode = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar_one()
            keys = (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar_one()
    finally:
        await engine.dispose()
    assert (mode, keys) == ("wal", 1)


async def test_two_sqlite_writers_wait_for_each_other_instead_of_failing(sqlite_url: str):
    """BEGIN IMMEDIATE plus busy_timeout: interleaved read-then-write transactions all commit."""
    setup = make_engine(sqlite_url)
    await upgrade(setup)
    async with make_session_factory(setup)() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", "Demo", "UTC")])
    await setup.dispose()
    engines = [make_engine(sqlite_url) for _ in range(3)]
    try:

        async def write(i: int) -> None:
            factory = make_session_factory(engines[i % 3])
            async with factory() as session, session.begin():
                await insert_one(session, incoming(f"m{i}", user=f"u{i % 5}"))
                await asyncio.sleep(0.001)

        await asyncio.gather(*(write(i) for i in range(30)))
        assert await count(engines[0], "chat_messages") == 30
    finally:
        for e in engines:
            await e.dispose()


async def test_sqlite_connection_back_in_the_pool_has_no_transaction_open(sqlite_url: str):
    """The pool rolls back only what is open; a connection never comes back mid-transaction."""
    engine = make_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            await conn.commit()  # SQLAlchemy's transaction ends; the pool still sees the driver
            await (await driver.execute("BEGIN IMMEDIATE")).close()
            assert driver.in_transaction
        assert not driver.in_transaction  # rolled back when the pool took it back
        async with engine.begin() as conn:  # and the next BEGIN IMMEDIATE works
            assert (await conn.execute(sa.text("SELECT 1"))).scalar_one() == 1
        async with engine.begin() as conn:  # a committed connection is simply reused
            assert (await conn.execute(sa.text("SELECT 2"))).scalar_one() == 2
    finally:
        await engine.dispose()


async def test_status_before_the_send_returned_is_kept_then_applied(
    sessions: async_sessionmaker[AsyncSession], broker: str, engine: AsyncEngine
):
    async with sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u1"))
        row_id = await enqueue(session, QueuedMessage(lead_id, "demo", "webchat", "u1", "x"))
    early = StatusChange("demo", "webchat", "p-9", MessageStatus.DELIVERED)
    async with sessions() as session, session.begin():
        assert await apply_status(session, early) == StatusOutcome.KEPT
    assert await count(engine, "early_statuses") == 1
    async with sessions() as session, session.begin():
        await mark_sent(session, row_id, "p-9", MessageStatus.SENT)
    (row,) = await rows(engine, "SELECT status FROM chat_messages WHERE id = :id", id=row_id)
    assert row["status"] == "delivered"
    assert await count(engine, "early_statuses") == 0


async def test_a_status_kept_while_its_send_committed_is_applied_by_the_sweep(
    sessions: async_sessionmaker[AsyncSession], broker: str, engine: AsyncEngine
):
    """The PostgreSQL race: the report was kept by a transaction that could not see the
    send's commit. The sweep applies it; old reports for ids never seen are forgotten."""
    async with sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u1"))
        row_id = await enqueue(session, QueuedMessage(lead_id, "demo", "webchat", "u1", "x"))
        await mark_sent(session, row_id, "p-10", MessageStatus.SENT)
        week_ago = utcnow() - timedelta(days=8)
        for message_id, created in (("p-10", utcnow()), ("old", week_ago), ("new", utcnow())):
            session.add(
                EarlyStatus(
                    broker_id="demo",
                    provider="webchat",
                    channel_message_id=message_id,
                    status=MessageStatus.READ,
                    created_at=created,
                )
            )
    async with sessions() as session, session.begin():
        assert await settle_early_statuses(session, utcnow() - timedelta(days=7)) == 1
    (row,) = await rows(engine, "SELECT status FROM chat_messages WHERE id = :id", id=row_id)
    assert row["status"] == "read"
    kept = await rows(engine, "SELECT channel_message_id FROM early_statuses")
    assert [k["channel_message_id"] for k in kept] == ["new"]


async def test_stale_status_for_a_known_message_is_not_kept(
    sessions: async_sessionmaker[AsyncSession], broker: str, engine: AsyncEngine
):
    async with sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "webchat", "u1"))
        row_id = await enqueue(session, QueuedMessage(lead_id, "demo", "webchat", "u1", "x"))
        await mark_sent(session, row_id, "p-1", MessageStatus.SENT)
        read = StatusChange("demo", "webchat", "p-1", MessageStatus.READ)
        assert await apply_status(session, read) == StatusOutcome.APPLIED
        sent = StatusChange("demo", "webchat", "p-1", MessageStatus.SENT)
        assert await apply_status(session, sent) == StatusOutcome.STALE
    assert await count(engine, "early_statuses") == 0


async def test_migrations_match_the_models(engine: AsyncEngine):
    """A model changed without a migration would show here as a difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    from leadline.storage.search import include_name

    def diff(sync) -> list:
        opts = {"compare_type": False, "include_name": include_name}  # not the search index
        context = MigrationContext.configure(sync, opts=opts)
        return compare_metadata(context, SQLModel.metadata)

    async with engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


def test_safe_url_hides_a_password_before_the_at_and_one_in_the_query():
    assert safe_url("postgresql+asyncpg://bot:hunter2@db/x") == "postgresql+asyncpg://bot:***@db/x"
    shown = safe_url("postgresql+asyncpg://bot@db/x?password=hunter2&ssl=require")
    assert "hunter2" not in shown and "ssl=require" in shown
    assert safe_url("not a url at all") == "<invalid database URL>"
