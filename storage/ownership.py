"""Which process of several on one database does a one-at-a-time job.

A Telegram bot answers getUpdates to one caller at a time: two processes polling
it take turns failing with 409. So each poller is owned by one process, and when
that process dies another takes over. The owner is whoever holds a named lock
that dies with its holder:

- PostgreSQL: session-level advisory locks, all on one connection kept for them,
  outside any transaction. The server drops them when the process or the
  connection dies.
- SQLite: open-file-description byte-range locks on a file beside the database
  (one byte per name). The kernel drops them when the process dies. Two owners in
  one process conflict too, like two processes.
- SQLite in memory: one process is all there is; it owns everything.

The same locks, shared, count the processes that do one thing together (send on
a channel), so that each keeps to its share of a limit they all must respect.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import struct
from collections.abc import Collection
from contextlib import suppress
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine


class Ownership(Protocol):
    async def try_take(self, name: str) -> bool:
        """Own `name` now if nobody else does (and keep owning it), else False."""
        ...

    async def holds(self, name: str) -> bool:
        """Still owned? False once the lock is gone, e.g. with its connection."""
        ...

    async def release(self, name: str) -> None: ...

    async def join(self, group: str) -> None:
        """Count this process among `group`'s members, until it closes or dies."""
        ...

    async def leave(self, group: str) -> None:
        """No longer count this process among `group`'s members."""
        ...

    async def members(self, groups: Collection[str]) -> dict[str, int]:
        """How many live processes have joined each group (0 for none)."""
        ...

    async def close(self) -> None:
        """Release everything."""
        ...


def ownership_for(engine: AsyncEngine) -> Ownership:
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return AdvisoryLocks(engine)
    if url.database in (None, "", ":memory:") or "mode=memory" in str(url):
        return SoleOwner()
    return FileLocks(Path(f"{url.database}-owners"))


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `name` (PostgreSQL's advisory lock key space)."""
    digest = hashlib.blake2b(f"leadline:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class SoleOwner:
    async def try_take(self, name: str) -> bool:
        return True

    async def holds(self, name: str) -> bool:
        return True

    async def release(self, name: str) -> None:
        return None

    async def join(self, group: str) -> None:
        return None

    async def leave(self, group: str) -> None:
        return None

    async def members(self, groups: Collection[str]) -> dict[str, int]:
        return dict.fromkeys(groups, 1)

    async def close(self) -> None:
        return None


JOIN_SQL = "SELECT pg_try_advisory_lock_shared(:key)"
# pg_locks shows a bigint advisory key as its two halves, with objsubid = 1.
MEMBERS_SQL = """
SELECT classid::bigint AS high, objid::bigint AS low, count(*) AS n FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 1 AND mode = 'ShareLock' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
GROUP BY classid, objid
"""


class AdvisoryLocks:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._held: set[str] = set()
        self._joined: set[str] = set()  # taken again on a new connection
        self._use = asyncio.Lock()  # one connection: one statement at a time

    async def try_take(self, name: str) -> bool:
        async with self._use:
            if name in self._held:
                return await self._alive()
            taken = await self._scalar("SELECT pg_try_advisory_lock(:key)", key=lock_key(name))
            if taken:
                self._held.add(name)
            return bool(taken)

    async def holds(self, name: str) -> bool:
        async with self._use:
            return name in self._held and await self._alive()

    async def release(self, name: str) -> None:
        async with self._use:
            if name in self._held:
                self._held.discard(name)
                with suppress(Exception):  # a dead connection has released it already
                    await self._scalar("SELECT pg_advisory_unlock(:key)", key=lock_key(name))

    async def join(self, group: str) -> None:
        async with self._use:
            if group in self._joined:
                return  # held once: a second hold would outlive one `leave`
            await self._scalar(JOIN_SQL, key=lock_key(group))
            self._joined.add(group)

    async def leave(self, group: str) -> None:
        async with self._use:
            if group in self._joined:
                self._joined.discard(group)
                with suppress(Exception):  # a dead connection has released it already
                    await self._scalar(
                        "SELECT pg_advisory_unlock_shared(:key)", key=lock_key(group)
                    )

    async def members(self, groups: Collection[str]) -> dict[str, int]:
        async with self._use:
            found = (await self._execute(MEMBERS_SQL)).all()
        # The halves are unsigned 32-bit oids: their product would overflow a bigint.
        counts = {(int(high) << 32) | int(low): int(n) for high, low, n in found}
        return {g: counts.get(lock_key(g) % 2**64, 0) for g in groups}

    async def close(self) -> None:
        async with self._use:
            await self._drop()
            self._joined.clear()

    async def _scalar(self, sql: str, **params: object) -> object:
        return (await self._execute(sql, **params)).scalar()

    async def _execute(self, sql: str, **params: object) -> sa.CursorResult[Any]:
        conn = await self._connection()
        try:
            return await conn.execute(sa.text(sql), params)
        except Exception:
            await self._drop()
            raise

    async def _alive(self) -> bool:
        try:
            await self._scalar("SELECT 1")
        except Exception:
            return False
        return True

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            conn = await self._engine.connect()
            # No transaction stays open on a connection that lives as long as the process.
            self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            for group in self._joined:
                await self._conn.execute(sa.text(JOIN_SQL), {"key": lock_key(group)})
        return self._conn

    async def _drop(self) -> None:
        # Whatever this connection held is gone with it (the server releases it).
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with suppress(Exception):
                await conn.invalidate()
                await conn.close()


# struct flock on Linux: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
_FLOCK = "hhqqi4x"
_BYTES = 1 << 30  # where in the file a name's byte may lie
# A group's members each lock one byte of its own among the group's SLOTS bytes,
# which lie past the names' bytes; counting the locked ones counts the members.
_SLOTS = 64
_GROUPS = 1 << 24


def _flock(kind: int, offset: int) -> bytes:
    """One byte at `offset`, for F_OFD_SETLK or F_OFD_GETLK."""
    return struct.pack(_FLOCK, kind, os.SEEK_SET, offset, 1, 0)


class FileLocks:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._held: set[str] = set()
        self._slots: dict[str, int] = {}  # group -> the byte this process locked in it

    async def try_take(self, name: str) -> bool:
        if name not in self._held and self._lock(await self._file(), self._byte(name)):
            self._held.add(name)
        return name in self._held

    async def holds(self, name: str) -> bool:
        return name in self._held  # the kernel keeps it while this process lives

    async def release(self, name: str) -> None:
        if name in self._held and self._fd is not None:
            self._held.discard(name)
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, self._byte(name)))

    async def join(self, group: str) -> None:
        if group in self._slots:
            return
        fd = await self._file()
        for slot in range(_SLOTS):
            if self._lock(fd, self._slot(group, slot)):
                self._slots[group] = slot
                return

    async def leave(self, group: str) -> None:
        slot = self._slots.pop(group, None)
        if slot is not None and self._fd is not None:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, self._slot(group, slot)))

    async def members(self, groups: Collection[str]) -> dict[str, int]:
        fd = await self._file()
        counts = {}
        for group in groups:
            mine = self._slots.get(group)
            others = sum(
                1 for slot in range(_SLOTS) if slot != mine and self._locked(fd, group, slot)
            )
            counts[group] = others + (mine is not None)
        return counts

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        self._held.clear()
        self._slots.clear()
        if fd is not None:
            os.close(fd)  # releases every lock taken through it

    @staticmethod
    def _byte(name: str) -> int:
        return lock_key(name) % _BYTES

    @staticmethod
    def _slot(group: str, slot: int) -> int:
        return _BYTES + (lock_key(group) % _GROUPS) * _SLOTS + slot

    @staticmethod
    def _lock(fd: int, offset: int) -> bool:
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, offset))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _locked(self, fd: int, group: str, slot: int) -> bool:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, self._slot(group, slot)))
        return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK

    async def _file(self) -> int:
        if self._fd is None:
            path = self._path
            self._fd = await asyncio.to_thread(os.open, path, os.O_RDWR | os.O_CREAT, 0o600)
        return self._fd
