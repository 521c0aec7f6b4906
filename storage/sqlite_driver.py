"""aiosqlite with one trip to its thread per statement.

SQLAlchemy's aiosqlite adapter awaits four calls for every statement: open a
cursor, execute, fetch the rows, close the cursor. Each is a hand-over to
aiosqlite's thread and back (a queue put, a thread wake-up, a wake-up of the
event loop), which cost more CPU than the statement itself for the small
statements of a group commit. The cursor here does all four in one trip: rows
are fetched at once (nothing here streams results), and the sqlite3 cursor is
closed before the trip returns, so `close` has nothing left to do.

Two more trips are saved per transaction: BEGIN travels with the transaction's
first statement, and COMMIT or ROLLBACK with no transaction open (sqlite3 would
do nothing) stays on this side.

It builds on internals of aiosqlite: `Connection._execute` and `_conn`, which
aiosqlite's own cursor uses, and `_thread`, which SQLAlchemy sets as we do. The
SQLite tests exercise every path here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

Description = tuple[tuple[Any, ...], ...] | None
Outcome = tuple[Description, int, int | None, list[Any]]


def _run(
    conn: sqlite3.Connection, begin: str | None, sql: str, parameters: Any, many: bool
) -> Outcome:  # runs on aiosqlite's thread
    cursor = conn.cursor()
    try:
        if begin is not None:
            cursor.execute(begin)
        if many:
            cursor.executemany(sql, parameters)
        else:
            cursor.execute(sql, () if parameters is None else parameters)
        rows = cursor.fetchall() if cursor.description else []
        return cursor.description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


class OneTripCursor:
    """The part of aiosqlite's cursor that SQLAlchemy's adapter uses."""

    arraysize = 1

    def __init__(self, connection: OneTripConnection) -> None:
        self._connection = connection
        self.description: Description = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[Any] = []

    async def __aenter__(self) -> OneTripCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = None) -> OneTripCursor:
        return await self._trip(sql, parameters, many=False)

    async def executemany(self, sql: str, parameters: Sequence[Any]) -> OneTripCursor:
        return await self._trip(sql, parameters, many=True)

    async def _trip(self, sql: str, parameters: Any, many: bool) -> OneTripCursor:
        connection = self._connection
        conn = connection._conn  # raises ValueError once closed, as aiosqlite does
        begin, connection.pending_begin = connection.pending_begin, None
        outcome: Outcome = await connection._execute(_run, conn, begin, sql, parameters, many)
        self.description, self.rowcount, self.lastrowid, self._rows = outcome
        return self

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        return rows

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = size or self.arraysize
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def fetchone(self) -> Any:
        return self._rows.pop(0) if self._rows else None

    async def close(self) -> None:
        self._rows = []


class OneTripConnection(aiosqlite.Connection):
    # Sent before the next statement, in its trip (set by the engine's begin hook).
    pending_begin: str | None = None

    def cursor(self) -> OneTripCursor:  # type: ignore[override]
        return OneTripCursor(self)

    async def commit(self) -> None:
        self.pending_begin = None
        if self.in_transaction:  # sqlite3's own flag, read without a trip
            await super().commit()

    async def rollback(self) -> None:
        self.pending_begin = None
        if self.in_transaction:
            await super().rollback()


def connect(database: str, **kwargs: Any) -> OneTripConnection:
    """Like `aiosqlite.connect`, with the one-trip cursor."""
    connector: Callable[[], sqlite3.Connection] = lambda: sqlite3.connect(database, **kwargs)  # noqa: E731
    connection = OneTripConnection(connector, iter_chunk_size=64)
    # As SQLAlchemy does for aiosqlite's own connections: a connection never closed
    # must not keep the interpreter from exiting.
    connection._thread.daemon = True
    return connection
