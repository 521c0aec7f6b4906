"""`leadline run` as a real process, polling Telegram bots on the fake Bot API.

The fake is served by this test process on loopback (the child reaches it through
`api_base`), so the test's event loop must never block while a child runs.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes.serving import running_fake
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.helpers import rows
from tests.test_process import Launcher

DEMO_TOKEN = "707070707:AAE-process-demo-token_x9Q"
ACME_TOKEN = "808080808:AAE-process-acme-token_k2W"
TOKENS = {"DEMO_TOKEN": DEMO_TOKEN, "ACME_TOKEN": ACME_TOKEN}
FIRST_CHAT = 910000001
CHATS = 30
UPDATES = 300
# A Telegram channel's start imports aiogram, which builds its pydantic models: seconds.


class LaggyTelegram(FakeTelegram):
    """The fake Bot API `lag` seconds away: a getUpdates reaches it (and confirms its
    offset) only after the lag, which holds the poller's state still long enough to
    kill it at a chosen point. `cut()` drops the requests still on their way, as the
    death of their sender would: they never arrive, so they confirm nothing."""

    def __init__(self, lag: float) -> None:
        super().__init__()
        self.lag = lag
        self.on_the_way = 0  # getUpdates requests sent but not yet arrived
        self._generation = 0

    def cut(self) -> None:
        self._generation += 1

    async def _handle_method(self, request: web.Request) -> web.StreamResponse:
        if self.lag and request.match_info["method"].lower() == "getupdates":
            generation = self._generation
            self.on_the_way += 1
            try:
                await asyncio.sleep(self.lag)
            finally:
                self.on_the_way -= 1
            if generation != self._generation:
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError  # aiohttp: a vanished peer, nothing answered
        return await super()._handle_method(request)


def broker_toml(broker: str, name: str, variable: str, base: str) -> str:
    return f"""
[brokers.{broker}]
name = "{name}"
[brokers.{broker}.providers.telegram]
bot_token = "${{{variable}}}"
api_base = "{base}"
poll_timeout = 1
[brokers.{broker}.templates]
welcome = "Hi {{name}}!"
"""


@pytest.fixture
async def launch(tmp_path: Path, database_url: str) -> AsyncIterator:
    launcher = Launcher(tmp_path, database_url, extra_env=TOKENS)
    yield launcher
    launcher.kill_all()


async def until(
    read: Callable[[], Awaitable[Any]],
    holds: Callable[[Any], bool],
    timeout: float = 20.0,
    interval: float = 0.1,
) -> Any:
    """Read until the value holds (without blocking the loop the fake runs on); return it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = None
    while loop.time() < deadline:
        value = await read()
        if holds(value):
            return value
        await asyncio.sleep(interval)
    raise AssertionError(f"never held within {timeout} s; last value: {value!r}")


async def inbound_ids(engine: AsyncEngine) -> list[str]:
    found = await rows(
        engine, "SELECT channel_message_id FROM chat_messages WHERE direction = 'in'"
    )
    return [r["channel_message_id"] for r in found]


async def inbound_count(engine: AsyncEngine) -> int:
    (found,) = await rows(engine, "SELECT count(*) AS n FROM chat_messages WHERE direction = 'in'")
    return int(found["n"])


async def outbound(engine: AsyncEngine) -> list[dict[str, Any]]:
    return await rows(
        engine,
        "SELECT channel_user_id, status, attempts, message_text FROM chat_messages "
        "WHERE direction = 'out' ORDER BY id",
    )


def sent_messages(bot: FakeBot) -> list[dict[str, Any]]:
    return [call.params for call in bot.sent if call.method.lower() == "sendmessage"]


async def test_kill_mid_batch_then_restart_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, launch, unused_tcp_port: int, engine: AsyncEngine
):
    """The kill lands when one batch of updates is stored but not yet confirmed (the
    getUpdates carrying its offset is on its way) and the one before is confirmed;
    welcomes are being sent meanwhile. Telegram then redelivers all it holds."""
    fake = LaggyTelegram(lag=0.4)
    bot = fake.add_bot(DEMO_TOKEN, "demo_realty_bot")
    key_of: dict[int, str] = {}  # update_id -> the channel_message_id it must be stored as
    for i in range(UPDATES):
        chat = FIRST_CHAT + i % CHATS
        update = bot.text_update(chat, f"message #{i}", first_name=f"Lead{i % CHATS}")
        key_of[bot.push_update(update)] = f"{chat}:{update['message']['message_id']}"
    assert len(set(key_of.values())) == UPDATES

    async with running_fake(fake) as base:
        (tmp_path / "brokers.toml").write_text(
            broker_toml("demo", "Demo Realty", "DEMO_TOKEN", base)
        )
        first = await launch(unused_tcp_port, "first")

        async def progress() -> tuple[int, int, int]:
            stored = await inbound_count(engine)
            return stored, UPDATES - len(bot.pending_updates), fake.on_the_way

        def mid_batch(state: tuple[int, int, int]) -> bool:
            stored, confirmed, on_the_way = state
            return stored >= 60 and stored > confirmed > 0 and on_the_way > 0

        await until(progress, mid_batch, interval=0.005)
        first.process.kill()  # SIGKILL: no shutdown code runs
        fake.cut()  # in the same step: the offset on its way never arrives
        first.process.wait()
        fake.lag = 0.0

        stored = set(await inbound_ids(engine))
        assert 60 <= len(stored) < UPDATES, "the kill should land in the middle of the updates"
        pending = {update["update_id"] for update in bot.pending_updates}
        confirmed = {key_of[uid] for uid in key_of.keys() - pending}
        assert confirmed, "some updates should have been confirmed before the kill"
        assert confirmed <= stored, f"confirmed but lost: {sorted(confirmed - stored)[:5]}"
        assert stored <= set(key_of.values())
        assert stored - confirmed, "some stored updates should come again after the restart"

        second = await launch(unused_tcp_port, "second")
        await until(lambda: inbound_count(engine), lambda n: n >= UPDATES)
        await until(
            lambda: outbound(engine),
            lambda found: len(found) >= CHATS and all(r["status"] == "sent" for r in found),
        )
        # Let the poller confirm the last batch, and a stray extra reply surface if any.
        await until(lambda: _pending(bot), lambda n: n == 0, timeout=10)
        await asyncio.sleep(0.5)
        out = await outbound(engine)
        ids = await inbound_ids(engine)
        second.process.kill()  # before the fake goes away under its long poll
        second.process.wait()

    # Every update stored exactly once, across the kill and the redelivery.
    duplicates = [key for key, n in Counter(ids).items() if n > 1]
    assert duplicates == []
    assert sorted(ids) == sorted(key_of.values())

    # One welcome per chat, queued once; sent once, or twice only when the kill cut the
    # first attempt short after Telegram took it (the attempt is counted before sending).
    chats = [str(FIRST_CHAT + n) for n in range(CHATS)]
    assert sorted(r["channel_user_id"] for r in out) == sorted(chats)
    assert all(r["status"] == "sent" for r in out)
    assert all(r["attempts"] in (1, 2) for r in out), out  # one kill: one extra attempt at most
    by_chat = {r["channel_user_id"]: r for r in out}
    sends = Counter(str(params["chat_id"]) for params in sent_messages(bot))
    assert set(sends) == set(chats)
    for chat, n in sends.items():
        assert n in (1, 2), f"chat {chat} got {n} welcomes"
        if n == 2:
            assert by_chat[chat]["attempts"] == 2, f"chat {chat} welcomed twice: {by_chat[chat]}"
    for params in sent_messages(bot):
        lead = int(params["chat_id"]) - FIRST_CHAT
        assert params["text"] == f"Hi Lead{lead}!"

    for running in (first, second):
        assert DEMO_TOKEN not in running.log()


async def test_revoked_token_is_not_hammered_and_other_broker_keeps_polling(
    tmp_path: Path, launch, unused_tcp_port: int, engine: AsyncEngine
):
    fake = FakeTelegram()
    demo = fake.add_bot(DEMO_TOKEN, "demo_realty_bot")
    acme = fake.add_bot(ACME_TOKEN, "acme_homes_bot")
    acme.revoke()
    async with running_fake(fake) as base:
        (tmp_path / "brokers.toml").write_text(
            broker_toml("demo", "Demo Realty", "DEMO_TOKEN", base)
            + broker_toml("acme", "Acme Homes", "ACME_TOKEN", base)
        )
        running = await launch(unused_tcp_port, "run")  # both channels have started
        loop = asyncio.get_running_loop()
        started = loop.time()
        demo.push_update(demo.text_update(FIRST_CHAT, "still polling"))
        await until(lambda: inbound_ids(engine), lambda ids: len(ids) == 1, timeout=4)
        await asyncio.sleep(max(0.0, 4.0 - (loop.time() - started)))

        revoked_calls = [r for r in fake.requests if r.bot == "acme_homes_bot"]
        assert 1 <= len(revoked_calls) <= 2, [r.method for r in revoked_calls]
        assert len([r for r in fake.requests if r.bot == "demo_realty_bot"]) >= 3  # it polls

        async with (
            aiohttp.ClientSession() as http,
            http.get(running.base + "/healthz") as response,
        ):
            assert response.status == 200
            text = await response.text()
        health = json.loads(text)
        assert health["brokers"]["demo"]["providers"]["telegram"]["state"] == "up"
        revoked = health["brokers"]["acme"]["providers"]["telegram"]
        assert revoked["state"] == "down"
        assert revoked.get("reason")
        assert ACME_TOKEN not in text and DEMO_TOKEN not in text
        assert ACME_TOKEN.split(":")[1] not in text

        (row,) = await rows(engine, "SELECT * FROM chat_messages WHERE direction = 'in'")
        assert (row["broker_id"], row["provider"], row["message_text"]) == (
            "demo",
            "telegram",
            "still polling",
        )

        running.process.terminate()
        assert await asyncio.to_thread(running.process.wait, 20) == 0
    log = running.log()
    assert ACME_TOKEN not in log and DEMO_TOKEN not in log


async def _pending(bot: FakeBot) -> int:
    return len(bot.pending_updates)
