"""The async engine and session factory, for SQLite (WAL) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage import sqlite_driver

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=10000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)


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
        sa.event.listen(engine.sync_engine, "do_connect", _sqlite_open)
        sa.event.listen(engine.sync_engine, "connect", _sqlite_connect)
        sa.event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(parsed, echo=echo, pool_pre_ping=True)


def _sqlite_open(
    dialect: sa.Dialect, _record: Any, cargs: list[Any], cparams: dict[str, Any]
) -> Any:
    # SQLAlchemy's aiosqlite adapter around our one-trip aiosqlite connection
    # (sqlite_driver), opened with the arguments SQLAlchemy derived from the URL.
    return dialect.loaded_dbapi.connect(*cargs, async_creator_fn=sqlite_driver.connect, **cparams)


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
