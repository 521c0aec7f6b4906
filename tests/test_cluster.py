"""Several `leadline run` processes on one database.

Telegram answers getUpdates to one caller at a time; two processes polling one bot
would take turns failing with 409. So the processes agree on an owner per poller
(advisory locks on PostgreSQL, file locks on SQLite); the others stand by, send as
usual, and one of them takes over when the owner dies. And a provider counts a
channel's sends from all processes together, so each keeps to its share of the rate.
"""

from __future__ import annotations

import asyncio
import json
from bisect import bisect_left
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.storage.engine import make_session_factory
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.outbox import QueuedMessage, enqueue
from tests.fakes.serving import running_fake
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.test_process import Launcher, Running, child_env, run_cli
from tests.test_telegram_process import (
    DEMO_TOKEN,
    FIRST_CHAT,
    TOKENS,
    broker_toml,
    inbound_ids,
    until,
)

CHECK_SECONDS = 0.3


@pytest.fixture
async def launch(tmp_path: Path, database_url: str) -> AsyncIterator[Launcher]:
    env = {**TOKENS, "LEADLINE_CLUSTER_CHECK_SECONDS": str(CHECK_SECONDS)}
    launcher = Launcher(tmp_path, database_url, extra_env=env)
    yield launcher
    launcher.kill_all()


@pytest.fixture
async def bot_api() -> AsyncIterator[tuple[FakeBot, str]]:
    """The demo bot on the fake Bot API, and the API's base URL."""
    fake = FakeTelegram()
    bot = fake.add_bot(DEMO_TOKEN, "demo_realty_bot")
    async with running_fake(fake) as base:
        yield bot, base


async def polling_role(running: Running) -> str | None:
    async with aiohttp.ClientSession() as http, http.get(running.base + "/healthz") as response:
        health = json.loads(await response.text())
    return health["brokers"]["demo"]["providers"]["telegram"].get("polling")


async def roles(*processes: Running) -> list[str | None]:
    return [await polling_role(p) for p in processes]


def push(bot: FakeBot, first: int, n: int) -> set[str]:
    """n text updates; the keys they must be stored under."""
    keys = set()
    for i in range(first, first + n):
        update = bot.text_update(FIRST_CHAT + i % 5, f"message #{i}")
        bot.push_update(update)
        keys.add(f"{FIRST_CHAT + i % 5}:{update['message']['message_id']}")
    return keys


async def test_one_of_two_processes_polls_a_bot_and_the_other_takes_over_when_it_is_killed(
    tmp_path: Path,
    launch: Launcher,
    unused_tcp_port_factory: Callable[[], int],
    engine: AsyncEngine,
    bot_api: tuple[FakeBot, str],
) -> None:
    bot, base = bot_api
    (tmp_path / "brokers.toml").write_text(broker_toml("demo", "Demo Realty", "DEMO_TOKEN", base))
    first = await launch(unused_tcp_port_factory(), "first")
    second = await launch(unused_tcp_port_factory(), "second")
    found = await until(lambda: roles(first, second), lambda r: None not in r)
    assert sorted(found) == ["owner", "standby"]
    owner, standby = (first, second) if found[0] == "owner" else (second, first)

    keys = push(bot, 0, 20)
    await until(lambda: inbound_ids(engine), lambda ids: len(ids) == 20)
    await asyncio.sleep(10 * CHECK_SECONDS)  # the standby keeps trying meanwhile
    assert bot.conflicts == 0, "two processes polled the bot at once"
    assert await roles(owner, standby) == ["owner", "standby"]

    owner.process.kill()  # SIGKILL: its lock goes with it, nothing is handed over
    await asyncio.to_thread(owner.process.wait)
    keys |= push(bot, 20, 20)
    await until(lambda: inbound_ids(engine), lambda ids: len(ids) == 40)
    assert await polling_role(standby) == "owner"
    ids = await inbound_ids(engine)
    standby.process.kill()  # before the fake goes away under its long poll
    await asyncio.to_thread(standby.process.wait)

    assert [k for k, n in Counter(ids).items() if n > 1] == []
    assert set(ids) == keys
    assert "standing by" in standby.log()


async def queue(engine: AsyncEngine, chats: range) -> None:
    async with make_session_factory(engine)() as session, session.begin():
        for chat in chats:
            identity = ChannelIdentity("demo", "telegram", str(chat))
            lead_id = await ensure_lead(session, identity)
            await enqueue(session, QueuedMessage(lead_id, "demo", "telegram", str(chat), "hi"))


async def test_two_processes_sending_on_one_channel_keep_to_its_rate_together(
    tmp_path: Path,
    launch: Launcher,
    unused_tcp_port_factory: Callable[[], int],
    engine: AsyncEngine,
    bot_api: tuple[FakeBot, str],
) -> None:
    bot, base = bot_api
    rate = "\n[brokers.demo.rate_limits]\ntelegram = { messages_per_second = 10 }\n"
    toml = broker_toml("demo", "Demo Realty", "DEMO_TOKEN", base) + rate
    (tmp_path / "brokers.toml").write_text(toml)
    first = await launch(unused_tcp_port_factory(), "first")
    second = await launch(unused_tcp_port_factory(), "second")
    shared = "demo: telegram sends shared by 2 processes"
    await until(lambda: _logs(first, second), lambda logs: all(shared in x for x in logs))
    env = child_env(tmp_path, launch.database_url)
    status = await asyncio.to_thread(run_cli, "status", "--json", env=env, cwd=tmp_path)
    assert json.loads(status.stdout)[0]["processes"] == 2

    chats = range(FIRST_CHAT, FIRST_CHAT + 60)  # one message per chat: no chat limit
    await queue(engine, chats)
    await until(lambda: _sent(bot), lambda n: n == 60, timeout=30)
    await asyncio.sleep(1.0)  # a stray second send would show by now
    for running in (first, second):
        running.process.kill()
        await asyncio.to_thread(running.process.wait)

    calls = [c for c in bot.sent if c.method == "sendMessage"]
    assert sorted(c.params["chat_id"] for c in calls) == list(chats)
    times = sorted(c.at for c in calls)
    busiest = max(bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
    # Each process alone would allow 10/s, 20/s together.
    assert busiest <= 10, f"{busiest} sends within one second from the two processes"
    status = await asyncio.to_thread(run_cli, "status", "--json", env=env, cwd=tmp_path)
    assert json.loads(status.stdout)[0]["processes"] == 0  # both killed: their locks are gone


async def _logs(*processes: Running) -> list[str]:
    return [p.log() for p in processes]


async def _sent(bot: FakeBot) -> int:
    return len([c for c in bot.sent if c.method == "sendMessage"])
