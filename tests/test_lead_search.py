"""Lead search (`q`) ignores case and accents on SQLite and PostgreSQL, through the
normalized `leads.search_text` that every write keeps up to date and migration 0005 fills,
and an index serves it (FTS5 trigram on SQLite, pg_trgm GIN on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction
from leadline.storage import crm, search
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory
from leadline.storage.importing import HistoryImport, HistoryRow, LeadDetails, LeadKey
from leadline.storage.leads import ChannelIdentity, ensure_lead, rekey_channel, resolve_leads
from leadline.storage.migrate import upgrade
from leadline.storage.profiles import Nameless, name_lead
from tests.conftest import POSTGRES_ADMIN, AppFactory, AppHarness, wait_for
from tests.helpers import rows
from tests.test_api import ENV, auth, deliver, get, lead_id, message, toml

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def brokers(sessions: Sessions) -> Sessions:
    async with sessions() as session, session.begin():
        records = [BrokerRecord("demo", "Demo", "UTC"), BrokerRecord("acme", "Acme", "UTC")]
        await upsert_brokers(session, records)
    return sessions


async def find(sessions: Sessions, q: str, broker: str = "demo") -> list[str | None]:
    """The names of the leads `q` finds, in id order."""
    async with sessions() as session:
        found = await crm.list_leads(session, broker, crm.LeadFilter(text=q), 0, 100)
    return [lead.name for lead in found]


async def new_lead(
    sessions: Sessions,
    user: str,
    name: str | None = None,
    username: str | None = None,
    provider: str = "telegram",
) -> int:
    async with sessions() as session, session.begin():
        who = ChannelIdentity("demo", provider, user, username, name)
        return await ensure_lead(session, who)


async def edit(sessions: Sessions, lead: int, **changes: Any) -> None:
    async with sessions() as session, session.begin():
        assert await crm.update_lead(session, "demo", lead, changes) is not None


# --- the normalizer --------------------------------------------------------------------------


def test_fold_drops_case_accents_and_extra_spaces() -> None:
    assert search.fold("  Ángela   NÚÑEZ ") == "angela nunez"
    assert search.fold("João Conceição") == "joao conceicao"
    assert search.fold("STRAẞE ﬁnca") == "strasse finca"
    assert search.fold("Ǆ\u210c") == "dzh"  # compatibility forms, and their case


def test_a_query_that_looks_like_a_phone_is_searched_by_its_digits() -> None:
    assert search.needle("+54 9 (11) 5555-0000") == "5491155550000"
    assert search.needle("\uff15\uff14\uff19") == "549"  # full-width digits
    assert search.needle("@Ángela_N") == "angela_n"
    assert search.needle("Pat 3") == "pat 3"
    assert search.needle(" \u0301 ") == ""  # folds to nothing: no filter


def test_search_text_holds_name_phone_digits_usernames_and_user_ids() -> None:
    text = search.compose("Ángela Núñez", "+54 9 11 5555-0000", [("JoãoM", "12345"), (None, "9")])
    assert text.split(search.SEPARATOR) == ["angela nunez", "5491155550000", "joaom", "12345", "9"]


# --- searching --------------------------------------------------------------------------------


async def test_any_case_or_accents_find_angela_nunez(brokers: Sessions) -> None:
    await new_lead(brokers, "1", "Ángela Núñez")
    await new_lead(brokers, "2", "Angelo Nunes")
    await new_lead(brokers, "3", "Mariángela")
    for q in ("angela", "ÁNGELA", "Angela", "Ángela"):
        assert await find(brokers, q) == ["Ángela Núñez", "Mariángela"], q
    for q in ("nunez", "NÚÑEZ", "Núñez", "  ángela   NUÑEZ "):
        assert await find(brokers, q) == ["Ángela Núñez"], q
    assert await find(brokers, "angela", broker="acme") == []  # another broker's leads


async def test_a_username_with_accents_is_found_without_them_and_with_an_at(
    brokers: Sessions,
) -> None:
    await new_lead(brokers, "1", "Joana", username="João_Conceição")
    await new_lead(brokers, "2", "Other", username="joaox")
    for q in ("joao_conceicao", "JOÃO_", "@joão_c", "conceição"):
        assert await find(brokers, q) == ["Joana"], q


async def test_a_phone_is_found_however_it_is_written(brokers: Sessions) -> None:
    ana = await new_lead(brokers, "1", "Ana")
    await new_lead(brokers, "2", "Bo")
    await edit(brokers, ana, phone="+54 9 11 5555-0000")
    for q in ("+54 9 11", "5491 1", "11 5555", "(11) 5555-0000", "549115555"):
        assert await find(brokers, q) == ["Ana"], q
    assert await find(brokers, "+34 9") == []


async def test_a_whatsapp_user_id_is_a_phone_found_by_its_digits(brokers: Sessions) -> None:
    await new_lead(brokers, "5491155550000", "Ana", provider="whatsapp")
    assert await find(brokers, "+54 9 11 5555") == ["Ana"]


async def test_like_and_glob_wildcards_in_q_stand_for_themselves(brokers: Sessions) -> None:
    for user, name in enumerate(["100% Casas", "1000 Casas", "a_b", "axb", "r*x", "rzx", "[q]"]):
        await new_lead(brokers, str(user), name)
    assert await find(brokers, "100%") == ["100% Casas"]
    assert await find(brokers, "a_b") == ["a_b"]
    assert await find(brokers, "r*x") == ["r*x"]
    assert await find(brokers, "r?x") == []
    assert await find(brokers, "[q") == ["[q]"]
    assert await find(brokers, "\\") == []


async def test_a_query_of_only_spaces_or_accents_filters_nothing(brokers: Sessions) -> None:
    await new_lead(brokers, "1", "Ana")
    await new_lead(brokers, "2", None)
    assert await find(brokers, " \u0301 ") == ["Ana", None]


# --- every write keeps search_text up to date ---------------------------------------------------


async def test_a_new_telegram_username_is_found_and_the_old_one_no_more(brokers: Sessions) -> None:
    await new_lead(brokers, "1", "Ana", username="viejo_josé")
    async with brokers() as session, session.begin():
        await resolve_leads(session, [ChannelIdentity("demo", "telegram", "1", "nuevo_josé")])
    assert await find(brokers, "nuevo_jose") == ["Ana"]
    assert await find(brokers, "viejo") == []


async def test_a_lead_named_from_its_profile_is_found_by_that_name(brokers: Sessions) -> None:
    lead = await new_lead(brokers, "psid-1", provider="messenger")
    who = Nameless(lead, "demo", "messenger", "psid-1")
    async with brokers() as session, session.begin():
        assert await name_lead(session, who, "Ángela Núñez", "angie.núñez")
    assert await find(brokers, "angela") == ["Ángela Núñez"]
    assert await find(brokers, "angie.nunez") == ["Ángela Núñez"]


async def test_a_rekeyed_chat_is_found_by_its_new_id(brokers: Sessions) -> None:
    await new_lead(brokers, "-4001", "Grupo")
    async with brokers() as session, session.begin():
        await rekey_channel(session, "demo", "telegram", "-4001", "-1009001")
    assert await find(brokers, "-1009001") == ["Grupo"]
    assert await find(brokers, "-4001") == []


async def test_imported_leads_are_found_by_their_legacy_name_phone_and_username(
    brokers: Sessions,
) -> None:
    async def details(keys: Sequence[LeadKey]) -> Mapping[LeadKey, LeadDetails]:
        return {7: LeadDetails("Ángela Núñez", "+54 9 11 5555-0000")}

    at = datetime(2025, 1, 1, tzinfo=UTC)
    rows_ = [
        HistoryRow(1, "111", "angie_n", 7, "111:1", "hola", Direction.IN, False, at),
        HistoryRow(2, "222", "Zoë", None, "222:1", "hi", Direction.IN, False, at),
    ]
    run = HistoryImport("demo", "telegram", "legacy.db:messages", dry_run=False)
    async with brokers() as session, session.begin():
        await run.start(session)
        await run.store(session, rows_, 2, 0, details)
    assert await find(brokers, "NUNEZ") == ["Ángela Núñez"]
    assert await find(brokers, "5491155") == ["Ángela Núñez"]
    assert await find(brokers, "angie_n") == ["Ángela Núñez"]
    assert await find(brokers, "zoe") == ["Zoë"]


@pytest.fixture
async def api(make_app: AppFactory) -> AppHarness:
    app = await make_app(toml(), env=ENV)
    await deliver(app, "demo", message("m1", "u1", "hola", "Ana"), message("m2", "u2", "hi", "Bo"))
    return app


async def names(app: AppHarness, q: str) -> list[str]:
    status, page = await get(app, "/api/v1/leads", q=q)
    assert status == 200
    return [lead["name"] for lead in page["items"]]


async def test_a_lead_renamed_through_the_api_is_found_by_its_new_name_only(
    api: AppHarness,
) -> None:
    path = f"/api/v1/leads/{await lead_id(api, 'demo', 'u1')}"
    response = await api.client.patch(path, headers=auth(), json={"name": "Ángela Núñez"})
    assert response.status == 200
    assert await names(api, "ANGELA") == ["Ángela Núñez"]
    assert await names(api, "nunez") == ["Ángela Núñez"]
    assert await names(api, "ana") == []


async def test_a_merged_lead_is_found_by_the_phone_and_channel_it_took_in(
    api: AppHarness,
) -> None:
    ana, bo = await lead_id(api, "demo", "u1"), await lead_id(api, "demo", "u2")
    patch = await api.client.patch(
        f"/api/v1/leads/{bo}", headers=auth(), json={"phone": "+55 11 98888-7777"}
    )
    assert patch.status == 200
    merge = await api.client.post(
        f"/api/v1/leads/{ana}/merge", headers=auth(), json={"merge_lead_id": bo}
    )
    assert merge.status == 200
    assert await names(api, "5511 9888") == ["Ana"]
    assert await names(api, "u2") == ["Ana"]
    assert await names(api, "bo") == []  # the name of the lead merged in is not kept


# --- the index serves it -----------------------------------------------------------------------


async def _plan(engine: AsyncEngine, sessions: Sessions, q: str) -> str:
    async with sessions() as session:
        query = crm.leads_query(session, "demo", crm.LeadFilter(text=q), 0, 51)
        sql = str(query.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
    async with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            plan = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            return "\n".join(str(row[-1]) for row in plan)
        await conn.exec_driver_sql("ANALYZE leads")
        plan = await conn.exec_driver_sql(f"EXPLAIN {sql}")
        return "\n".join(str(row[0]) for row in plan)


async def test_the_search_is_served_by_an_index(engine: AsyncEngine, brokers: Sessions) -> None:
    async with engine.begin() as conn:  # enough leads that PostgreSQL's planner wants an index
        await conn.execute(
            sa.text(
                "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 20000) "
                "INSERT INTO leads (broker_id, name, tags, search_text) "
                "SELECT 'demo', 'lead ' || n, '[]', 'lead ' || n FROM g"
            )
        )
    await new_lead(brokers, "1", "Ángela Núñez")
    plan = await _plan(engine, brokers, "ángela")
    if engine.dialect.name == "sqlite":  # the GLOB handed to the FTS5 trigram index,
        assert "SCAN leads_search VIRTUAL TABLE INDEX 0:G" in plan, plan
        # and its hits looked up by id rather than every lead of the broker checked
        assert "SEARCH leads USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    else:
        assert f"Bitmap Index Scan on {search.POSTGRES_INDEX}" in plan, plan
        # bound values planned as such: a generic plan would read the leads in id order
        async with brokers() as session:
            await search.plan_for_the_pattern(session, "ángela")
            mode = await session.exec(sa.text("SHOW plan_cache_mode"))
            assert mode.scalar_one() == "force_custom_plan"
    assert await find(brokers, "ángela") == ["Ángela Núñez"]


async def test_the_sqlite_index_triggers_are_there_at_head(sqlite_url: str) -> None:
    """A later migration rebuilding `leads` (batch mode) would drop them silently."""
    engine = make_engine(sqlite_url)
    try:
        await upgrade(engine)
        found = await rows(engine, "SELECT name FROM sqlite_master WHERE type = 'trigger'")
    finally:
        await engine.dispose()
    assert set(search.SQLITE_TRIGGERS) <= {row["name"] for row in found}


# --- migration 0005 fills the column for the leads stored before it ------------------------------


@asynccontextmanager
async def scratch_postgres() -> AsyncIterator[sa.URL]:
    """A new, empty PostgreSQL database, dropped afterwards."""
    name = f"leadline_search_{uuid.uuid4().hex[:10]}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(POSTGRES_ADMIN).set(drivername="postgresql+asyncpg", database=name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _admin(sql: str, database: str | None = None) -> None:
    url = sa.make_url(POSTGRES_ADMIN)
    url = url.set(database=database) if database else url
    conn = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no schema at all: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'before.db'}"
        return
    request.getfixturevalue("postgres_url")  # skips, or fails under CI, when unreachable
    async with scratch_postgres() as url:
        yield url.render_as_string(hide_password=False)


async def _leads_at_0004(engine: AsyncEngine) -> None:
    await upgrade(engine, "0004")
    async with engine.begin() as conn:
        await conn.execute(
            sa.text("INSERT INTO brokers (id, name, timezone) VALUES ('demo', 'Demo', 'UTC')")
        )
        for i, (name, phone, username) in enumerate(
            [("Ángela Núñez", "+54 9 11 5555-0000", "angie_ñ"), ("Bo", None, "João")], 1
        ):
            await conn.execute(
                sa.text(
                    "INSERT INTO leads (id, broker_id, name, phone, tags) "
                    "VALUES (:i, 'demo', :name, :phone, '[]')"
                ),
                {"i": i, "name": name, "phone": phone},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO lead_channels (lead_id, broker_id, provider, channel_user_id, "
                    "channel_username) VALUES (:i, 'demo', 'telegram', :u, :username)"
                ),
                {"i": i, "u": f"10{i}", "username": username},
            )


async def test_the_migration_fills_search_text_for_leads_stored_before_it(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        await _leads_at_0004(engine)
        await upgrade(engine)
        sessions = make_session_factory(engine)
        assert await find(sessions, "angela") == ["Ángela Núñez"]
        assert await find(sessions, "NUNEZ") == ["Ángela Núñez"]
        assert await find(sessions, "+54 9 11") == ["Ángela Núñez"]
        assert await find(sessions, "angie_n") == ["Ángela Núñez"]
        assert await find(sessions, "joao") == ["Bo"]
        assert await find(sessions, "102") == ["Bo"]
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_role_that_may_not_create_pg_trgm_gets_no_index_and_a_working_search(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"leadline_plain_{uuid.uuid4().hex[:8]}"
    await _admin(f'CREATE ROLE "{role}" LOGIN')
    try:
        async with scratch_postgres() as url:
            # The schema's owner, not the database's: no CREATE on it, so no extension.
            await _admin(f'ALTER SCHEMA public OWNER TO "{role}"', database=url.database)
            engine = make_engine(url.set(username=role).render_as_string(hide_password=False))
            try:
                with caplog.at_level(logging.WARNING, "leadline.storage.migrations"):
                    await _leads_at_0004(engine)
                    await upgrade(engine)
                assert "no index, the pg_trgm extension could not be created" in caplog.text
                indexes = await rows(
                    engine, "SELECT indexname FROM pg_indexes WHERE tablename = 'leads'"
                )
                assert search.POSTGRES_INDEX not in {row["indexname"] for row in indexes}
                assert await find(make_session_factory(engine), "ángela") == ["Ángela Núñez"]
            finally:
                await engine.dispose()
    finally:
        await _admin(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.postgres
async def test_a_username_changed_while_the_api_renames_the_lead_is_not_lost(
    postgres_url: str,
) -> None:
    """PostgreSQL: the rename reads the lead's channels after the username change committed
    (it waits for the lead's row), not before."""
    async with scratch_postgres() as url:
        engine = make_engine(url.render_as_string(hide_password=False))
        try:
            await upgrade(engine)
            sessions = make_session_factory(engine)
            async with sessions() as session, session.begin():
                await upsert_brokers(session, [BrokerRecord("demo", "Demo", "UTC")])
            lead = await new_lead(sessions, "1", "Ana", username="old_name")
            async with sessions() as changing, changing.begin():
                renamed = ChannelIdentity("demo", "telegram", "1", "nuevo_josé")
                await resolve_leads(changing, [renamed])  # holds the lead's row till commit
                api_edit = asyncio.create_task(edit(sessions, lead, name="Ángela"))
                await wait_for(lambda: _waiting_on_a_lock(engine, url.database), timeout=30)
            await asyncio.wait_for(api_edit, timeout=30)
            assert await find(sessions, "jose") == ["Ángela"]
            assert await find(sessions, "old_name") == []
        finally:
            await engine.dispose()


async def _waiting_on_a_lock(engine: AsyncEngine, database: str | None) -> bool:
    found = await rows(
        engine,
        "SELECT pid FROM pg_stat_activity WHERE datname = :db AND wait_event_type = 'Lock'",
        db=database,
    )
    return bool(found)
