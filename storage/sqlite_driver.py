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

The writers of one engine take turns in a `WriterLane`, urgent ones (the
dispatcher's outcomes) first: see there why.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import aiosqlite

Description = tuple[tuple[Any, ...], ...] | None
Outcome = tuple[Description, int, int | None, list[Any]]


# Set by the writers that must not wait behind the others (see `urgent_writes`).
_URGENT: ContextVar[bool] = ContextVar("leadline_urgent_write", default=False)


@contextlib.contextmanager
def urgent_writes() -> Iterator[None]:
    """Transactions begun in this block go to the head of their engine's `WriterLane`."""
    token = _URGENT.set(True)
    try:
        yield
    finally:
        _URGENT.reset(token)


class WriterLane:
    """The write transactions of one engine, one at a time, in turn, urgent ones first.

    Every transaction here is BEGIN IMMEDIATE: one writer at a time, the others
    left to SQLite's busy handler, which sleeps and tries again (1, 2, 5 ... up to
    100 ms between tries). Whoever tries first after a commit wins, however long it
    has waited: under API load an outcome of a send waited behind API transactions
    for up to 0.77 s, and throughput fell as the waiters slept past free moments.
    So a connection takes the lane before it sends BEGIN and hands it on at its
    COMMIT or ROLLBACK: this process's writers go in turn, urgent ones first, and
    each BEGIN finds SQLite's lock free unless another process holds it (then the
    busy handler applies as before). A transaction already begun is never passed:
    an urgent one waits for it to end, and for no other of this process.

    The lane only orders; SQLite's lock still keeps writers apart. So a writer that
    waited `timeout` (the busy timeout: a transaction that long is stuck, or waits
    for another of this process) takes the lane over and goes on, as it would have
    without the lane.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._held = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> tuple[int, int]:
        """Writers waiting for the lane: (urgent, others)."""
        return len(self._urgent), len(self._normal)

    async def acquire(self, urgent: bool) -> None:
        if not self._held:
            self._held = True
            return
        turn = asyncio.get_running_loop().create_future()
        queue = self._urgent if urgent else self._normal
        queue.append(turn)
        try:
            await asyncio.wait_for(asyncio.shield(turn), self._timeout)
        except TimeoutError:
            if not turn.done():
                queue.remove(turn)  # taken over: see the class's docstring
        except asyncio.CancelledError:
            if turn.done():
                self.release()  # handed to us as we were cancelled: hand it on
            else:
                queue.remove(turn)
            raise

    def release(self) -> None:
        for queue in (self._urgent, self._normal):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)  # handed over: still held
                    return
        self._held = False


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
        if connection.pending_begin is not None:
            await connection.enter_lane()
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
    lane: WriterLane | None = None  # its engine's: taken before BEGIN, until the end
    _in_lane = False

    def cursor(self) -> OneTripCursor:  # type: ignore[override]
        return OneTripCursor(self)

    async def enter_lane(self) -> None:
        if self.lane is not None and not self._in_lane:
            await self.lane.acquire(_URGENT.get())
            self._in_lane = True

    def leave_lane(self) -> None:
        if self._in_lane:
            self._in_lane = False
            assert self.lane is not None
            self.lane.release()

    async def commit(self) -> None:
        self.pending_begin = None
        try:
            if self.in_transaction:  # sqlite3's own flag, read without a trip
                await super().commit()
        finally:
            self.leave_lane()  # once committed: the next writer's BEGIN finds the lock free

    async def rollback(self) -> None:
        self.pending_begin = None
        try:
            if self.in_transaction:
                await super().rollback()
        finally:
            self.leave_lane()

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self.leave_lane()


def connect(database: str, lane: WriterLane | None = None, **kwargs: Any) -> OneTripConnection:
    """Like `aiosqlite.connect`, with the one-trip cursor; its writes take turns in `lane`."""
    connector: Callable[[], sqlite3.Connection] = lambda: sqlite3.connect(database, **kwargs)  # noqa: E731
    connection = OneTripConnection(connector, iter_chunk_size=64)
    connection.lane = lane
    # As SQLAlchemy does for aiosqlite's own connections: a connection never closed
    # must not keep the interpreter from exiting.
    connection._thread.daemon = True
    return connection
