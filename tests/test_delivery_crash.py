"""Issue 4: `leadline run` SIGKILLed amid inbound webhooks and outbound sends, then restarted.

One Telegram bot in webhook mode on the fake Bot API. An outside writer queues
outbound rows straight into the database while Telegram posts webhook updates
(many from new chats, so welcomes are queued too). The process is killed while
both loads are half done and while the fake is taking a sendMessage; Telegram
then posts every update again and the process is started anew.

What must hold: every acknowledged update is stored once (the re-posts store
nothing twice); every queued row ends `sent` and its text reached Telegram, in
queue order per chat; a text reached Telegram twice only if its row was in
flight at the kill (`pending`, attempt counted, lease held), and the sends the
fake was taking at the kill went out again, exactly once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.adapters.telegram import SECRET_HEADER
from leadline.storage.engine import make_session_factory
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.outbox import QueuedMessage, enqueue
from tests.fakes.serving import running_fake
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.helpers import as_utc, rows
from tests.test_process import Launcher
from tests.test_telegram_process import until

TOKEN = "727272727:AAE-crash-test-token_q4Z"
HOOK_SECRET = "crash-hook-secret_4"
PUBLIC_URL = "https://leadline.example"
ENV = {
    "CRASH_TOKEN": TOKEN,
    "CRASH_HOOK_SECRET": HOOK_SECRET,
    "LEADLINE_PUBLIC_URL": PUBLIC_URL,  # setWebhook wants an https URL; nothing calls it
    # A row in flight at the kill is sent again once its lease runs out.
    "LEADLINE_SEND_LEASE_SECONDS": "2",
}

# Outbound: 200 rows over 40 chats, 5 each. Telegram lets one message a second go to a
# chat and 30 a second through the bot: the queue alone needs 7 s or more.
OUT_CHATS = 40
OUT_PER_CHAT = 5
FIRST_OUT_CHAT = 940000001
# Inbound: 300 updates, 5 from each of 60 chats: 50 new ones and 10 of the outbound chats.
NEW_CHATS = 50
SHARED_CHATS = 10
IN_PER_CHAT = 5
FIRST_NEW_CHAT = 950000001
FIRST_UPDATE_ID = 700000001
# Telegram posts a few updates at a time (max_connections), spread out: 40 a second.
INBOUND_RATE = 40.0
INBOUND_CONNECTIONS = 16
SEND_SECONDS = 0.03  # Telegram takes this long to accept each sendMessage
# The kill lands once this much of both loads is done, while a send is being taken.
KILL_AFTER_ACKNOWLEDGED = 80
KILL_AFTER_SENT = 30
TIMEOUT = 90.0  # generous: a busy 2-core CI machine


class TakingTelegram(FakeTelegram):
    """The fake Bot API where a sendMessage takes `SEND_SECONDS` once the whole request
    is in; `taking` counts those under way. aiohttp never cancels a handler whose
    caller went away, so a send the process was making when it died is still taken,
    as Telegram would take it: the answer just never gets back."""

    def __init__(self) -> None:
        super().__init__()
        self.taking = 0

    async def _send_message(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        self.taking += 1
        try:
            await asyncio.sleep(SEND_SECONDS)
            return await super()._send_message(bot, method, params)
        finally:
            self.taking -= 1


def name_of(chat: int) -> str:
    return f"Lead{chat}"


def brokers_toml(base: str) -> str:
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.telegram]
bot_token = "${{CRASH_TOKEN}}"
api_base = "{base}"
mode = "webhook"
webhook_secret = "${{CRASH_HOOK_SECRET}}"
[brokers.demo.templates]
welcome = "Hi {{name}}!"
"""


@dataclass
class Update:
    body: bytes
    key: str  # the channel_message_id it is stored under
    chat: int
    text: str


def make_updates(bot: FakeBot) -> list[Update]:
    """Distinct update ids and message ids; chats interleaved, as real traffic is."""
    chats = [FIRST_NEW_CHAT + n for n in range(NEW_CHATS)]
    chats += [FIRST_OUT_CHAT + n for n in range(SHARED_CHATS)]
    updates = []
    for i in range(len(chats) * IN_PER_CHAT):
        chat = chats[i % len(chats)]
        text = f"in-{i}"
        update = bot.text_update(chat, text, username=f"user{chat}", first_name=name_of(chat))
        update["update_id"] = FIRST_UPDATE_ID + i
        key = f"{chat}:{update['message']['message_id']}"
        updates.append(Update(json.dumps(update).encode(), key, chat, text))
    assert len({u.key for u in updates}) == len(updates)
    return updates


async def queue_outbound(engine: AsyncEngine) -> None:
    """What an outside writer (the future HTTP API) does: leads, then pending rows."""
    sessions = make_session_factory(engine)
    async with sessions() as session, session.begin():
        leads = {}
        for n in range(OUT_CHATS):
            chat = FIRST_OUT_CHAT + n
            who = ChannelIdentity("demo", "telegram", str(chat), display_name=name_of(chat))
            leads[chat] = await ensure_lead(session, who)
        for i in range(OUT_CHATS * OUT_PER_CHAT):
            chat = FIRST_OUT_CHAT + i % OUT_CHATS
            await enqueue(
                session, QueuedMessage(leads[chat], "demo", "telegram", str(chat), f"out-{i}")
            )


@dataclass
class Poster:
    """Telegram's side of the webhooks: posts updates, notes which were acknowledged."""

    http: aiohttp.ClientSession
    updates: list[Update]
    acknowledged: set[int] = field(default_factory=set)
    dead: asyncio.Event = field(default_factory=asyncio.Event)  # start no more posts

    async def post(self, base: str, i: int) -> bool:
        headers = {SECRET_HEADER: HOOK_SECRET, "Content-Type": "application/json"}
        url = f"{base}/webhooks/demo/telegram"
        try:
            async with self.http.post(url, data=self.updates[i].body, headers=headers) as r:
                await r.read()
                ok = r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
        if ok:
            self.acknowledged.add(i)
        return ok

    async def paced(self, base: str) -> None:
        """Every update once, `INBOUND_RATE` a second, a few connections at a time."""
        loop = asyncio.get_running_loop()
        begin = loop.time()
        connections = asyncio.Semaphore(INBOUND_CONNECTIONS)

        async def one(i: int) -> None:
            delay = max(0.0, begin + i / INBOUND_RATE - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.dead.wait(), delay)
            async with connections:
                if not self.dead.is_set():
                    await self.post(base, i)

        await asyncio.gather(*(one(i) for i in range(len(self.updates))))

    async def all_again(self, base: str) -> list[int]:
        """Post every update again (redelivery of what was not acknowledged, and, to be
        harsh, of what was); returns those never acknowledged after a few tries."""
        connections = asyncio.Semaphore(INBOUND_CONNECTIONS)

        async def one(i: int) -> bool:
            async with connections:
                for attempt in range(5):
                    if await self.post(base, i):
                        return True
                    await asyncio.sleep(0.2 * (attempt + 1))
                return False

        done = await asyncio.gather(*(one(i) for i in range(len(self.updates))))
        return [i for i, ok in enumerate(done) if not ok]


def sends(bot: FakeBot, since: int = 0) -> list[tuple[str, str]]:
    """(chat, text) of every sendMessage the fake took, in the order it took them."""
    return [
        (str(call.params["chat_id"]), call.params["text"])
        for call in bot.sent[since:]
        if call.method.lower() == "sendmessage"
    ]


async def inbound_keys(engine: AsyncEngine) -> list[str]:
    found = await rows(
        engine, "SELECT channel_message_id FROM chat_messages WHERE direction = 'in'"
    )
    return [r["channel_message_id"] for r in found]


async def outbound_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    return await rows(
        engine,
        "SELECT id, channel_user_id, message_text, status, attempts, lease_until, sent_at, "
        "channel_message_id, error FROM chat_messages WHERE direction = 'out' ORDER BY id",
    )


@pytest.fixture
async def launch(tmp_path: Path, database_url: str) -> AsyncIterator[Launcher]:
    launcher = Launcher(tmp_path, database_url, extra_env=ENV)
    yield launcher
    launcher.kill_all()


async def test_sigkill_amid_inbound_and_outbound_load_loses_nothing_resends_only_in_flight(
    tmp_path: Path, launch: Launcher, unused_tcp_port: int, engine: AsyncEngine, database_url: str
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    fake = TakingTelegram()
    bot = fake.add_bot(TOKEN, "crash_test_bot")
    updates = make_updates(bot)
    out_total = OUT_CHATS * OUT_PER_CHAT
    writing_chats = {u.chat for u in updates}

    async with running_fake(fake) as base:
        (tmp_path / "brokers.toml").write_text(brokers_toml(base))
        first = await launch(unused_tcp_port, "first")
        assert bot.webhook is not None and bot.webhook.url.startswith(PUBLIC_URL)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            poster = Poster(http, updates)

            # --- both loads at once; the kill when part of each is done ----------------
            inbound = asyncio.create_task(poster.paced(first.base))
            await queue_outbound(engine)

            def out_reached() -> int:
                return sum(1 for _, text in sends(bot) if text.startswith("out-"))

            deadline = loop.time() + TIMEOUT
            while not (
                len(poster.acknowledged) >= KILL_AFTER_ACKNOWLEDGED
                and out_reached() >= KILL_AFTER_SENT
                and fake.taking > 0
            ):
                assert first.process.poll() is None, f"leadline died:\n{first.log()}"
                assert loop.time() < deadline, (
                    f"the kill point never came: {len(poster.acknowledged)} acknowledged, "
                    f"{out_reached()} outbound reached Telegram"
                )
                await asyncio.sleep(0.002)
            # No await between the check and the kill: the fake (on this loop) is still
            # taking a send when the process dies.
            taken_before_kill = len(bot.sent)
            acknowledged_before_kill = len(poster.acknowledged)
            killed_at = datetime.now(UTC)
            first.process.send_signal(signal.SIGKILL)
            poster.dead.set()
            first.process.wait()

            # The rows in flight at the kill: taken (lease, attempt counted), outcome never
            # stored. Any pending row with a lease is one; `live_leases` below are those whose
            # lease had not yet run out (all of them, unless a send outlived its lease).
            in_flight = {
                r["id"]: r
                for r in await outbound_rows(engine)
                if r["status"] == "pending" and r["lease_until"] is not None
            }
            await inbound  # the posts under way at the kill fail; no new one starts
            await until(lambda: _value(fake.taking), lambda n: n == 0, timeout=10)
            caught = sends(bot, taken_before_kill)  # taken by Telegram after the sender died

            # The kill landed in the middle of both loads.
            acknowledged = set(poster.acknowledged)
            assert KILL_AFTER_ACKNOWLEDGED <= len(acknowledged) < len(updates), (
                f"{len(acknowledged)} of {len(updates)} updates acknowledged at the kill"
            )
            stored = Counter(await inbound_keys(engine))
            lost = sorted(updates[i].key for i in acknowledged if updates[i].key not in stored)
            assert lost == [], f"acknowledged before the kill but not stored: {lost}"
            assert [k for k, n in stored.items() if n > 1] == []
            before = await outbound_rows(engine)
            out_sent = [r for r in before if r["status"] == "sent" and _is_out(r)]
            assert 0 < len(out_sent) < out_total, (
                f"{len(out_sent)} of {out_total} queued rows sent at the kill"
            )
            assert in_flight, "no row in flight at the kill"
            assert all(r["attempts"] >= 1 for r in in_flight.values()), in_flight
            assert caught, "the fake should have been taking a send at the kill"
            in_flight_texts = {
                (r["channel_user_id"], r["message_text"]) for r in in_flight.values()
            }
            assert set(caught) <= in_flight_texts, (
                f"taken by Telegram at the kill, yet not in flight in the database: "
                f"{sorted(set(caught) - in_flight_texts)}"
            )
            live_leases = [r for r in in_flight.values() if as_utc(r["lease_until"]) > killed_at]

            # --- the restart; Telegram posts every update again --------------------------
            second = await launch(unused_tcp_port, "second")
            refused = await poster.all_again(second.base)
            assert refused == [], f"updates never acknowledged after the restart: {refused}"

            expected_out = out_total + len(writing_chats)  # one welcome per chat that wrote

            async def progress() -> tuple[int, int, Counter[str]]:
                found = await outbound_rows(engine)
                statuses = Counter(r["status"] for r in found)
                return len(await inbound_keys(engine)), len(found), statuses

            await until(
                progress,
                lambda p: p[0] >= len(updates) and p[1] >= expected_out and p[2]["sent"] == p[1],
                timeout=TIMEOUT,
                interval=0.2,
            )
            # A clean stop: the sends under way end, nothing more goes out after it.
            second.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(second.process.wait, 30)
            assert exit_code == 0, second.log()

    keys = await inbound_keys(engine)
    out = await outbound_rows(engine)
    arrivals = sends(bot)
    _report(database_url, loop.time() - started, acknowledged_before_kill, in_flight,
            live_leases, caught, arrivals)  # fmt: skip

    # Inbound: every update stored once, across the kill and the re-posts.
    twice = sorted(k for k, n in Counter(keys).items() if n > 1)
    assert twice == [], f"inbound stored more than once: {twice}"
    assert sorted(keys) == sorted(u.key for u in updates)
    texts = await rows(
        engine, "SELECT channel_message_id, message_text FROM chat_messages WHERE direction = 'in'"
    )
    by_key = {u.key: u.text for u in updates}
    assert all(by_key[r["channel_message_id"]] == r["message_text"] for r in texts)

    # Outbound: everything queued (and one welcome per chat that wrote) went out.
    unsent = [r for r in out if r["status"] != "sent"]
    assert unsent == [], f"not sent: {unsent[:5]}"
    assert all(r["sent_at"] is not None and r["channel_message_id"] for r in out)
    welcomes = [r for r in out if not _is_out(r)]
    assert sorted(int(r["channel_user_id"]) for r in welcomes) == sorted(writing_chats)
    assert all(r["message_text"] == f"Hi {name_of(int(r['channel_user_id']))}!" for r in welcomes)
    assert sorted(r["message_text"] for r in out if _is_out(r)) == sorted(
        f"out-{i}" for i in range(out_total)
    )

    # Each row's text reached Telegram; twice only for a row in flight at the kill.
    reached = Counter(arrivals)
    queued = {(r["channel_user_id"], r["message_text"]): r for r in out}
    assert len(queued) == len(out), "texts should be unique per chat"
    strays = sorted(set(reached) - set(queued))
    assert strays == [], f"sent but never queued: {strays[:5]}"
    never = sorted(key for key in queued if reached[key] == 0)
    assert never == [], f"marked sent but never reached Telegram: {never[:5]}"
    resent = {key: n for key, n in reached.items() if n > 1}
    outside = {key: n for key, n in resent.items() if queued[key]["id"] not in in_flight}
    assert outside == {}, f"sent more than once though not in flight at the kill: {outside}"
    assert all(n == 2 for n in resent.values()), f"one kill, yet sent 3+ times: {resent}"
    assert all(reached[key] <= r["attempts"] for key, r in queued.items()), "uncounted sends"
    # What Telegram was taking when the sender died went out again, once more.
    assert {key: reached[key] for key in caught} == dict.fromkeys(caught, 2)

    # Per chat, the texts first reached Telegram in queue order.
    first_arrivals: dict[str, list[str]] = defaultdict(list)
    for chat, text in arrivals:
        if text not in first_arrivals[chat]:
            first_arrivals[chat].append(text)
    in_queue_order: dict[str, list[str]] = defaultdict(list)
    for r in out:  # ordered by id: queue order
        in_queue_order[r["channel_user_id"]].append(r["message_text"])
    misordered = {
        c: first_arrivals[c] for c in in_queue_order if first_arrivals[c] != in_queue_order[c]
    }
    assert misordered == {}, f"out of queue order: {misordered}"

    for running in (first, second):
        log = running.log()
        assert TOKEN not in log and HOOK_SECRET not in log


def _is_out(row: dict[str, Any]) -> bool:
    return str(row["message_text"]).startswith("out-")


async def _value(value: int) -> int:
    return value


def _report(
    database_url: str,
    seconds: float,
    acknowledged: int,
    in_flight: dict[int, dict[str, Any]],
    live_leases: list[dict[str, Any]],
    caught: list[tuple[str, str]],
    arrivals: list[tuple[str, str]],
) -> None:
    database = "sqlite" if database_url.startswith("sqlite") else "postgres"
    twice = sum(1 for n in Counter(arrivals).values() if n > 1)
    print(
        f"\n{database}: {seconds:.1f} s; at the kill {acknowledged} updates acknowledged, "
        f"{len(in_flight)} rows in flight ({len(live_leases)} with a live lease), "
        f"{len(caught)} sends taken by Telegram after the sender died; "
        f"{twice} texts reached Telegram twice"
    )
