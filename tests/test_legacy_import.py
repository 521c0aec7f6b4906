"""Issue 9, part 2: `leadline import telegram-messages` from a legacy bot's database.

The legacy databases are real: SQLite files, or a scratch PostgreSQL database made
here (beside the `database_url` one Leadline itself uses; each test runs on one
kind of database for both). The command always runs as the real CLI, a subprocess.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pty
import signal
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.adapters.base import InboundMessage
from leadline.adapters.telegram.parse import parse_update
from leadline.runtime.pipeline import InboundPipeline
from leadline.storage.engine import make_session_factory
from leadline.storage.inbound import IncomingRow, insert_messages
from leadline.storage.leads import ChannelIdentity
from tests.conftest import DEMO_TOML, POSTGRES_ADMIN, AppFactory, wait_for
from tests.helpers import as_utc, count, rows
from tests.test_process import LEADLINE, child_env

T0 = datetime(2023, 3, 1, 12, 0, tzinfo=UTC)
PASSWORD = "s3cret-Legacy-pw"
PROCESS_SECONDS = 120

# Column types, written for each database by `Legacy.create`.
MESSAGE_COLUMNS = {
    "id": "bigint",
    "lead_id": "bigint",
    "telegram_user_id": "bigint",
    "telegram_username": "text",
    "telegram_message_id": "bigint",
    "message_text": "text",
    "direction": "text",
    "ai_response_used": "boolean",
    "created_at": "timestamp",
}
LEAD_COLUMNS = {"id": "bigint", "name": "text", "phone": "text", "tags": "text"}
SQLITE_TYPES = {"bigint": "INTEGER", "boolean": "INTEGER", "text": "TEXT"}
PG_TYPES = {"bigint": "BIGINT", "boolean": "BOOLEAN", "text": "TEXT"}


# --- the legacy database -----------------------------------------------------------


@dataclass
class Legacy:
    """One legacy database: a SQLite file, or a PostgreSQL database of its own."""

    kind: str  # "sqlite" | "postgres"
    url: str  # what `--from` gets
    path: Path | None = None
    dsn: str | None = None
    types: dict[str, dict[str, str]] = field(default_factory=dict)

    async def create(self, table: str, columns: dict[str, str]) -> None:
        self.types[table] = columns

        def sql_type(kind: str) -> str:
            if kind.startswith("timestamp"):  # SQLite keeps ISO text, as old bots did
                return "TEXT" if self.kind == "sqlite" else kind.upper()
            return (SQLITE_TYPES if self.kind == "sqlite" else PG_TYPES)[kind]

        body = ", ".join(
            f"{name} {sql_type(kind)}{' PRIMARY KEY' if name == 'id' else ''}"
            for name, kind in columns.items()
        )
        await self.execute(f"CREATE TABLE {table} ({body})")

    async def execute(self, sql: str) -> None:
        if self.kind == "sqlite":
            with sqlite3.connect(self.path) as conn:
                conn.execute(sql)
            return
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def insert(self, table: str, records: Sequence[dict[str, Any]]) -> None:
        columns = self.types[table]
        names = list(columns)
        values = [
            tuple(self._value(columns[n], r.get(n), i) for n in names)
            for i, r in enumerate(records)
        ]
        if self.kind == "sqlite":
            marks = ", ".join("?" for _ in names)
            with sqlite3.connect(self.path) as conn:
                conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)  # noqa: S608
            return
        marks = ", ".join(f"${n + 1}" for n in range(len(names)))
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.executemany(f"INSERT INTO {table} VALUES ({marks})", values)  # noqa: S608
        finally:
            await conn.close()

    def _value(self, kind: str, value: Any, index: int) -> Any:
        if value is None:
            return None
        if isinstance(value, datetime):
            if self.kind == "sqlite" or kind == "text":
                return iso_variant(value, index)
            if kind == "timestamp":  # without time zone: naive, meaning UTC
                return value.astimezone(UTC).replace(tzinfo=None)
            return value
        if self.kind == "sqlite" and isinstance(value, bool):
            return int(value)
        if kind == "text" and not isinstance(value, str):
            return str(value)
        return value


def iso_variant(moment: datetime, index: int) -> str:
    """The same instant written as old bots write it: naive (UTC), +00:00, Z, +02:00."""
    utc = moment.astimezone(UTC)
    variant = index % 4
    if variant == 0:
        return utc.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S")
    if variant == 1:
        return utc.isoformat()
    if variant == 2:
        return utc.replace(tzinfo=None).isoformat() + "Z"
    return utc.astimezone(timezone(timedelta(hours=2))).isoformat()


LegacyFactory = Callable[..., Awaitable[Legacy]]


@pytest.fixture
async def make_legacy(database_url: str, tmp_path: Path) -> AsyncIterator[LegacyFactory]:
    """Legacy databases of the kind Leadline's own `database_url` is."""
    dropped: list[str] = []
    admin = sa.make_url(POSTGRES_ADMIN)

    async def make(name: str = "legacy") -> Legacy:
        if database_url.startswith("sqlite"):
            path = tmp_path / f"{name}.db"
            return Legacy("sqlite", f"sqlite:///{path}", path=path)
        database = f"legacy_{name}_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        dropped.append(database)
        url = admin.set(database=database).render_as_string(hide_password=False)
        return Legacy("postgres", url, dsn=url)

    yield make
    for database in dropped:
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()


def message(
    legacy_id: int,
    user: int | str | None,
    text: str,
    direction: str = "in",
    *,
    lead: int | None = None,
    username: str | None = None,
    telegram_id: int | None = None,
    ai: bool = False,
    at: datetime | str | None = None,
) -> dict[str, Any]:
    return {
        "id": legacy_id,
        "lead_id": lead,
        "telegram_user_id": user,
        "telegram_username": username,
        "telegram_message_id": telegram_id,
        "message_text": text,
        "direction": direction,
        "ai_response_used": ai,
        "created_at": at if at is not None else T0 + timedelta(minutes=legacy_id),
    }


# --- running the command and reading what it did ---------------------------------------


@dataclass
class Cli:
    tmp_path: Path
    database_url: str

    def env(self) -> dict[str, str]:
        (self.tmp_path / "brokers.toml").write_text(DEMO_TOML)
        return child_env(self.tmp_path, self.database_url)

    def args(self, legacy: str, *extra: str, broker: str = "demo") -> list[str]:
        return [LEADLINE, "import", "telegram-messages", "--from", legacy, "--broker", broker,
                *extra]  # fmt: skip

    async def run(
        self, legacy: str, *extra: str, broker: str = "demo"
    ) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            self.args(legacy, *extra, broker=broker),
            env=self.env(),
            cwd=self.tmp_path,
            capture_output=True,
            text=True,
            timeout=PROCESS_SECONDS,
        )

    async def ok(self, legacy: str, *extra: str) -> str:
        done = await self.run(legacy, *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> Cli:
    return Cli(tmp_path, database_url)


def figures(summary: str) -> dict[str, int]:
    """The summary's `  label: number` lines."""
    found = {}
    for line in summary.splitlines():
        if line.startswith("  ") and ": " in line:
            label, value = line.strip().split(": ", 1)
            found[label] = int(value.split()[0].replace(",", ""))
    return found


async def stored_messages(engine: AsyncEngine) -> list[dict[str, Any]]:
    found = await rows(engine, "SELECT * FROM chat_messages ORDER BY id")
    for row in found:
        row["provider_metadata"] = _json(row["provider_metadata"])
        row["ai_response_used"] = bool(row["ai_response_used"])
        for name in ("created_at", "sent_at", "handled_at"):
            row[name] = as_utc(row[name]) if row[name] is not None else None
    return found


async def stored_leads(engine: AsyncEngine) -> dict[int, dict[str, Any]]:
    found = await rows(engine, "SELECT * FROM leads ORDER BY id")
    for row in found:
        row["tags"] = _json(row["tags"])
        row["lead_metadata"] = _json(row["lead_metadata"])
    return {row["id"]: row for row in found}


async def stored_channels(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    found = await rows(engine, "SELECT * FROM lead_channels WHERE provider = 'telegram'")
    return {row["channel_user_id"]: row for row in found}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def legacy_lead_of(lead: dict[str, Any]) -> Any:
    return lead["lead_metadata"].get("legacy", {}).get("lead_id")


async def snapshot(engine: AsyncEngine) -> dict[str, list[dict[str, Any]]]:
    tables = ("brokers", "leads", "lead_channels", "chat_messages", "legacy_imports")
    return {t: await rows(engine, f"SELECT * FROM {t} ORDER BY 1, 2") for t in tables}  # noqa: S608


# --- a legacy database with a bit of everything ------------------------------------------

LEGACY_LEADS = [
    {"id": 17, "name": "Ana Gómez", "phone": "+54 11 5555-0001", "tags": '["vip", "buyer"]'},
    {"id": 18, "name": "Bruno", "phone": None, "tags": "rent, zona norte ,"},
    {"id": 19, "name": None, "phone": "1155550003", "tags": None},
]
HISTORY = [
    message(1, 1001, "Hola, vi el depto", "in", lead=17, username="ana_g", telegram_id=10),
    message(2, 1001, "¡Hola Ana! Sigue disponible", "OUT", lead=17, username="ana_g",
            telegram_id=11, ai=True),
    message(3, 1002, "precio?", "Incoming", lead=18, username="@bruno", telegram_id=3),
    message(4, 1002, "USD 120k", "bot", lead=18, username="bruno", telegram_id=4),
    message(5, 1003, "sin id de telegram", "user", lead=19, username="carla"),
    message(6, 1003, "respuesta", "assistant", lead=19, username="carla", ai=True),
    message(7, 1004, "sin lead", "inbound", username="dani", telegram_id=1),
    message(8, 1001, "gracias", "in", lead=17, username="ana_g", telegram_id=12),
    message(9, 1005, "segundo usuario de Ana", "in", lead=17, username="ana_work",
            telegram_id=2),
]  # fmt: skip


async def full_legacy(make_legacy: LegacyFactory, ai_column: str = "ai_response_used") -> Legacy:
    legacy = await make_legacy()
    columns = {("ai_used" if n == "ai_response_used" else n) if ai_column == "ai_used" else n: t
               for n, t in MESSAGE_COLUMNS.items()}  # fmt: skip
    await legacy.create("leads", LEAD_COLUMNS)
    await legacy.insert("leads", LEGACY_LEADS)
    await legacy.create("telegram_messages", columns)
    records = [{**m, "ai_used": m["ai_response_used"]} for m in HISTORY]
    await legacy.insert("telegram_messages", records)
    return legacy


def sqlite_digest(legacy: Legacy) -> str | None:
    return hashlib.sha256(legacy.path.read_bytes()).hexdigest() if legacy.path else None


# --- the tests ---------------------------------------------------------------------------


async def test_full_import_creates_leads_channels_and_messages_with_directions_times_and_flags(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    legacy = await full_legacy(make_legacy)
    before = sqlite_digest(legacy)
    summary = await cli.ok(legacy.url)

    assert figures(summary) == {
        "leads created": 4,  # legacy leads 17, 18, 19 and user 1004's own
        "lead channels created": 5,
        "lead channels attached to existing leads": 0,
        "messages new": 9,
        "messages already present": 0,
        "rows skipped": 0,
        "last legacy id": 9,
    }
    assert "done: read 9 legacy rows" in summary
    assert (await rows(engine, "SELECT id, name FROM brokers WHERE id = 'demo'")) == [
        {"id": "demo", "name": "Demo Realty"}
    ]
    leads = await stored_leads(engine)
    by_legacy = {legacy_lead_of(lead): lead for lead in leads.values()}
    source = by_legacy[17]["lead_metadata"]["legacy"]["source"]
    assert source.startswith("telegram_messages@")
    assert {lead["lead_metadata"]["legacy"]["source"] for lead in leads.values()} == {source}
    assert (by_legacy[17]["name"], by_legacy[17]["phone"], by_legacy[17]["tags"]) == (
        "Ana Gómez", "+54 11 5555-0001", ["vip", "buyer"]
    )  # fmt: skip
    assert (by_legacy[18]["name"], by_legacy[18]["phone"], by_legacy[18]["tags"]) == (
        "Bruno", None, ["rent", "zona norte"]
    )  # fmt: skip
    # No name in the legacy row: the Telegram username names the lead.
    assert (by_legacy[19]["name"], by_legacy[19]["phone"], by_legacy[19]["tags"]) == (
        "carla", "1155550003", []
    )  # fmt: skip
    own = by_legacy[None]
    assert own["name"] == "dani"
    assert own["lead_metadata"]["legacy"] == {"source": source, "channel_user_id": "1004"}
    assert as_utc(by_legacy[17]["created_at"]) == T0 + timedelta(minutes=1)  # its first message

    channels = await stored_channels(engine)
    assert {u: (c["lead_id"], c["channel_username"]) for u, c in channels.items()} == {
        "1001": (by_legacy[17]["id"], "ana_g"),
        "1005": (by_legacy[17]["id"], "ana_work"),  # a second user of legacy lead 17
        "1002": (by_legacy[18]["id"], "bruno"),
        "1003": (by_legacy[19]["id"], "carla"),
        "1004": (own["id"], "dani"),
    }

    found = await stored_messages(engine)
    assert [m["provider_metadata"]["legacy"]["id"] for m in found] == list(range(1, 10))
    for stored, original in zip(found, HISTORY, strict=True):
        out = stored["direction"] == "out"
        user = str(original["telegram_user_id"])
        assert stored["broker_id"] == "demo" and stored["provider"] == "telegram"
        assert stored["channel_user_id"] == user
        assert stored["lead_id"] == channels[user]["lead_id"]
        assert stored["message_text"] == original["message_text"]
        assert stored["created_at"] == original["created_at"]
        assert stored["status"] == ("sent" if out else "delivered")
        assert stored["sent_at"] == (original["created_at"] if out else None)
        assert stored["handled_at"] is not None
        assert stored["ai_response_used"] is original["ai_response_used"]
        assert stored["provider_metadata"]["legacy"]["source"] == source
    assert [m["direction"] for m in found] == ["in", "out", "in", "out", "in", "out", "in", "in",
                                               "in"]  # fmt: skip
    # Keyed as the live adapter keys a private chat's message; without a Telegram id by ours,
    # named by the source (two legacy databases may share an id).
    digest = source.rsplit("@", 1)[-1]
    assert [m["channel_message_id"] for m in found] == [
        "1001:10", "1001:11", "1002:3", "1002:4", f"legacy:{digest}:5", f"legacy:{digest}:6",
        "1004:1", "1001:12", "1005:2",
    ]  # fmt: skip
    assert found[2]["channel_username"] == "bruno"  # "@bruno" in the legacy row
    progress = await rows(engine, "SELECT * FROM legacy_imports")
    assert [(p["source"], p["broker_id"], p["last_legacy_id"], p["imported"], p["skipped"])
            for p in progress] == [(source, "demo", 9, 9, 0)]  # fmt: skip
    assert sqlite_digest(legacy) == before, "the legacy SQLite file was written to"


async def test_running_twice_imports_nothing_new(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    legacy = await full_legacy(make_legacy)
    await cli.ok(legacy.url)
    first = await snapshot(engine)

    again = await cli.ok(legacy.url)  # resumes after the last legacy id: nothing to read
    assert "resuming after legacy id 9" in again
    assert figures(again)["messages new"] == 0 and "read 0 legacy rows" in again
    # Progress forgotten: every row read again, and found already stored.
    await rows_changed(engine, "DELETE FROM legacy_imports")
    forgotten = await cli.ok(legacy.url)
    assert figures(forgotten) == {
        "leads created": 0,
        "lead channels created": 0,
        "lead channels attached to existing leads": 0,
        "messages new": 0,
        "messages already present": 9,
        "rows skipped": 0,
        "last legacy id": 9,
    }
    after = await snapshot(engine)
    for table in ("brokers", "leads", "lead_channels", "chat_messages"):
        assert after[table] == first[table], table

    # A legacy system still running: rows added since are what the next run imports.
    await legacy.insert(
        "telegram_messages",
        [message(10, 1001, "¿sigue?", lead=17, telegram_id=13),
         message(11, 1006, "nuevo", lead=18, username="bruno2", telegram_id=1)],
    )  # fmt: skip
    more = await cli.ok(legacy.url)
    assert figures(more)["messages new"] == 2 and figures(more)["leads created"] == 0
    assert await count(engine, "leads") == len(first["leads"])


async def rows_changed(engine: AsyncEngine, sql: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(sa.text(sql))


async def ingest_live(engine: AsyncEngine, update: dict[str, Any]) -> InboundMessage:
    """What the live Telegram channel does with an update: parse, then the inbound pipeline."""
    events = parse_update(update).events
    pipeline = InboundPipeline(make_session_factory(engine), on_stored=lambda: None)
    await pipeline.ingest("demo", "telegram", events)
    assert isinstance(events[0], InboundMessage)
    return events[0]


def private_update(update_id: int, user: int, message_id: int, text: str, username: str):
    person = {"id": user, "is_bot": False, "first_name": "Ana", "username": username}
    return {
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "date": int(T0.timestamp()),
            "from": person,
            "chat": {"id": user, "type": "private", "first_name": "Ana", "username": username},
            "text": text,
        },
    }


async def test_an_existing_live_telegram_channel_is_attached_and_its_messages_not_duplicated(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    # Leadline has been receiving user 1001 live already: the same message 10, and a later one.
    await rows_changed(engine, "INSERT INTO brokers (id, name, timezone) "
                               "VALUES ('demo', 'Demo Realty', 'UTC')")  # fmt: skip
    live = await ingest_live(engine, private_update(1, 1001, 10, "Hola, vi el depto", "ana_now"))
    await ingest_live(engine, private_update(2, 1001, 40, "live only", "ana_now"))
    assert live.channel_message_id == "1001:10"
    live_lead = (await stored_channels(engine))["1001"]["lead_id"]

    legacy = await full_legacy(make_legacy)
    summary = await cli.ok(legacy.url)
    numbers = figures(summary)
    assert numbers["lead channels attached to existing leads"] == 1
    assert numbers["messages already present"] == 1  # 1001:10, stored live
    assert numbers["messages new"] == 8
    assert numbers["leads created"] == 3  # 18, 19 and 1004's: legacy lead 17 is the live lead

    found = await stored_messages(engine)
    keys = [m["channel_message_id"] for m in found if m["direction"] == "in"]
    assert keys.count("1001:10") == 1
    channels = await stored_channels(engine)
    assert channels["1001"]["lead_id"] == live_lead
    assert channels["1001"]["channel_username"] == "ana_now"  # the live name is kept
    assert channels["1005"]["lead_id"] == live_lead  # legacy lead 17's other user follows it
    on_live_lead = sorted(m["message_text"] for m in found if m["lead_id"] == live_lead)
    assert on_live_lead == sorted(["Hola, vi el depto", "live only", "¡Hola Ana! Sigue disponible",
                                   "gracias", "segundo usuario de Ana"])  # fmt: skip
    leads = await stored_leads(engine)
    assert legacy_lead_of(leads[live_lead]) == 17  # found again by a later run
    assert sum(1 for lead in leads.values() if legacy_lead_of(lead) == 17) == 1


async def test_rows_that_cannot_be_imported_are_reported_by_legacy_id_and_reason(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    legacy = await make_legacy()
    await legacy.create(
        "telegram_messages",
        {**MESSAGE_COLUMNS, "telegram_user_id": "text", "created_at": "text"},
    )
    good = [message(i, 2000 + i % 3, f"ok {i}", telegram_id=i, at=f"2023-03-0{1 + i % 5}T10:00")
            for i in range(1, 21)]  # fmt: skip
    bad = [
        message(21, None, "no user"),
        message(22, "", "blank user"),
        message(23, "abc", "not a number"),
        message(24, 2001, "?", "sideways"),
        message(25, 2001, "?", None),  # type: ignore[arg-type]
        message(26, 2001, "?", at="yesterday"),
        message(27, 2001, "?", at="2023-02-30 10:00:00"),
    ]
    many = [message(100 + i, 2001, "?", "elsewhere", at="2023-03-01") for i in range(25)]
    await legacy.insert("telegram_messages", good + bad + many)

    done = await cli.run(legacy.url)
    assert done.returncode == 0, done.stderr  # skipped rows are no error
    out = done.stdout
    for line in (
        "skipped legacy id 21: no telegram_user_id",
        "skipped legacy id 22: no telegram_user_id",
        "skipped legacy id 23: telegram_user_id 'abc' is no number",
        "skipped legacy id 24: unknown direction 'sideways'",
        "skipped legacy id 25: unknown direction (none)",
        "skipped legacy id 26: bad created_at 'yesterday'",
        "skipped legacy id 27: bad created_at '2023-02-30 10:00:00'",
    ):
        assert line in out.splitlines(), out
    lines = [line for line in out.splitlines() if line.startswith("skipped legacy id")]
    assert len(lines) == 20  # then only counted
    assert "... and 12 more skipped rows" in out
    numbers = figures(out)
    assert numbers["rows skipped"] == 32 and numbers["messages new"] == 20
    assert (
        "rows skipped: 32 (bad created_at: 2, bad telegram_user_id: 1, "
        "no telegram_user_id: 2, unknown direction: 27)"
    ) in out
    texts = [m["message_text"] for m in await stored_messages(engine)]
    assert sorted(texts) == sorted(f"ok {i}" for i in range(1, 21))
    progress = await rows(engine, "SELECT last_legacy_id, imported, skipped FROM legacy_imports")
    assert progress == [{"last_legacy_id": 124, "imported": 20, "skipped": 32}]


async def test_dry_run_reports_what_would_change_and_writes_nothing(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    legacy = await full_legacy(make_legacy)
    await legacy.insert("telegram_messages", [message(50, 1009, "?", "sideways")])
    # Leadline is migrated and knows user 1001 live, with message 10.
    await rows_changed(engine, "INSERT INTO brokers (id, name, timezone) "
                               "VALUES ('demo', 'Demo Realty', 'UTC')")  # fmt: skip
    await ingest_live(engine, private_update(1, 1001, 10, "Hola, vi el depto", "ana_now"))
    before = await snapshot(engine)

    dry = await cli.ok(legacy.url, "--dry-run")
    assert "dry run, nothing written: read 10 legacy rows" in dry
    assert "skipped legacy id 50: unknown direction 'sideways'" in dry
    expected = {
        "leads to create": 3,
        "lead channels to create": 4,
        "lead channels attached to existing leads": 1,
        "messages new": 8,
        "messages already present": 1,
        "rows skipped": 1,
    }
    assert figures(dry) == expected
    assert await snapshot(engine) == before
    assert figures(await cli.ok(legacy.url, "--dry-run")) == expected  # nothing saved
    assert await snapshot(engine) == before

    real = figures(await cli.ok(legacy.url))
    assert real == {
        "leads created": 3,
        "lead channels created": 4,
        "lead channels attached to existing leads": 1,
        "messages new": 8,
        "messages already present": 1,
        "rows skipped": 1,
        "last legacy id": 50,
    }


async def test_without_a_legacy_leads_table_leads_come_from_the_telegram_users(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    legacy = await make_legacy()
    await legacy.create("telegram_messages", {**MESSAGE_COLUMNS, "created_at": "timestamptz"})
    await legacy.insert("telegram_messages", HISTORY)
    summary = await cli.ok(legacy.url)
    assert "no legacy leads table: new leads are named after their Telegram username" in summary
    assert figures(summary)["leads created"] == 4
    leads = await stored_leads(engine)
    names = {legacy_lead_of(lead): lead["name"] for lead in leads.values()}
    # Legacy lead 17 has two users; it is named after the first one met.
    assert names == {17: "ana_g", 18: "bruno", 19: "carla", None: "dani"}
    assert all(lead["phone"] is None and lead["tags"] == [] for lead in leads.values())
    found = await stored_messages(engine)
    assert [m["created_at"] for m in found] == [m["created_at"] for m in HISTORY]


@pytest.mark.parametrize("ai_column", ["ai_used", "ai_response_used"])
async def test_ai_used_or_ai_response_used_sets_the_ai_flag(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine, ai_column: str
):
    legacy = await full_legacy(make_legacy, ai_column=ai_column)
    summary = await cli.ok(legacy.url)
    assert f"AI flag column: {ai_column}" in summary
    flags = {m["provider_metadata"]["legacy"]["id"]: m["ai_response_used"]
             for m in await stored_messages(engine)}  # fmt: skip
    assert flags == {m["id"]: m["ai_response_used"] for m in HISTORY}
    assert sum(flags.values()) == 2


async def test_a_legacy_table_with_neither_ai_column_imports_the_flag_as_false(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    legacy = await make_legacy()
    columns = {n: t for n, t in MESSAGE_COLUMNS.items() if n != "ai_response_used"}
    await legacy.create("telegram_messages", columns)
    await legacy.insert("telegram_messages", HISTORY[:2])
    assert "AI flag column: none" in await cli.ok(legacy.url)
    assert [m["ai_response_used"] for m in await stored_messages(engine)] == [False, False]


async def test_imported_inbound_rows_are_never_answered(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine, make_app: AppFactory
):
    legacy = await full_legacy(make_legacy)
    await cli.ok(legacy.url)
    imported = {m["id"] for m in await stored_messages(engine)}
    # The control: a live Telegram message nobody answered yet, from a new user.
    async with make_session_factory(engine)() as session, session.begin():
        who = ChannelIdentity("demo", "telegram", "3001", "newcomer", "Newcomer")
        await insert_messages(session, [IncomingRow(who, "3001:1", "hi", created_at=T0)])

    await make_app()  # the real service on this database: its reply worker resumes
    welcomes = "SELECT * FROM chat_messages WHERE direction = 'out' AND status = 'pending'"

    async def control_answered() -> bool:
        return bool(await rows(engine, welcomes))

    await wait_for(control_answered)
    await asyncio.sleep(0.5)  # time enough for any other reply to be queued too
    queued = await rows(engine, welcomes)
    assert [(q["channel_user_id"], q["message_text"]) for q in queued] == [
        ("3001", "Hi Newcomer! Thanks for writing to Demo Realty.")
    ]
    new = [m for m in await stored_messages(engine) if m["id"] not in imported]
    assert sorted((m["channel_user_id"], m["direction"]) for m in new) == [
        ("3001", "in"),
        ("3001", "out"),
    ]


async def test_an_interrupted_import_resumes_and_imports_every_row_exactly_once(
    make_legacy: LegacyFactory, cli: Cli, engine: AsyncEngine
):
    total, users, batch = 30_000, 1500, 200
    legacy = await make_legacy()
    await legacy.create("leads", LEAD_COLUMNS)
    await legacy.insert("leads", [{"id": n, "name": f"Lead {n}"} for n in range(users // 2)])
    await legacy.create("telegram_messages", MESSAGE_COLUMNS)
    records = [
        message(i, 7_000_000 + i % users, f"m{i}", "in" if i % 2 else "out",
                lead=(i % users) // 2, telegram_id=i)
        for i in range(1, total + 1)
    ]  # fmt: skip
    await legacy.insert("telegram_messages", records)

    env = cli.env()
    process = subprocess.Popen(  # noqa: S603
        cli.args(legacy.url, "--batch-size", str(batch)),
        env=env,
        cwd=cli.tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def progress() -> int:
            try:
                found = await rows(engine, "SELECT last_legacy_id FROM legacy_imports")
            except sa.exc.DBAPIError:  # not migrated yet
                return 0
            return found[0]["last_legacy_id"] if found else 0

        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROCESS_SECONDS
        while await progress() < 5 * batch:
            assert process.poll() is None, "the import ended before it could be killed"
            assert loop.time() < deadline, "no batch committed in time"
            await asyncio.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    at_kill = await progress()
    assert 5 * batch <= at_kill < total, at_kill
    stored_at_kill = await count(engine, "chat_messages")
    assert stored_at_kill == at_kill  # what the progress says, and not a row more

    resumed = await cli.ok(legacy.url, "--batch-size", str(batch))
    assert f"resuming after legacy id {at_kill}" in resumed
    assert figures(resumed)["messages new"] + stored_at_kill == total

    keys = [r["channel_message_id"] for r in await rows(engine, "SELECT channel_message_id "
                                                                "FROM chat_messages")]  # fmt: skip
    assert len(keys) == total
    assert sorted(keys) == sorted(f"{7_000_000 + i % users}:{i}" for i in range(1, total + 1))
    leads = await stored_leads(engine)
    legacy_ids = [legacy_lead_of(lead) for lead in leads.values()]
    assert sorted(legacy_ids) == list(range(users // 2))  # each legacy lead created once
    assert len(await stored_channels(engine)) == users
    progress_row = await rows(engine, "SELECT last_legacy_id, imported FROM legacy_imports")
    assert progress_row == [{"last_legacy_id": total, "imported": total}]


async def test_bad_url_missing_table_or_unknown_broker_exit_2_with_a_clear_message(
    make_legacy: LegacyFactory, cli: Cli, database_url: str
):
    legacy = await make_legacy()
    await legacy.create("leads", LEAD_COLUMNS)  # but no telegram_messages table
    no_column = await make_legacy("no_column")
    await no_column.create("telegram_messages", {"id": "bigint", "direction": "text"})
    admin = sa.make_url(POSTGRES_ADMIN)
    with_password = admin.set(password=PASSWORD, database="no_such_database_here")
    unreachable = admin.set(password=PASSWORD, host="127.0.0.1", port=9)
    cases = [
        ("not a url", "error: --from is not a database URL"),
        (f"mysql://root:{PASSWORD}@localhost/legacy", "must be a sqlite:// or postgresql:// URL"),
        ("sqlite:///nowhere/legacy.db", "cannot open the legacy database sqlite:///nowhere"),
        (legacy.url, "no table telegram_messages in the legacy database"),
        (no_column.url, "the legacy table telegram_messages has no column telegram_user_id, "
                        "created_at"),
    ]  # fmt: skip
    if legacy.kind == "postgres":
        cases += [
            (with_password.render_as_string(hide_password=False),
             'cannot open the legacy database postgresql://postgres:***@'),
            (unreachable.render_as_string(hide_password=False),
             "cannot open the legacy database postgresql://postgres:***@127.0.0.1:9/"),
            # the drivers take a password as a query parameter too
            (unreachable.set(query={"password": PASSWORD}).render_as_string(hide_password=False),
             "?password=%2A%2A%2A: "),
        ]  # fmt: skip
    for url, expected in cases:
        done = await cli.run(url)
        assert done.returncode == 2, (url, done.stdout, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert expected in lines[0], lines[0]
        assert PASSWORD not in done.stdout + done.stderr
    unknown = await cli.run(legacy.url, broker="nobody")
    assert unknown.returncode == 2
    assert unknown.stderr.strip().startswith("error: no valid broker 'nobody' in ")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_progress_bar_on_a_terminal_and_a_plain_summary_otherwise(
    make_legacy: LegacyFactory, cli: Cli
):
    legacy = await make_legacy()
    await legacy.create("telegram_messages", MESSAGE_COLUMNS)
    await legacy.insert(
        "telegram_messages", [message(i, 9000 + i % 7, f"m{i}", telegram_id=i) for i in
                              range(1, 3001)]
    )  # fmt: skip
    args = cli.args(legacy.url, "--batch-size", "100")

    # stderr on a pseudo-terminal: the bar, redrawn in place; the summary still on stdout.
    leader, follower = pty.openpty()
    env = {**cli.env(), "COLUMNS": "100"}
    process = subprocess.Popen(  # noqa: S603
        args, env=env, cwd=cli.tmp_path, stdout=subprocess.PIPE, stderr=follower, text=True
    )
    os.close(follower)
    shown = (await asyncio.to_thread(_read_all, leader)).replace("\r\n", "\n")
    stdout = await asyncio.to_thread(process.communicate, None, PROCESS_SECONDS)
    assert process.returncode == 0, shown
    assert shown.count("\r[") >= 2, shown  # drawn, then redrawn
    final = shown.rsplit("\r", 1)[-1]
    assert final.startswith("[" + "#" * 10) and "100% 3,000/3,000 rows" in final, final
    assert "rows/s" in final and final.endswith("\n")
    assert "done: read 3,000 legacy rows" in stdout[0]

    # Not a terminal: no bar at all, only the summary.
    await rows_changed_sqlite(cli.database_url, "DELETE FROM legacy_imports")
    plain = await cli.run(legacy.url, "--batch-size", "100")
    assert plain.returncode == 0
    assert plain.stderr == ""
    assert "\r" not in plain.stdout and "done: read 3,000 legacy rows" in plain.stdout
    assert figures(plain.stdout)["messages already present"] == 3000


def _read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: the other end closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(fd)
    return b"".join(chunks).decode()


async def rows_changed_sqlite(database_url: str, sql: str) -> None:
    path = sa.make_url(database_url).database
    with sqlite3.connect(path) as conn:
        conn.execute(sql)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_leadline_database_not_there_is_exit_2_before_any_batch(
    make_legacy: LegacyFactory, tmp_path: Path
):
    legacy = await full_legacy(make_legacy)
    unreachable = f"postgresql+asyncpg://leadline:{PASSWORD}@127.0.0.1:9/leadline"
    done = await Cli(tmp_path, unreachable).run(legacy.url)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot use the Leadline database postgresql+asyncpg://")
    assert PASSWORD not in done.stdout + done.stderr
    missing = f"sqlite+aiosqlite:///{tmp_path / 'nowhere' / 'leadline.db'}"
    dry = await Cli(tmp_path, missing).run(legacy.url, "--dry-run")
    assert dry.returncode == 2, dry.stdout + dry.stderr
    assert dry.stderr.startswith("error: no Leadline database at ")
