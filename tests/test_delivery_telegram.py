"""The delivery engine end to end, in real time: the real `Dispatcher.run()` loop sends
through the real Telegram adapter to the fake Bot API on loopback, on a real database.

What the fake saw is the evidence: `FakeBot.sent` holds each accepted send with the
moment it was accepted, and a `CallProbe` in front of the fake logs every call (failed
ones too) with when it arrived and was answered, and how many calls to one chat were
under way at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import logging
import random
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import OutboundMessage, SendResult
from leadline.runtime.channels import Channels, ChannelState
from leadline.runtime.dispatcher import Dispatcher
from leadline.runtime.retry import RetryPolicy
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.outbox import QueuedMessage, enqueue
from leadline.storage.types import utcnow
from tests.conftest import load_test_brokers, make_settings, wait_for
from tests.fakes.serving import running_fake
from tests.fakes.telegram_api import FakeBot, SentCall
from tests.helpers import ApiCall, CallProbe, ProbedTelegram, as_utc, rows

DEMO_TOKEN = "111222333:AAE-demo-token-not-real"
ACME_TOKEN = "444555666:AAE-acme-token-not-real"
ENV = {
    "DEMO_TOKEN": DEMO_TOKEN,
    "ACME_TOKEN": ACME_TOKEN,
    "DEMO_SIGNED_SECRET": "demo-signing-secret",
    "ACME_SIGNED_SECRET": "acme-secret-42",
}
CHANNELS = [("demo", "telegram"), ("demo", "signed"), ("acme", "telegram"), ("acme", "signed")]
BASE = 0.2  # the backoff base of these tests, in seconds
SETTLE_TIMEOUT = 15.0  # generous: a busy machine must not fail a test, only a wrong engine


@pytest.fixture(autouse=True)
def tuned_gc() -> Iterator[None]:
    """The collector as `leadline run` tunes it (runtime/gc_tuning.py): rates and delays
    measured late in a long test session must not be those of old-generation pauses."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def brokers_toml(api_base: str, demo_rate: str | None, typing: bool) -> str:
    rate = f"\n[brokers.demo.rate_limits]\ntelegram = {{ {demo_rate} }}\n" if demo_rate else ""
    return f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.features]
typing_indicator = {str(typing).lower()}
[brokers.demo.providers.telegram]
bot_token = "${{DEMO_TOKEN}}"
api_base = "{api_base}"
[brokers.demo.providers.signed]
secret = "${{DEMO_SIGNED_SECRET}}"
{rate}
[brokers.acme]
name = "Acme Homes"
[brokers.acme.providers.telegram]
bot_token = "${{ACME_TOKEN}}"
api_base = "{api_base}"
[brokers.acme.providers.signed]
secret = "${{ACME_SIGNED_SECRET}}"
"""


@dataclass
class Line:
    """Two brokers, each with a Telegram bot on the fake and a signed-provider channel,
    and the dispatcher loop running over them."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    fake: ProbedTelegram
    demo: FakeBot
    acme: FakeBot
    channels: Channels
    dispatcher: Dispatcher

    @property
    def probe(self) -> CallProbe:
        return self.fake.probe

    def adapter(self, broker_id: str, provider: str) -> Any:
        adapter = self.channels.up(broker_id, provider)
        assert adapter is not None, f"{broker_id}/{provider} is not up"
        return adapter

    async def queue(
        self,
        messages: Iterable[tuple[int | str, str]],
        broker_id: str = "demo",
        provider: str = "telegram",
    ) -> list[int]:
        """Queue (chat, text) messages in one transaction, in this order, and wake the loop."""
        ids = []
        async with self.sessions() as session, session.begin():
            for chat, text in messages:
                user = str(chat)
                lead_id = await ensure_lead(session, ChannelIdentity(broker_id, provider, user))
                queued = QueuedMessage(lead_id, broker_id, provider, user, text)
                ids.append(await enqueue(session, queued))
        self.dispatcher.wake()
        return ids

    async def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        found = await rows(self.engine, "SELECT * FROM chat_messages WHERE direction = 'out'")
        return {row["id"]: row for row in found if row["id"] in ids}

    async def row(self, message_id: int) -> dict[str, Any]:
        return (await self.rows([message_id]))[message_id]

    async def settled(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Wait until none of these rows is pending any more; their rows."""

        async def done() -> bool:
            found = await self.rows(ids)
            return len(found) == len(ids) and all(r["status"] != "pending" for r in found.values())

        await wait_for(done, timeout=SETTLE_TIMEOUT, interval=0.1)
        return await self.rows(ids)


def accepted(bot: FakeBot, chat: int | None = None) -> list[SentCall]:
    """The sendMessage calls the fake accepted (to one chat), in the order it accepted them."""
    calls = [c for c in bot.sent if c.method.lower() == "sendmessage"]
    return [c for c in calls if chat is None or c.params["chat_id"] == chat]


def texts(calls: Iterable[SentCall]) -> list[str]:
    return [c.params["text"] for c in calls]


def gap(earlier: ApiCall, later: ApiCall) -> float:
    """From the answer to one call to the arrival of the next."""
    assert earlier.finished is not None
    return later.started - earlier.finished


LineFactory = Callable[..., Awaitable[Line]]


@pytest.fixture
async def start_line(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[LineFactory]:
    caplog.set_level(logging.WARNING, logger="leadline.runtime.dispatcher")
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            policy: RetryPolicy | None = None, demo_rate: str | None = None, typing: bool = False
        ) -> Line:
            fake = ProbedTelegram()
            demo = fake.add_bot(DEMO_TOKEN, "demo_realty_bot")
            acme = fake.add_bot(ACME_TOKEN, "acme_homes_bot")
            api_base = await stack.enter_async_context(running_fake(fake))
            brokers_file = tmp_path / "brokers.toml"
            brokers_file.write_text(brokers_toml(api_base, demo_rate, typing))
            settings = make_settings("sqlite://", brokers_file)
            registry, brokers = load_test_brokers(settings, ENV)
            assert brokers.ok, brokers.issues
            async with sessions() as session, session.begin():
                records = [BrokerRecord(b.id, b.name, b.timezone) for b in brokers.brokers.values()]
                await upsert_brokers(session, records)
            channels = Channels.build(brokers, registry, None)
            stack.push_async_callback(channels.close)
            await channels.start()
            assert {c.key: c.state for c in channels} == {key: ChannelState.UP for key in CHANNELS}
            policy = policy or RetryPolicy(base_seconds=BASE, jitter=random.Random(7))
            dispatcher = Dispatcher(sessions, channels, policy=policy)
            task = asyncio.create_task(dispatcher.run(), name="dispatcher")
            stack.push_async_callback(_stop, dispatcher, task)
            return Line(engine, sessions, fake, demo, acme, channels, dispatcher)

        yield start
    # The loop swallows a failing cycle or send (it logs and goes on): none may happen here.
    broken = [
        r.getMessage()
        for r in caplog.records
        if r.name == "leadline.runtime.dispatcher" and r.levelno >= logging.ERROR
    ]
    assert broken == []


async def _stop(dispatcher: Dispatcher, task: asyncio.Task[None]) -> None:
    dispatcher.stop()
    await asyncio.wait_for(task, 10)


# --- 1. order and one call per chat at a time, under faults ------------------------------


async def test_each_chat_gets_every_message_once_in_queue_order_one_call_at_a_time_under_faults(
    start_line: LineFactory,
):
    line = await start_line()
    chats = [100000001 + i for i in range(5)]
    first, second = chats[0], chats[1]
    # Faults aimed at one chat are taken by that chat's calls; the others by the first
    # calls that come, whichever chat: every kind is served (checked below).
    line.demo.fail_next("sendMessage", "429", retry_after=1, chat_id=first)
    # Longer than the chat's 1 s interval: a second call to it would overlap this one.
    line.demo.fail_next("sendMessage", "slow", delay=1.3, chat_id=second)
    for kind in ("500", "502-html", "drop"):
        line.demo.fail_next("sendMessage", kind)
    line.demo.fail_next("sendMessage", "slow", delay=0.3)
    expected = {chat: [f"{chat} m{n}" for n in range(3)] for chat in chats}
    ids = await line.queue((chat, expected[chat][n]) for n in range(3) for chat in chats)

    found = await line.settled(ids)

    assert {r["status"] for r in found.values()} == {"sent"}
    assert line.demo.faults == []  # every injected fault was served
    answers = Counter(call.status for call in line.probe.calls)
    assert (answers[429], answers[500], answers[502], answers[None]) == (1, 1, 1, 1)
    assert sorted(texts(accepted(line.demo))) == sorted(t for ts in expected.values() for t in ts)
    for chat in chats:
        assert texts(accepted(line.demo, chat)) == expected[chat]
    assert line.probe.most_at_once == {str(chat): 1 for chat in chats}
    # Each row is marked with the message the fake created for it, not another's.
    by_text = {c.params["text"]: c.result for c in accepted(line.demo)}
    for row in found.values():
        made = by_text[row["message_text"]]
        assert row["channel_message_id"] == f"{made['chat']['id']}:{made['message_id']}"


# --- 2. and 3. rate limits, measured at the API ---------------------------------------------


async def test_channel_rate_measured_at_the_api_is_the_configured_20_per_second(
    start_line: LineFactory,
):
    line = await start_line(demo_rate="messages_per_second = 20")
    await warm_up(line)
    # Sends are spaced evenly at the configured rate less the engine's 2% margin.
    # (Telegram's own 30/s, if the configured limit were ignored, would measure 30/s.)
    ids = await line.queue((200000000 + i, f"r{i}") for i in range(61))

    found = await line.settled(ids)

    assert {r["status"] for r in found.values()} == {"sent"}
    times = sorted(call.at for call in accepted(line.demo))
    assert len(times) == 61
    # From the second send: the first often goes alone, a cycle before the others
    # are taken, and the gate paces evenly from the next one instead of catching up
    # with a burst (runtime/ratelimit.py; README "rate limits").
    rate = (len(times) - 2) / (times[-1] - times[1])
    # Never above the limit. Below it by at most 15% on a quiet machine: the margin
    # (2%), the 0.1 s the send after an idle counts late (3% of these 3 s) and a
    # stall of the event loop (a few percent). A loaded machine stalls the loop
    # often, and the gate never catches up in a burst (measured 11.6/s beside two
    # CPU hogs): the bound here only tells the configured limit from Telegram's
    # 30/s. The 3% target is measured over 20 s by bench/outbound.py.
    assert 20 * 0.5 <= rate <= 20, f"{rate:.2f}/s"


async def test_no_second_at_the_api_holds_more_than_the_configured_20_when_sends_are_delayed(
    start_line: LineFactory,
):
    line = await start_line(demo_rate="messages_per_second = 20", typing=True)
    await warm_up(line)
    # The first window's typing indicators take half a second: its messages go late.
    line.demo.fail_next("sendChatAction", "slow", count=20, delay=0.5)
    ids = await line.queue((210000000 + i, f"r{i}") for i in range(40))

    await line.settled(ids)

    times = sorted(call.at for call in accepted(line.demo))
    assert len(times) == 40
    busiest = max(bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
    assert busiest <= 20, f"{busiest} sends within one second"


async def test_one_chat_gets_at_most_one_message_per_second(start_line: LineFactory):
    line = await start_line()
    await warm_up(line)
    sends = record_sends(line.adapter("demo", "telegram"))
    chat = 300000001
    ids = await line.queue((chat, f"c{n}") for n in range(3))

    await line.settled(ids)

    calls = accepted(line.demo, chat)
    assert texts(calls) == ["c0", "c1", "c2"]
    # The n-th send goes n seconds after the first, or later: at the engine ...
    assert [round(t - sends[0], 3) >= n for n, t in enumerate(sends)] == [True] * 3, sends
    # ... and at the API (the first send's own latency aside, a few ms after the warm-up).
    arrived = [c.at - calls[0].at for c in calls]
    assert [t >= n - 0.02 for n, t in enumerate(arrived)] == [True] * 3, arrived
    # Each one apart from the previous; not by a full second each when a sender wakes
    # late (see the expected failure below), but never back to back.
    assert min(b - a for a, b in itertools.pairwise(arrived)) >= 0.5, arrived


async def test_one_chat_gets_at_most_one_message_per_second_when_a_send_is_delayed(
    start_line: LineFactory,
):
    line = await start_line(typing=True)
    chat = 310000001
    line.demo.fail_next("sendChatAction", "slow", delay=0.5, chat_id=chat)
    ids = await line.queue((chat, f"c{n}") for n in range(2))

    await line.settled(ids)

    first, second = accepted(line.demo, chat)
    assert second.at - first.at >= 1.0, second.at - first.at


async def warm_up(line: Line) -> None:
    """One send through another bot first: the first send of a process runs cold code
    paths (several ms) that would blur the timing measured next."""
    ids = await line.queue([(1, "warm-up")], broker_id="acme")
    await line.settled(ids)


def record_sends(adapter: Any) -> list[float]:
    """When the engine calls this adapter's `send` (time.monotonic()), in order."""
    calls: list[float] = []
    send = adapter.send

    async def recorded(message: OutboundMessage) -> SendResult:
        calls.append(time.monotonic())
        return await send(message)

    adapter.send = recorded
    return calls


# --- 4. pause scopes --------------------------------------------------------------------------


async def test_429_holds_back_its_chat_for_the_retry_after_while_other_chats_go(
    start_line: LineFactory,
):
    line = await start_line()
    held, others = 400000001, [400000002, 400000003]
    line.demo.fail_next("sendMessage", "429", retry_after=2, chat_id=held)
    ids = await line.queue((chat, f"{chat} m{n}") for n in range(2) for chat in [held, *others])

    found = await line.settled(ids)

    assert {r["status"] for r in found.values()} == {"sent"}
    throttled, retried, after = line.probe.of(held)
    assert (throttled.status, retried.status, after.status) == (429, 200, 200)
    assert 2.0 <= gap(throttled, retried) <= 2.5
    assert texts(accepted(line.demo, held)) == [f"{held} m0", f"{held} m1"]
    meanwhile = [c for c in accepted(line.demo) if c.params["chat_id"] in others]
    assert len(meanwhile) == 4  # both messages of both other chats went during the pause
    assert all(throttled.started < c.at < retried.started for c in meanwhile)


async def test_channel_pause_holds_every_chat_of_that_channel_and_is_stored_others_flow(
    start_line: LineFactory,
):
    line = await start_line()
    paused = line.adapter("demo", "signed")
    paused.script = ["pause:2"]
    since = utcnow()
    first = await line.queue([("u1", "first")], provider="signed")

    async def pause_stored() -> bool:
        return bool(await _pauses(line.engine, since))

    await wait_for(pause_stored)
    assert set(line.dispatcher.gates.paused_channels()) == {("demo", "signed")}
    (_, _, action, paused_at) = paused.calls[0]
    assert action == "pause:2"
    # Queued during the pause: other chats of the paused channel, another broker's
    # channel on the same provider, and the same broker's other channel.
    later = await line.queue([("u2", "second"), ("u3", "third")], provider="signed")
    elsewhere = await line.queue([("u1", "acme")], broker_id="acme", provider="signed")
    telegram = await line.queue([(500000001, "demo on telegram")])

    found = await line.settled([*first, *later, *elsewhere, *telegram])

    assert {r["status"] for r in found.values()} == {"sent"}
    (pause,) = await _pauses(line.engine, since)
    assert (pause["broker_id"], pause["provider"]) == ("demo", "signed")
    assert pause["reason"] == "429: account throttled"
    assert 2.0 <= (as_utc(pause["until"]) - since).total_seconds() <= 2.5
    resumed = [(chat, at) for chat, _, _, at in paused.calls[1:]]
    assert sorted(chat for chat, _ in resumed) == ["u1", "u2", "u3"]
    assert all(2.0 <= at - paused_at <= 2.6 for _, at in resumed), resumed
    (_, _, _, acme_at) = line.adapter("acme", "signed").calls[0]
    assert acme_at - paused_at < 2.0  # it went while demo's channel was paused
    (telegram_call,) = accepted(line.demo)
    assert telegram_call.at - paused_at < 2.0


async def _pauses(engine: AsyncEngine, since: datetime) -> list[dict[str, Any]]:
    # PostgreSQL keeps delivery_pauses between tests (conftest does not truncate it):
    # only the pauses set by this test count.
    found = await rows(engine, "SELECT * FROM delivery_pauses")
    return [p for p in found if as_utc(p["until"]) > since]


# --- 5. and 6. retry timing -------------------------------------------------------------------


async def test_retries_after_server_errors_follow_the_backoff_and_keep_the_last_error(
    start_line: LineFactory,
):
    seed = 11
    line = await start_line(policy=RetryPolicy(base_seconds=BASE, jitter=random.Random(seed)))
    adapter = line.adapter("demo", "telegram")
    # The chat's own 1/s limit would stretch these sub-second retries to 1 s: out of
    # the way here (a test below shows retries do respect it).
    adapter.capabilities = dataclasses.replace(adapter.capabilities, per_chat_rate_limit=None)
    chat = 600000001
    for n in (1, 2, 3):
        line.demo.fail_next(
            "sendMessage", "500", description=f"Internal Server Error {n}", chat_id=chat
        )
    seen: list[tuple[int, str, str | None]] = []

    async def look(call: ApiCall) -> None:
        # The row as the dispatcher left it right before this attempt.
        (row,) = await rows(
            line.engine,
            "SELECT attempts, status, error FROM chat_messages WHERE channel_user_id = :c",
            c=str(chat),
        )
        seen.append((row["attempts"], row["status"], row["error"]))

    line.probe.on_arrival = look
    (message_id,) = await line.queue([(chat, "hello")])

    row = (await line.settled([message_id]))[message_id]

    assert (row["status"], row["attempts"], row["error"]) == ("sent", 4, None)
    errors = [f"5xx: Telegram server says - Internal Server Error {n}" for n in (1, 2, 3)]
    assert seen == [
        (1, "pending", None),
        (2, "pending", errors[0]),
        (3, "pending", errors[1]),
        (4, "pending", errors[2]),
    ]
    calls = line.probe.of(chat)
    assert [c.status for c in calls] == [500, 500, 500, 200]
    draws = random.Random(seed)
    for n, (failed, retried) in enumerate(itertools.pairwise(calls), start=1):
        ceiling = BASE * 2 ** (n - 1)
        drawn = draws.uniform(ceiling / 2, ceiling)  # what the policy drew for this retry
        waited = gap(failed, retried)
        # Never before the delay the policy drew; after it only the loop's own work
        # (about 0.05 s, up to 0.45 s seen on a loaded machine).
        assert drawn <= waited <= drawn + 0.5, (n, waited, drawn)
        assert ceiling / 2 <= waited <= ceiling + 0.5, (n, waited)


async def test_a_retry_still_waits_for_the_chats_one_per_second(start_line: LineFactory):
    line = await start_line()
    sends = record_sends(line.adapter("demo", "telegram"))
    chat = 610000001
    line.demo.fail_next("sendMessage", "500", chat_id=chat)  # backoff 0.1 to 0.2 s
    (message_id,) = await line.queue([(chat, "hello")])

    row = (await line.settled([message_id]))[message_id]

    assert (row["status"], row["attempts"]) == ("sent", 2)
    assert [c.status for c in line.probe.of(chat)] == [500, 200]
    first, retry = sends
    assert retry - first >= 1.0


async def test_retry_after_of_a_429_is_honoured_exactly(start_line: LineFactory):
    line = await start_line()
    chat = 700000001
    line.demo.fail_next("sendMessage", "429", retry_after=1, chat_id=chat)
    (message_id,) = await line.queue([(chat, "hello")])

    row = (await line.settled([message_id]))[message_id]

    assert (row["status"], row["attempts"]) == ("sent", 2)
    throttled, retried = line.probe.of(chat)
    assert (throttled.status, retried.status) == (429, 200)
    # Not before the retry_after; after it, only the loop's own work (two commits, a
    # cycle): about 0.05 s; up to 0.45 s was seen on a loaded 2-core machine.
    assert 1.0 <= gap(throttled, retried) <= 1.5


# --- 7. and 8. failing for good -----------------------------------------------------------


async def test_blocked_chat_fails_at_once_with_the_provider_error_and_others_go_on(
    start_line: LineFactory,
):
    line = await start_line()
    blocked, other = 800000001, 800000002
    line.demo.blocked_chats.add(blocked)
    ids = await line.queue([(blocked, "to the blocked"), (other, "to another")])

    found = await line.settled(ids)

    refused, delivered = found[ids[0]], found[ids[1]]
    assert (refused["status"], refused["attempts"], refused["error"]) == (
        "failed",
        1,
        "403: Forbidden: bot was blocked by the user",
    )
    assert (delivered["status"], delivered["attempts"], delivered["error"]) == ("sent", 1, None)
    assert [c.status for c in line.probe.of(blocked)] == [403]
    assert texts(accepted(line.demo)) == ["to another"]


async def test_failing_chat_is_given_up_after_max_attempts_a_throttled_one_is_not(
    start_line: LineFactory,
):
    line = await start_line(policy=RetryPolicy(max_attempts=3, base_seconds=BASE))
    failing, throttled = 900000001, 900000002
    line.demo.fail_next("sendMessage", "500", count=100, chat_id=failing)
    line.demo.fail_next("sendMessage", "429", count=3, retry_after=1, chat_id=throttled)
    ids = await line.queue([(failing, "never"), (throttled, "eventually")])

    found = await line.settled(ids)

    given_up, delivered = found[ids[0]], found[ids[1]]
    assert (given_up["status"], given_up["attempts"]) == ("failed", 3)
    assert given_up["error"] == (
        "gave up after 3 attempts: 5xx: Telegram server says - Internal Server Error"
    )
    assert [c.status for c in line.probe.of(failing)] == [500, 500, 500]
    assert (delivered["status"], delivered["attempts"]) == ("sent", 4)
    assert [c.status for c in line.probe.of(throttled)] == [429, 429, 429, 200]


async def test_throttled_tries_do_not_count_towards_max_attempts(start_line: LineFactory):
    line = await start_line(policy=RetryPolicy(max_attempts=3, base_seconds=BASE))
    chat = 910000001
    line.demo.fail_next("sendMessage", "429", count=2, retry_after=1, chat_id=chat)
    line.demo.fail_next("sendMessage", "500", chat_id=chat)
    (message_id,) = await line.queue([(chat, "hello")])

    row = (await line.settled([message_id]))[message_id]

    # One real failure (the 500) of the three allowed: the fourth try goes out.
    assert (row["status"], row["attempts"]) == ("sent", 4), row["error"]
