"""The async engine and session factory, for SQLite (WAL) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage import sqlite_driver
from leadline.storage.sqlite_driver import urgent_writes as urgent_writes

BUSY_TIMEOUT_SECONDS = 10.0
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_SECONDS * 1000:.0f}",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)
# A SQLite engine's writers take turns here (see sqlite_driver.WriterLane).
_LANES: weakref.WeakKeyDictionary[sa.Engine, sqlite_driver.WriterLane] = weakref.WeakKeyDictionary()


class DatabaseUrlError(ValueError):
    pass


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise DatabaseUrlError("LEADLINE_DATABASE_URL is not a database URL") from None
    if parsed.get_backend_name() not in {"sqlite", "postgresql"}:
        raise DatabaseUrlError("LEADLINE_DATABASE_URL must be sqlite+aiosqlite or postgresql")
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(parsed, echo=echo)
        lane = _LANES[engine.sync_engine] = sqlite_driver.WriterLane(BUSY_TIMEOUT_SECONDS)
        sa.event.listen(engine.sync_engine, "do_connect", functools.partial(_sqlite_open, lane))
        sa.event.listen(engine.sync_engine, "connect", _sqlite_connect)
        sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(parsed, echo=echo, pool_pre_ping=True)


def writer_lane(engine: AsyncEngine) -> sqlite_driver.WriterLane | None:
    """Where a SQLite engine's writers wait their turn; None on PostgreSQL."""
    return _LANES.get(engine.sync_engine)


def _sqlite_open(
    lane: sqlite_driver.WriterLane,
    dialect: sa.Dialect,
    _record: Any,
    cargs: list[Any],
    cparams: dict[str, Any],
) -> Any:
    # SQLAlchemy's aiosqlite adapter around our one-trip aiosqlite connection
    # (sqlite_driver), opened with the arguments SQLAlchemy derived from the URL.
    connect = functools.partial(sqlite_driver.connect, lane=lane)
    return dialect.loaded_dbapi.connect(*cargs, async_creator_fn=connect, **cparams)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Leave BEGIN to us (below) instead of the driver's implicit, deferred one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _sqlite_begin(connection: sa.Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with
    # SQLITE_BUSY when another writer got in between; IMMEDIATE takes the write
    # lock up front and waits for it (busy_timeout) instead.
    # The driver sends it with the transaction's first statement, in the same trip
    # to its thread (sqlite_driver).
    driver: sqlite_driver.OneTripConnection = connection.connection.driver_connection  # type: ignore[assignment]
    driver.pending_begin = "BEGIN IMMEDIATE"


def make_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def safe_url(url: str | sa.URL) -> str:
    """The URL with its passwords hidden, for logs: the one before `@` and any given as
    a query parameter (`?password=`, which the drivers take too)."""
    try:
        parsed = url if isinstance(url, sa.URL) else sa.make_url(url)
    except sa.exc.ArgumentError:
        return "<invalid database URL>"
    hidden = dict.fromkeys(_password_keys(parsed), "***")
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


def url_secrets(url: sa.URL) -> list[str]:
    """Every password the URL holds, to scrub from a driver's error text."""
    found = [str(url.password)] if url.password else []
    for key in _password_keys(url):
        value = url.query[key]
        found.extend([value] if isinstance(value, str) else value)
    return [secret for secret in found if secret]


def _password_keys(url: sa.URL) -> list[str]:
    return [key for key in url.query if "password" in key.lower()]


class ReservedSessions:
    """Sessions on one connection kept out of the pool, for a writer that must not wait
    behind the others for a connection: under load every pooled connection may be held
    by a request waiting its turn to write, and a writer first in the `WriterLane` would
    still queue for the pool behind them. Until `open` (and after `close`), sessions of
    the pool. A connection that failed (invalidated) is replaced at the next session."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._engine: AsyncEngine = sessions.kw["bind"]
        self._connection: AsyncConnection | None = None
        self._open = False

    def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        if not self._open:
            async with self._sessions() as session:
                yield session
            return
        connection = self._connection
        if connection is None or connection.closed or connection.invalidated:
            if connection is not None:
                await connection.close()
            connection = self._connection = await self._engine.connect()
        async with AsyncSession(bind=connection, expire_on_commit=False) as session:
            yield session
