"""Shared fixtures: real SQLite files, a real PostgreSQL database, the real app on loopback.

PostgreSQL: the server at LEADLINE_TEST_POSTGRES_URL (default 127.0.0.1:5432,
trust auth, database `test`) gets one scratch database per test session.
Where it is unreachable the PostgreSQL cases skip — except under CI
(`CI=true`), where they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
import sqlalchemy as sa
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.registry import Registry, discover
from leadline.config.brokers import BrokersFile
from leadline.config.loader import load_brokers_file
from leadline.config.settings import Settings
from leadline.runtime.http import SERVICE, build_app
from leadline.runtime.logs import Redactor
from leadline.runtime.service import Service
from leadline.storage import models as _models  # noqa: F401  (the tables of SQLModel.metadata)
from leadline.storage.engine import make_engine, make_session_factory
from leadline.storage.migrate import upgrade
from leadline.storage.types import utcnow

T = TypeVar("T")
REPO = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).resolve().parent / "fakes" / "plugins"
POSTGRES_ADMIN = os.environ.get(
    "LEADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
# Every table of the models: one added later is emptied between tests too.
TABLES = tuple(table.name for table in reversed(SQLModel.metadata.sorted_tables))


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


# --- PostgreSQL ----------------------------------------------------------------


def _run_apart(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on its own loop in a thread: session fixtures may be set up
    while a test's loop is already running."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A scratch PostgreSQL database with the migrations applied, for this test session."""
    name = f"leadline_test_{uuid.uuid4().hex[:10]}"
    try:
        _run_apart(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        message = f"PostgreSQL at {POSTGRES_ADMIN} unreachable: {exc!r}"
        if under_ci():
            pytest.fail(message + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(message)
    admin = sa.make_url(POSTGRES_ADMIN)
    url = admin.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )

    async def migrate() -> None:
        engine = make_engine(url)
        await upgrade(engine)
        await engine.dispose()

    _run_apart(migrate())
    yield url
    _run_apart(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _truncate(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL one."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'leadline.db'}"
        engine = make_engine(url)
        await upgrade(engine)
        await engine.dispose()
        return url
    url = request.getfixturevalue("postgres_url")
    await _truncate(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file path (not yet migrated), for tests about SQLite itself."""
    return f"sqlite+aiosqlite:///{tmp_path / 'leadline.db'}"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_session_factory(engine)


# --- the application -----------------------------------------------------------

DEMO_TOML = """
[brokers.demo]
name = "Demo Realty"
timezone = "America/Argentina/Buenos_Aires"
default_provider = "webchat"

[brokers.demo.providers.webchat]

[brokers.demo.providers.signed]
secret = "${DEMO_SIGNED_SECRET}"

[brokers.demo.templates]
welcome = "Hi {name}! Thanks for writing to {broker}."

[brokers.acme]
name = "Acme Homes"

[brokers.acme.providers.signed]
secret = "${ACME_SIGNED_SECRET}"

[brokers.acme.features]
auto_reply = false
"""

TEST_ENV = {"DEMO_SIGNED_SECRET": "demo-signing-secret", "ACME_SIGNED_SECRET": "acme-secret-42"}


@dataclass
class AppHarness:
    client: TestClient
    settings: Settings
    brokers: BrokersFile

    @property
    def service(self) -> Service:
        return self.client.app[SERVICE]

    def adapter(self, broker_id: str, provider: str):
        adapter = self.service.channels.up(broker_id, provider)
        assert adapter is not None, f"{broker_id}/{provider} is not up"
        return adapter

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))


def make_settings(database_url: str, brokers_file: Path, **overrides: object) -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        brokers_file=brokers_file,
        **{"plugins_dir": PLUGINS, **overrides},
    )


def load_test_brokers(settings: Settings, env: dict[str, str]) -> tuple[Registry, BrokersFile]:
    registry = discover(settings.plugins_dir, use_entry_points=False)
    return registry, load_brokers_file(settings.brokers_file, registry.config_models(), env)


AppFactory = Callable[..., Awaitable[AppHarness]]


@pytest.fixture
async def make_app(
    database_url: str, tmp_path: Path, aiohttp_client: Callable[..., object]
) -> AppFactory:
    """Start the real application (a loopback server) on a brokers file of the test's choosing."""

    async def start(
        toml: str = DEMO_TOML,
        env: dict[str, str] | None = None,
        clock: Callable[[], datetime] = utcnow,
        **settings: object,
    ) -> AppHarness:
        brokers_file = tmp_path / "brokers.toml"
        brokers_file.write_text(toml)
        settings = make_settings(database_url, brokers_file, **settings)
        registry, brokers = load_test_brokers(settings, env if env is not None else TEST_ENV)
        redactor = Redactor(brokers.secrets)
        app = build_app(settings, brokers, registry, redactor, clock)
        client = await aiohttp_client(app)  # type: ignore[operator]
        return AppHarness(client, settings, brokers)

    return start  # type: ignore[return-value]


@pytest.fixture
async def app(make_app: AppFactory) -> AppHarness:
    return await make_app()


async def wait_for(
    predicate: Callable[[], asyncio.Future[bool]], timeout: float = 10.0, interval: float = 0.05
) -> None:
    """Poll an async predicate until it holds; fail the test after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
