"""Owning a one-at-a-time job across processes: locks on SQLite and PostgreSQL, the runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.runtime.owned import OwnedRunner
from leadline.runtime.shares import SendShares
from leadline.storage.engine import make_engine
from leadline.storage.ownership import (
    AdvisoryLocks,
    FileLocks,
    Ownership,
    SoleOwner,
    lock_key,
    ownership_for,
)

Contenders = Callable[[], Ownership]


@pytest.fixture
async def contenders(database_url: str) -> AsyncIterator[Contenders]:
    """A maker of would-be owners, each as a process of its own would hold its locks."""
    engines: list[AsyncEngine] = []
    made: list[Ownership] = []

    def make() -> Ownership:
        engines.append(make_engine(database_url))
        made.append(ownership_for(engines[-1]))
        return made[-1]

    yield make
    for ownership in made:
        await ownership.close()
    for engine in engines:
        await engine.dispose()


def test_each_database_gets_the_lock_that_dies_with_its_holder(tmp_path) -> None:
    kinds = {
        "postgresql+asyncpg://u@127.0.0.1/test": AdvisoryLocks,
        f"sqlite+aiosqlite:///{tmp_path / 'a.db'}": FileLocks,
        "sqlite+aiosqlite:///:memory:": SoleOwner,
    }
    for url, kind in kinds.items():
        assert isinstance(ownership_for(make_engine(url)), kind), url


def test_lock_keys_are_stable_signed_64_bit_and_distinct() -> None:
    keys = {lock_key(f"poller b{n}/telegram") for n in range(1000)}
    assert len(keys) == 1000
    assert all(-(2**63) <= key < 2**63 for key in keys)
    assert lock_key("poller demo/telegram") == lock_key("poller demo/telegram")


async def test_one_owner_per_name_until_it_releases(contenders: Contenders) -> None:
    first, second = contenders(), contenders()
    assert await first.try_take("poller demo/telegram")
    assert await first.try_take("poller demo/telegram")  # taking again keeps it
    assert not await second.try_take("poller demo/telegram")
    assert await second.try_take("poller acme/telegram")  # other names are free
    assert await first.holds("poller demo/telegram")
    await first.release("poller demo/telegram")
    assert not await first.holds("poller demo/telegram")
    assert await second.try_take("poller demo/telegram")
    assert not await first.try_take("poller demo/telegram")


async def test_closing_hands_over_everything_it_owned(contenders: Contenders) -> None:
    first, second = contenders(), contenders()
    for name in ("a", "b"):
        assert await first.try_take(name)
    await first.close()
    assert [await second.try_take(name) for name in ("a", "b")] == [True, True]


@pytest.mark.postgres
async def test_a_lost_postgres_connection_loses_the_lock_to_another_process(
    postgres_url: str,
) -> None:
    engines = [make_engine(postgres_url) for _ in range(2)]
    first, second = AdvisoryLocks(engines[0]), AdvisoryLocks(engines[1])
    try:
        assert await first.try_take("poller demo/telegram")
        async with engines[1].connect() as conn:  # as a restart of the server would
            # The timeout makes the call wait until the backend is gone: without it the
            # signal is only sent, and on a busy machine the lock outlived the next line.
            await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid, 60000) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
        assert await second.try_take("poller demo/telegram")
        assert not await first.holds("poller demo/telegram")
        assert not await first.try_take("poller demo/telegram")  # a new connection; taken
    finally:
        await first.close()
        await second.close()
        for engine in engines:
            await engine.dispose()


@pytest.mark.postgres
async def test_the_lock_connection_holds_no_transaction_open(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    locks = AdvisoryLocks(engine)
    try:
        assert await locks.try_take("poller demo/telegram")
        async with engine.connect() as conn:
            states = await conn.execute(
                sa.text(
                    "SELECT a.state FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
                    "WHERE l.locktype = 'advisory' AND a.datname = current_database()"
                )
            )
            assert [row.state for row in states] == ["idle"]
    finally:
        await locks.close()
        await engine.dispose()


# --- the runner -------------------------------------------------------------------------


class Switch:
    """An ownership the test hands out and takes back."""

    def __init__(self, free: bool = True) -> None:
        self.free = free
        self.attempts = 0

    async def try_take(self, name: str) -> bool:
        self.attempts += 1
        return self.free

    async def holds(self, name: str) -> bool:
        return self.free

    async def release(self, name: str) -> None:
        return None

    async def close(self) -> None:
        return None


async def test_the_runner_stands_by_then_runs_once_owned_and_stops_when_ownership_goes() -> None:
    switch = Switch(free=False)
    roles: list[bool] = []
    started = asyncio.Event()

    async def poll() -> None:
        started.set()
        await asyncio.Event().wait()  # a poller runs until stopped

    runner = OwnedRunner(switch, check_seconds=0.01)
    task = asyncio.create_task(runner.run("poller demo/telegram", poll, roles.append))
    await asyncio.sleep(0.1)
    assert not started.is_set() and switch.attempts > 3 and roles == [True]
    switch.free = True
    await asyncio.wait_for(started.wait(), 1)
    assert roles == [True, False]
    switch.free = False
    assert await asyncio.wait_for(task, 1) is False


async def test_the_runner_passes_on_the_pollers_own_end_and_its_error() -> None:
    async def ends() -> None:
        return None

    async def breaks() -> None:
        raise ConnectionError("gone")

    runner = OwnedRunner(SoleOwner(), check_seconds=0.01)
    assert await runner.run("x", ends, lambda _: None) is True
    with pytest.raises(ConnectionError):
        await runner.run("x", breaks, lambda _: None)


async def test_cancelling_the_runner_cancels_the_poller_and_releases() -> None:
    released: list[str] = []
    cancelled = asyncio.Event()

    class Recording(SoleOwner):
        async def release(self, name: str) -> None:
            released.append(name)

    async def poll() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(OwnedRunner(Recording(), 0.01).run("x", poll, lambda _: None))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set() and released == ["x"]


async def test_members_of_a_group_are_counted_until_they_close(contenders: Contenders) -> None:
    first, second, onlooker = contenders(), contenders(), contenders()
    for ownership in (first, second):
        await ownership.join("sender demo/telegram")
        await ownership.join("sender demo/telegram")  # joining twice counts once
    group, other = "sender demo/telegram", "sender acme/telegram"
    assert await first.members([group, other]) == {group: 2, other: 0}
    assert await onlooker.members([group]) == {group: 2}
    await second.close()
    assert await first.members([group]) == {group: 1}
    assert await onlooker.members([group]) == {group: 1}


@pytest.mark.postgres
async def test_a_new_postgres_connection_joins_its_groups_again(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    locks = AdvisoryLocks(engine)
    try:
        await locks.join("sender demo/telegram")
        async with engine.connect() as conn:  # the lock connection dies
            await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND pid <> pg_backend_pid() AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            )
        with pytest.raises(sa.exc.DBAPIError):
            await locks.members(["sender demo/telegram"])
        assert await locks.members(["sender demo/telegram"]) == {"sender demo/telegram": 1}
        async with engine.connect() as conn:
            held = await conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                    "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
                )
            )
            assert held.scalar() == 1
    finally:
        await locks.close()
        await engine.dispose()


async def test_every_group_name_is_counted_whatever_its_key(contenders: Contenders) -> None:
    groups = [f"sender broker-{n}/telegram" for n in range(40)]  # keys all over the 64 bits
    assert {lock_key(g) < 0 for g in groups} == {True, False}
    first, second = contenders(), contenders()
    for ownership in (first, second):
        for group in groups:
            await ownership.join(group)
    assert await first.members(groups) == dict.fromkeys(groups, 2)


async def test_a_process_leaves_a_group_when_its_channel_goes_down(contenders: Contenders) -> None:
    first, second = contenders(), contenders()
    up = {"first": True}
    key = ("demo", "telegram")
    mine = SendShares(first, [key], check_seconds=1, is_up=lambda _: up["first"])
    other = SendShares(second, [key], check_seconds=1)
    await mine.join()
    await other.join()
    await mine.recount()
    assert (mine.of(key), other.of(key)) == (2, 2)
    up["first"] = False  # the bot's token was revoked here, say
    await mine.recount()
    await other.recount()
    assert other.of(key) == 1  # the other sends at the whole rate again
    up["first"] = True
    await mine.recount()
    await other.recount()
    assert (mine.of(key), other.of(key)) == (2, 2)
