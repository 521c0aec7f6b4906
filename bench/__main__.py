"""Inbound ingestion: messages stored per second, SQLite beside PostgreSQL, one run.

Each delivery goes through the real pipeline (idempotent insert, lead found or
created, one transaction). Compares one message per delivery (Telegram-like)
with batches of 50 (Meta-like), and a full redelivery (every insert a duplicate).

    make bench                      # both databases when PostgreSQL answers
    BENCH_MESSAGES=5000 make bench
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import sqlalchemy as sa

from leadline.adapters.base import InboundMessage
from leadline.runtime.pipeline import InboundPipeline
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory
from leadline.storage.migrate import upgrade

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "2000"))
POSTGRES_ADMIN = os.environ.get(
    "LEADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def messages(count: int) -> list[InboundMessage]:
    return [
        InboundMessage(channel_message_id=f"m{i}", channel_user_id=f"u{i % 200}", text=f"#{i}")
        for i in range(count)
    ]


async def measure(url: str, batch: int) -> tuple[float, float]:
    """(first delivery, redelivery) in messages per second."""
    engine = make_engine(url)
    await upgrade(engine)
    sessions = make_session_factory(engine)
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("bench", "Bench", "UTC")])
    pipeline = InboundPipeline(sessions, on_stored=lambda: None)
    events = messages(MESSAGES)

    async def deliver_all() -> float:
        started = time.perf_counter()
        for i in range(0, len(events), batch):
            await pipeline.ingest("bench", "bench", events[i : i + batch])
        return len(events) / (time.perf_counter() - started)

    first, again = await deliver_all(), await deliver_all()
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT count(*) FROM chat_messages"))).scalar_one()
    await engine.dispose()
    assert stored == len(events), f"stored {stored}, expected {len(events)}"
    return first, again


async def postgres_database() -> tuple[str, Callable[[], object]] | None:
    name = f"leadline_bench_{uuid.uuid4().hex[:8]}"
    try:
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    url = sa.make_url(POSTGRES_ADMIN).set(drivername="postgresql+asyncpg", database=name)

    async def drop() -> None:
        admin = await asyncpg.connect(POSTGRES_ADMIN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    return url.render_as_string(hide_password=False), drop


async def main() -> None:
    print(f"inbound ingestion, {MESSAGES} messages from 200 users, messages/s")
    print(f"{'database':<12}{'batch':>6}{'first':>10}{'redelivery':>12}")
    results: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as folder:
        targets: list[tuple[str, Callable[[int], str]]] = [
            ("sqlite", lambda b: f"sqlite+aiosqlite:///{Path(folder) / f'bench-{b}.db'}")
        ]
        for batch in (1, 50):
            for name, url_for in targets:
                first, again = await measure(url_for(batch), batch)
                results[(name, batch)] = first
                print(f"{name:<12}{batch:>6}{first:>10.0f}{again:>12.0f}")
            found = await postgres_database()
            if found is None:
                print(f"{'postgresql':<12}{batch:>6}   (no server at {POSTGRES_ADMIN})")
                continue
            url, drop = found
            try:
                first, again = await measure(url, batch)
            finally:
                await drop()  # type: ignore[misc]
            results[("postgresql", batch)] = first
            print(f"{'postgresql':<12}{batch:>6}{first:>10.0f}{again:>12.0f}")
    for name in ("sqlite", "postgresql"):
        if (name, 1) in results and (name, 50) in results:
            ratio = results[(name, 50)] / results[(name, 1)]
            print(f"{name}: batches of 50 store {ratio:.1f}x the messages/s of single deliveries")


if __name__ == "__main__":
    asyncio.run(main())
