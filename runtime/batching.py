"""Group commit: many callers' small writes stored together in one transaction.

Each caller still waits for its own item's commit. Items submitted while a
transaction runs go into the next one, so the database sees one commit for
many items under load and one per item when idle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
Apply = Callable[[AsyncSession, Sequence[T]], Awaitable[Sequence[R]]]
Sessions = Callable[[], AbstractAsyncContextManager[AsyncSession]]  # an async_sessionmaker

GATHER_SECONDS = 0.002
BUSY_WITHIN_SECONDS = 0.005


@dataclass(slots=True)
class _Item(Generic[T, R]):
    value: T
    done: asyncio.Future[R]


class GroupCommit(Generic[T, R]):
    """`apply(session, items)` runs inside the transaction and returns one result per item.

    A batch holds items up to `max_batch` in total `weight` (say, events per
    delivery); `committed` is called with a batch's results once it is committed.
    While commits follow each other closely, a lone item waits `gather_seconds` for
    others (0: only the items already queued join it). Until `start` (and after
    `stop`) every item is its own transaction.
    """

    def __init__(
        self,
        sessions: Sessions,
        apply: Apply[T, R],
        name: str,
        max_batch: int = 500,
        weight: Callable[[T], int] = lambda _: 1,
        committed: Callable[[Sequence[R]], None] | None = None,
        gather_seconds: float = GATHER_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._apply = apply
        self._name = name
        self._max_batch = max_batch
        self._weight = weight
        self._committed = committed
        self._gather_seconds = gather_seconds
        self._queue: asyncio.Queue[_Item[T, R] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._last_commit = float("-inf")

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=self._name)

    async def stop(self) -> None:
        """Commit what is queued; later items are committed one by one."""
        writer, self._writer = self._writer, None
        if writer is not None:
            self._queue.put_nowait(None)
            await writer

    async def submit(self, value: T) -> R:
        item: _Item[T, R] = _Item(value, asyncio.get_running_loop().create_future())
        if self._writer is None:
            await self._commit([item])
        else:
            self._queue.put_nowait(item)
        return await item.done

    async def _write(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            if self._queue.empty():
                await asyncio.sleep(self._gathering())
            batch, size, last = [first], self._weight(first.value), False
            while size < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    last = True
                    break
                batch.append(item)
                size += self._weight(item.value)
            await self._commit(batch)
            self._last_commit = asyncio.get_running_loop().time()
            if last:
                return

    def _gathering(self) -> float:
        """How long an item alone in the queue waits for others to join its commit.

        One loop turn lets items being prepared right now (requests being read and
        parsed) join. When commits follow each other closely (a steady stream, say
        1,000 webhooks/s), a commit costs far more than the few items it would
        hold, so the writer waits a little longer for the next ones; an item after
        a quiet spell still waits only the one turn.
        """
        since = asyncio.get_running_loop().time() - self._last_commit
        return self._gather_seconds if since < BUSY_WITHIN_SECONDS else 0

    async def _commit(self, batch: list[_Item[T, R]]) -> None:
        try:
            async with self._sessions() as session, session.begin():
                results = await self._apply(session, [item.value for item in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # One bad item must not fail the others: each alone, so only it fails.
            log.info("%s: a batch of %d failed (%r); each alone", self._name, len(batch), exc)
            for item in batch:
                await self._commit([item])
            return
        for item, result in zip(batch, results, strict=True):
            _settle(item, result)
        if self._committed is not None:
            self._committed(results)


def _settle(item: _Item[T, R], result: R | BaseException) -> None:
    if item.done.done():  # the caller went away
        return
    if isinstance(result, BaseException):
        item.done.set_exception(result)
    else:
        item.done.set_result(result)
