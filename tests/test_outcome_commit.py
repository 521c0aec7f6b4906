"""Issue 15, item 10: a send's outcome is committed without waiting behind other writers.

From the provider's answer to the outcome's commit is the window in which a crash
sends a message twice (README, "The one window for a duplicate"). Nothing here
times it: each test holds another writer open and shows, by what the writers see
or by where they wait, that the outcome went first.

- SQLite: one writer at a time. The outcome cannot pass a writer already inside
  its transaction (SQLite's lock), but it goes before every writer of the process
  still waiting for its turn (`WriterLane`), however long those have waited.
- PostgreSQL: the outcome's transaction is its own; it does not wait for the
  dispatcher's taking of new heads, held up here by a table lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import OutboundMessage, SendResult
from leadline.storage.engine import make_engine, writer_lane
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.outbox import QueuedMessage, enqueue
from tests.test_dispatcher import World, world  # noqa: F401  (the fixture)

TIMEOUT = 30.0  # generous: a busy 2-core machine
QUEUED_WRITERS = 5


@dataclass
class HeldSend:
    """The provider's side: takes each send, answers it only once `answer` is set."""

    taking: asyncio.Event = field(default_factory=asyncio.Event)
    answer: asyncio.Event = field(default_factory=asyncio.Event)
    answered: list[str] = field(default_factory=list)

    async def send(self, message: OutboundMessage) -> SendResult:
        self.taking.set()
        await self.answer.wait()
        self.answered.append(message.ref)
        return SendResult(f"held-{message.ref}")


@pytest.fixture
async def running(world: World) -> AsyncIterator[tuple[World, HeldSend]]:  # noqa: F811
    held = HeldSend()
    world.adapter.send = held.send  # type: ignore[method-assign]
    task = asyncio.create_task(world.dispatcher.run())
    yield world, held
    held.answer.set()
    world.dispatcher.stop()
    await asyncio.wait_for(task, TIMEOUT)


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


async def status_of(connection: AsyncConnection, message_id: int) -> str:
    result = await connection.execute(
        sa.text("SELECT status FROM chat_messages WHERE id = :id"), {"id": message_id}
    )
    return str(result.scalar_one())


async def queue_in(connection: AsyncConnection, user: str) -> None:
    """What an API send does in its transaction: the lead, then a pending row."""
    session = AsyncSession(bind=connection)
    lead_id = await ensure_lead(session, ChannelIdentity("demo", "signed", user))
    await enqueue(session, QueuedMessage(lead_id, "demo", "signed", user, f"to {user}"))


def engine_of(there: World) -> AsyncEngine:
    return there.sessions.kw["bind"]


async def test_on_sqlite_an_outcome_commits_before_the_writers_queued_behind_a_long_transaction(
    running: tuple[World, HeldSend], database_url: str
) -> None:
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's single writer; PostgreSQL: the next test")
    there, held = running
    engine = engine_of(there)
    lane = writer_lane(engine)
    assert lane is not None
    message_id = await there.queue("u1", "hello")
    await asyncio.wait_for(held.taking.wait(), TIMEOUT)  # taken, the provider call under way

    # Another writer inside its transaction (an API request, say), held open.
    inside = await engine.connect()
    holding = await inside.begin()
    await queue_in(inside, "api-0")
    # API writers arriving meanwhile: each reads the message's status once its turn comes.
    seen: dict[str, str] = {}

    async def api_writer(user: str) -> None:
        async with engine.begin() as connection:
            seen[user] = await status_of(connection, message_id)
            await queue_in(connection, user)

    writers = [asyncio.create_task(api_writer(f"api-{n}")) for n in range(1, QUEUED_WRITERS + 1)]

    async def queued() -> bool:
        return lane.waiting[1] >= QUEUED_WRITERS

    await until(queued, "the API writers queued")

    # The provider answers: the outcome waits for its turn, urgent.
    held.answer.set()

    async def outcome_waits() -> bool:
        return lane.waiting[0] == 1

    await until(outcome_waits, "the outcome waiting for the writer inside")
    # It cannot pass a transaction already begun: still pending for the writer inside.
    assert await status_of(inside, message_id) == "pending"
    await holding.commit()
    await inside.close()

    await asyncio.wait_for(asyncio.gather(*writers), TIMEOUT)
    # Every writer that was waiting when the outcome came found it committed.
    assert seen == {f"api-{n}": "sent" for n in range(1, QUEUED_WRITERS + 1)}
    assert held.answered[0] == str(message_id)  # the API writers' rows may follow


@pytest.mark.postgres
async def test_on_postgres_an_outcome_commits_while_the_taking_of_new_heads_waits(
    running: tuple[World, HeldSend], database_url: str
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("a table lock of PostgreSQL holds the taking up; SQLite: the test above")
    there, held = running
    engine = engine_of(there)
    message_id = await there.queue("u1", "hello")
    await asyncio.wait_for(held.taking.wait(), TIMEOUT)

    # The dispatcher's next taking of heads reads delivery_pauses: held up by this lock.
    blocker = make_engine(database_url)
    try:
        async with blocker.connect() as locking:
            await locking.execute(sa.text("LOCK TABLE delivery_pauses IN ACCESS EXCLUSIVE MODE"))
            await there.queue("u2", "next one")
            there.dispatcher.wake()
            async with engine.connect() as watching:

                async def taking_waits() -> bool:
                    waiting = await watching.execute(
                        sa.text(
                            "SELECT count(*) FROM pg_locks "
                            "WHERE relation = 'delivery_pauses'::regclass AND NOT granted"
                        )
                    )
                    await watching.commit()
                    return bool(waiting.scalar_one())

                await until(taking_waits, "the taking of heads waiting for the lock")
                held.answer.set()

                async def committed() -> bool:
                    status = await status_of(watching, message_id)
                    await watching.commit()
                    return status == "sent"

                await until(committed, "the outcome committed while the taking waits")
                assert await taking_waits(), "the taking should still be waiting"
            await locking.rollback()
    finally:
        await blocker.dispose()
