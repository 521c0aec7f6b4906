"""Lead search (`GET /api/v1/leads?q=`) among 50,000 leads of one broker, SQLite beside
PostgreSQL: `storage.crm.list_leads`, with its index (FTS5 trigram on
SQLite, pg_trgm GIN on PostgreSQL) and, for comparison, the same search scanning the
leads. Leads are stored through the inbound path, so `search_text` is what it writes.

    python -m bench.lead_search
    BENCH_LEADS=100000 python -m bench.lead_search
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.sql.expression import SelectOfScalar

from bench.__main__ import postgres_database
from bench.scratch import scratch_folder
from leadline.storage import crm, search
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory
from leadline.storage.leads import ChannelIdentity, resolve_leads
from leadline.storage.migrate import upgrade
from leadline.storage.models import Lead

LEADS = int(os.environ.get("BENCH_LEADS", "50000"))
RUNS = 20  # each query's figure is the median of this many runs
FIRST = ["Ana", "Ángela", "João", "María", "José", "Lucía", "Bruno", "Inês", "Pedro", "Sofía"]
LAST = ["García", "Núñez", "Conceição", "Pérez", "Gómez", "Araújo", "Muñoz", "Souza", "Díaz"]
QUERIES = ["angela nunez", "NÚÑEZ", "conceicao", "+54 9 11 4000", "user_49999", "zzz-absent", "an"]


def person(i: int) -> ChannelIdentity:
    name = f"{FIRST[i % len(FIRST)]} {LAST[(i // len(FIRST)) % len(LAST)]} {i}"
    return ChannelIdentity("bench", "whatsapp", f"549114{i:07d}", f"user_{i}", name)


async def fill(engine: AsyncEngine) -> float:
    """Store the leads as first contacts; returns leads per second."""
    await upgrade(engine)
    sessions = make_session_factory(engine)
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("bench", "Bench", "UTC")])
    started = time.perf_counter()
    for start in range(0, LEADS, 1000):
        async with sessions() as session, session.begin():
            await resolve_leads(
                session, [person(i) for i in range(start, min(start + 1000, LEADS))]
            )
    return LEADS / (time.perf_counter() - started)


async def timed(engine: AsyncEngine, q: str, scan: bool) -> tuple[float, int]:
    """(median milliseconds, leads found) of one page of 50 for `q`."""
    sessions = make_session_factory(engine)
    took: list[float] = []
    found = 0
    for _ in range(RUNS):
        async with sessions() as session, session.begin():
            started = time.perf_counter()
            if scan:  # the same condition on the column itself, with no index to serve it
                found = len((await session.exec(_scanning(q))).all())
            else:
                where = crm.LeadFilter(text=q)
                found = len(await crm.list_leads(session, "bench", where, 0, 51))
            took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took), found


def _scanning(q: str) -> SelectOfScalar[Lead]:
    wanted = search.needle(q)
    pattern = "%" + wanted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    column = sa.func.coalesce(col(Lead.search_text), "")  # an expression: no index applies
    return (
        select(Lead)
        .where(col(Lead.broker_id) == "bench", column.like(pattern, escape="\\"))
        .order_by(col(Lead.id))
        .limit(51)
    )


async def report(name: str, url: str) -> None:
    engine = make_engine(url)
    try:
        rate = await fill(engine)
        if engine.dialect.name == "postgresql":
            async with engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE leads")
        print(f"\n{name}: {LEADS} leads stored at {rate:.0f}/s; a page of 50, median ms")
        print(f"{'q':<16}{'found':>6}{'indexed':>10}{'scan':>10}")
        for q in QUERIES:
            indexed, found = await timed(engine, q, scan=False)
            scanned, _ = await timed(engine, q, scan=True)
            print(f"{q:<16}{found:>6}{indexed:>10.2f}{scanned:>10.2f}")
    finally:
        await engine.dispose()


async def main() -> None:
    with scratch_folder("leadline-search-", keep=False) as folder:
        await report("sqlite", f"sqlite+aiosqlite:///{Path(folder) / 'search.db'}")
        found = await postgres_database()
        if found is None:
            print("\npostgresql: no server")
            return
        url, drop = found
        try:
            await report("postgresql", url)
        finally:
            await drop()  # type: ignore[misc]


if __name__ == "__main__":
    asyncio.run(main())
