"""Outbound delivery: sends/s through the engine beside a naive sender, and a rate limit kept.

A fake Telegram Bot API (tests/fakes/telegram_api.py) runs in a subprocess of its
own, answering at once, and records when each sendMessage arrived. In this
process, each phase has its own SQLite database (a temp folder, migrated), its
own broker and bot, and the real engine: `Channels` with the Telegram adapter
(aiogram), the outbox and `Dispatcher.run()` with the runtime's default options.

1. engine: --messages rows queued (each to its own chat: Telegram's 1/s per chat
   cannot be lifted), the channel's limit lifted through brokers.toml
   (`rate_limits.telegram = { messages_per_second = 1000000 }`); a warm-up of
   --warmup rows goes first through another dispatcher. Timed from the start of
   `Dispatcher.run()` to the last row's `sent_at`: sends/s = rows sent / that time.
2. naive: --naive-messages rows sent one at a time through aiogram, as the engine
   sends, with a new HTTP client per message (a new aiogram Bot and session: TLS
   context, connector, connection), each row then marked `sent` in a transaction of
   its own; the target's ratio is against it. Then "kept", a kinder naive sender: one
   Bot and TLS context for all, a new aiohttp session and connection per message.
   Same fake, same machine: sends/s and both ratios.
3. rate: a broker with `messages_per_second = 30`, 30 x --rate-seconds + 50 rows
   to distinct chats, the dispatcher left to send them all. From the arrival
   times at the fake (what Telegram would count): arrivals in the first
   --rate-seconds from the first one / --rate-seconds, (n - 1) / (last - first),
   and the most arrivals in any 1 s window.
4. lag: `leadline run` (SQLite, its own bot, the limit lifted) gets sends through
   POST /api/v1 at --lag-rate for --lag-seconds; a connection of this process polls
   the database every --lag-poll-ms; each send's lag is from the fake's answer to the
   first poll that saw its outcome: p50/p90/p99/max (--lag-only: this phase alone).

CPU of this process (the engine, with a poll of the database every 50 ms), of
the fake and of the rest of the machine comes from /proc per phase. Targets
(2 cores): >= 1,500 sends/s through the engine and >= 5x the naive sender; the
measured rate within 3% of the configured 30/s, no 1 s window above 30. Always
exits 0: it is a benchmark, not a test.

    .venv/bin/python -m bench.outbound                      # from the repo root
    .venv/bin/python -m bench.outbound --messages 5000 --naive-messages 300 --rate-seconds 10
    .venv/bin/python -m bench.outbound --profile engine.prof   # cProfile of phase 1 only
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import html
import logging
import math
import os
import sqlite3
import sys
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import aiohttp
import aiosqlite
import sqlalchemy as sa
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.ingest import REPO, CpuMeter, Popen, free_port, spawn, stop, tail
from bench.scratch import scratch_folder
from leadline.adapters.registry import discover
from leadline.config.loader import load_brokers
from leadline.config.vocabulary import Direction, MessageStatus
from leadline.runtime.channels import Channels, ChannelState
from leadline.runtime.dispatcher import DeliveryOptions, Dispatcher
from leadline.runtime.gc_tuning import tune_gc
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory
from leadline.storage.leads import ChannelIdentity, identity_of, resolve_leads
from leadline.storage.migrate import upgrade
from leadline.storage.models import ChatMessage
from leadline.storage.outbox import QueuedMessage, enqueue
from leadline.storage.types import utcnow

# One bot (token) per phase, so the fake counts each phase's sends apart.
BOTS = {
    "engine": "515151:BENCHtoken_outbound-engine-0123",
    "naive": "525252:BENCHtoken_outbound-naive-0123",
    "kept": "545454:BENCHtoken_outbound-kept-01234",
    "rate": "535353:BENCHtoken_outbound-rate-01234",
    "lag": "555555:BENCHtoken_outbound-lag-012345",
}
FIRST_CHAT = {
    "engine": 800_000_000,
    "naive": 810_000_000,
    "kept": 830_000_000,
    "rate": 820_000_000,
    "lag": 840_000_000,
}
LIFTED = 1_000_000  # messages/s: no limit in practice
RATE = 30.0  # messages/s configured for phase 3
RATE_EXTRA = 50  # rows queued beyond RATE x --rate-seconds, so sending outlasts the window
POLL_SECONDS = 0.05
STARTUP_TIMEOUT = 30.0
PHASE_BUDGET = 300.0  # a phase stops waiting after this
TARGET_SENDS_PER_S = 1500.0
TARGET_RATIO = 5.0
TARGET_RATE_ERROR = 0.03
FAKE_BOUND = 90.0  # % of a core: above, the fake limits the engine's figure
OTHERS_BUSY = 25.0  # % of a core used by other processes: the figures are disturbed
TEXT = "Hi {i}! The 2-bedroom flat on Elm Street is still available; visits are on Saturday."

BROKER_TOML = """\
[brokers.{broker}]
name = "Bench {broker}"
timezone = "UTC"
default_provider = "telegram"

[brokers.{broker}.providers.telegram]
bot_token = "${{BENCH_TOKEN}}"
mode = "polling"
api_base = "{api_base}"

[brokers.{broker}.rate_limits]
telegram = {{ messages_per_second = {per_second} }}

[brokers.{broker}.features]
auto_reply = false
typing_indicator = false
"""


# --- the fake Bot API (its own process) --------------------------------------------


def serve_fake(port: int) -> None:
    """The fake Bot API with the three bots, plus GET /bench/sends/<phase>: that bot's
    sendMessage arrival times (time.monotonic of the fake) and chat ids, in arrival order."""
    from tests.fakes.telegram_api import FakeTelegram

    fake = FakeTelegram()
    by_phase = {phase: fake.add_bot(token, f"bench_{phase}_bot") for phase, token in BOTS.items()}

    async def sends(request: web.Request) -> web.Response:
        bot = by_phase.get(request.match_info["phase"])
        if bot is None:
            raise web.HTTPNotFound
        calls = [c for c in bot.sent if c.method.lower() == "sendmessage"]
        return web.json_response(
            {
                "at": [c.at for c in calls],
                "chat_ids": [c.params.get("chat_id") for c in calls],
                "texts": [c.params.get("text") for c in calls],
                "requests": sum(1 for r in fake.requests if r.bot == bot.username),
            }
        )

    app = fake.app()
    app.router.add_get("/bench/sends/{phase}", sends)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


@dataclass
class Arrivals:
    at: list[float]  # sendMessage arrival times at the fake, seconds, sorted
    chats: int  # distinct chats among them
    requests: int  # every request of that bot (getMe included)

    @property
    def span(self) -> float:
        return self.at[-1] - self.at[0] if len(self.at) > 1 else 0.0

    def rate(self) -> float:
        """(n - 1) / (last - first)."""
        return (len(self.at) - 1) / self.span if self.span else float("nan")

    def rate_over(self, seconds: float) -> float:
        """Arrivals in [first, first + seconds) / seconds."""
        if not self.at:
            return float("nan")
        end = self.at[0] + seconds
        return sum(1 for t in self.at if t < end) / seconds

    def windows(self, seconds: float = 1.0) -> list[tuple[float, int]]:
        """For each arrival, the arrivals in [it, it + seconds): (its offset from the first
        arrival, that count). The busiest window of any start is one of these."""
        found: list[tuple[float, int]] = []
        j = 0
        for i, start in enumerate(self.at):
            j = max(j, i)
            while j < len(self.at) and self.at[j] < start + seconds:
                j += 1
            found.append((start - self.at[0], j - i))
        return found

    def largest_window(self) -> tuple[int, float]:
        """The most arrivals in any 1 s window, and where that window starts."""
        offset, count = max(self.windows(), key=lambda w: (w[1], -w[0]), default=(0.0, 0))
        return count, offset


async def fetch_arrivals(http: aiohttp.ClientSession, api_base: str, phase: str) -> Arrivals:
    async with http.get(f"{api_base}/bench/sends/{phase}") as response:
        response.raise_for_status()
        found = await response.json()
    return Arrivals(sorted(found["at"]), len(set(found["chat_ids"])), found["requests"])


async def wait_for_fake(api_base: str, process: Popen, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"fake exited early ({process.returncode}):\n{tail(log_path)}")
            try:
                await fetch_arrivals(http, api_base, "engine")
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = exc.__class__.__name__
            await asyncio.sleep(0.1)
    raise RuntimeError(f"fake not up after {STARTUP_TIMEOUT:.0f}s ({last}):\n{tail(log_path)}")


# --- one phase's database, broker and channel -----------------------------------------


@dataclass
class Stack:
    phase: str
    database: Path
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    channels: Channels
    transactions: Counter[str]  # commits and rollbacks on the engine's connections

    async def close(self) -> None:
        await self.channels.close()
        await self.engine.dispose()


async def open_stack(folder: Path, phase: str, api_base: str, per_second: float) -> Stack:
    """A migrated SQLite database with one broker whose Telegram channel is up."""
    toml = BROKER_TOML.format(broker=phase, api_base=api_base, per_second=per_second)
    registry = discover(None, use_entry_points=False)
    brokers = load_brokers(
        tomllib.loads(toml), registry.config_models(), {"BENCH_TOKEN": BOTS[phase]}
    )
    if not brokers.ok:
        raise RuntimeError("; ".join(str(issue) for issue in brokers.issues))
    database = folder / f"{phase}.db"
    engine = make_engine(f"sqlite+aiosqlite:///{database}")
    await upgrade(engine)
    sessions = make_session_factory(engine)
    transactions: Counter[str] = Counter()
    for event in ("commit", "rollback"):
        sa.event.listen(engine.sync_engine, event, lambda _c, e=event: transactions.update([e]))
    broker = brokers.brokers[phase]
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord(broker.id, broker.name, broker.timezone)])
    channels = Channels.build(brokers, registry, None)
    await channels.start()  # the adapter's start(): getMe
    channel = channels.get(phase, "telegram")
    if channel is None or channel.state != ChannelState.UP:
        await engine.dispose()
        raise RuntimeError(f"{phase}: telegram channel not up: {channel and channel.reason}")
    return Stack(phase, database, engine, sessions, channels, transactions)


def chat_ids(phase: str, start: int, count: int) -> list[str]:
    return [str(FIRST_CHAT[phase] + i) for i in range(start, start + count)]


async def queue(stack: Stack, chats: Sequence[str]) -> float:
    """Queue one pending row per chat (their leads created in bulk); returns the seconds."""
    started = time.perf_counter()
    people = [ChannelIdentity(stack.phase, "telegram", chat) for chat in chats]
    async with stack.sessions() as session, session.begin():
        leads = await resolve_leads(session, people)
        for i, who in enumerate(people):
            message = QueuedMessage(
                leads[identity_of(who)],
                stack.phase,
                "telegram",
                who.channel_user_id,
                TEXT.format(i=i),
            )
            await enqueue(session, message)
    return time.perf_counter() - started


async def pending_count(db: aiosqlite.Connection) -> int:
    """Outbound rows still pending, read outside the engine's pool: a plain aiosqlite
    connection (autocommit reads) sees the latest WAL snapshot and takes no write lock."""
    cursor = await db.execute(
        "SELECT count(*) FROM chat_messages WHERE direction = 'out' AND status = 'pending'"
    )
    (count,) = await cursor.fetchone() or (0,)
    await cursor.close()
    return int(count)


@dataclass
class Tally:
    """The outbound rows of a database by status, their most attempts, the last sent_at."""

    statuses: dict[str, int] = field(default_factory=dict)
    max_attempts: int = 0
    last_sent_at: datetime | None = None

    @property
    def sent(self) -> int:
        return self.statuses.get(MessageStatus.SENT.value, 0)


async def tally(stack: Stack) -> Tally:
    query = (
        sa.select(
            col(ChatMessage.status),
            sa.func.count(),
            sa.func.max(col(ChatMessage.attempts)),
            sa.func.max(col(ChatMessage.sent_at)),
        )
        .where(col(ChatMessage.direction) == Direction.OUT)
        .group_by(col(ChatMessage.status))
    )
    found = Tally()
    async with stack.sessions() as session:
        for status, count, attempts, last in (await session.exec(query)).all():
            found.statuses[MessageStatus(status).value] = count
            found.max_attempts = max(found.max_attempts, attempts or 0)
            if last is not None:
                found.last_sent_at = max(filter(None, (found.last_sent_at, last)))
    return found


@dataclass
class Run:
    """One dispatcher run, from `run()` until no row is pending."""

    started_at: datetime  # wall clock, to compare with sent_at
    seen: float  # seconds until the poll saw no pending row (or the budget ran out)
    result: Tally
    cpu: CpuMeter
    transactions: Counter[str]  # during the run

    @property
    def seconds(self) -> float:
        """From the start to the last row's sent_at."""
        if self.result.last_sent_at is None:
            return float("nan")
        return (self.result.last_sent_at - self.started_at).total_seconds()

    @property
    def rate(self) -> float:
        return self.result.sent / self.seconds if self.result.sent else 0.0


async def dispatch_all(
    stack: Stack, fake_pid: int, profiler: cProfile.Profile | None = None
) -> Run:
    """Run a dispatcher until nothing is pending, then stop it."""
    dispatcher = Dispatcher(stack.sessions, stack.channels, options=DeliveryOptions())
    before = Counter(stack.transactions)
    async with aiosqlite.connect(stack.database) as db:
        with CpuMeter(fake_pid) as cpu:
            if profiler is not None:
                profiler.enable()
            started_at = utcnow()
            started = time.perf_counter()
            task = asyncio.create_task(dispatcher.run(), name=f"dispatcher {stack.phase}")
            while time.perf_counter() - started < PHASE_BUDGET and not task.done():
                await asyncio.sleep(POLL_SECONDS)
                if await pending_count(db) == 0:
                    break
            seen = time.perf_counter() - started
            if profiler is not None:
                profiler.disable()
    dispatcher.stop()
    await task  # raises what the dispatcher raised, if it did
    transactions = stack.transactions - before
    return Run(started_at, seen, await tally(stack), cpu, transactions)


# --- the naive sender -----------------------------------------------------------------


@dataclass
class Naive:
    sent: int
    wall: float
    cpu: CpuMeter

    @property
    def rate(self) -> float:
        return self.sent / self.wall if self.wall else 0.0


async def send_naively(stack: Stack, api_base: str, fake_pid: int, keep_client: bool) -> Naive:
    """One message at a time, through aiogram as the engine sends, then that row alone
    marked sent in its own transaction.

    `keep_client=False` (the issue's naive sender): a new HTTP client per message, a
    new aiogram `Bot` and session, with its TLS context and connection, as
    `async with Bot(token) as bot:` around each send would open. It is closed
    without aiogram's 250 ms sleep for TLS connections, which loopback has none of.

    `keep_client=True` (a kinder naive sender): one `Bot` and TLS context for all,
    but a new aiohttp session (connector, connection) per message. What still
    differs from the engine is what the engine is for: pooled connections, outcomes
    committed together, many sends under way.
    """
    pending = (
        sa.select(col(ChatMessage.id), col(ChatMessage.channel_user_id), ChatMessage.message_text)
        .where(
            col(ChatMessage.direction) == Direction.OUT,
            col(ChatMessage.status) == MessageStatus.PENDING,
        )
        .order_by(col(ChatMessage.id))
    )
    async with stack.sessions() as session:
        rows = (await session.exec(pending)).all()
    server = TelegramAPIServer.from_base(api_base)
    kept = AiohttpSession(api=server, timeout=30)
    sent = 0
    with CpuMeter(fake_pid) as cpu:
        started = time.perf_counter()
        for row_id, chat, text in rows:
            if time.perf_counter() - started > PHASE_BUDGET:
                break
            client = kept if keep_client else AiohttpSession(api=server, timeout=30)
            bot = Bot(BOTS[stack.phase], session=client)
            try:
                message = await bot.send_message(
                    int(chat), html.escape(text or ""), parse_mode="HTML"
                )
            finally:
                if client._session is not None:  # the connection goes with its message
                    await client._session.close()
            now = utcnow()
            async with stack.sessions() as session, session.begin():
                await session.exec(
                    sa.update(ChatMessage)
                    .where(col(ChatMessage.id) == row_id)
                    .values(
                        status=MessageStatus.SENT,
                        channel_message_id=f"{message.chat.id}:{message.message_id}",
                        attempts=col(ChatMessage.attempts) + 1,
                        sent_at=now,
                        updated_at=now,
                    )
                )
            sent += 1
        wall = time.perf_counter() - started
    return Naive(sent, wall, cpu)


# --- 4. lag: from the provider's answer to the outcome's commit, beside API load ---------

LAG_API_KEY = "bench-outbound-lag-api-key-01234567"  # a loopback benchmark's key
LAG_TOML = """\
[brokers.{broker}]
name = "Bench lag"
timezone = "UTC"
default_provider = "telegram"
api_keys = ["${{BENCH_API_KEY}}"]

[brokers.{broker}.providers.telegram]
bot_token = "${{BENCH_TOKEN}}"
mode = "polling"
api_base = "{api_base}"

[brokers.{broker}.rate_limits]
telegram = {{ messages_per_second = {per_second} }}

[brokers.{broker}.features]
auto_reply = false
typing_indicator = false
"""
LAG_SLOW = 0.1  # seconds: lags above this are counted apart


class CommitWatch:
    """Watches the outbound rows from a connection of its own (a thread, plain sqlite3):
    every `interval`, the rows from the oldest one still pending on. A row first seen no
    longer pending by a poll that began at t was committed before t and after the
    previous poll began: its commit time is t, late by at most one interval (plus the
    poll's own time) — never early."""

    def __init__(self, database: Path, interval: float) -> None:
        self._database = database
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="commit-watch", daemon=True)
        self.seen: dict[tuple[str, str], float] = {}  # (chat, text) -> first poll that saw it
        self.polls = 0
        self.poll_seconds = 0.0

    def __enter__(self) -> CommitWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean_poll(self) -> float:
        return self.poll_seconds / self.polls if self.polls else float("nan")

    def _watch(self) -> None:
        query = (
            "SELECT id, status, channel_user_id, message_text FROM chat_messages "
            "WHERE id >= ? AND direction = 'out' ORDER BY id"
        )
        low = 0
        with contextlib.closing(sqlite3.connect(self._database, isolation_level=None)) as db:
            while not self._stop.is_set():
                began = time.monotonic()
                found = db.execute(query, (low,)).fetchall()
                oldest_pending = None
                for row_id, status, chat, text in found:
                    if status == MessageStatus.PENDING.value:
                        oldest_pending = oldest_pending or row_id
                    else:
                        self.seen.setdefault((chat, text), began)
                if oldest_pending is not None:
                    low = oldest_pending
                elif found:
                    low = found[-1][0] + 1
                took = time.monotonic() - began
                self.polls += 1
                self.poll_seconds += took
                self._stop.wait(max(0.0, self._interval - took))


@dataclass
class ApiLoad:
    acked: list[tuple[str, str]] = field(default_factory=list)  # (chat, text) answered 202
    latencies: list[float] = field(default_factory=list)  # from the scheduled time
    failures: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0


async def api_load(
    http: aiohttp.ClientSession,
    base: str,
    leads: Sequence[tuple[int, str]],
    args: argparse.Namespace,
) -> ApiLoad:
    """POST /api/v1/leads/{id}/messages, request n at start + n / rate whatever became of the
    earlier ones (at most --lag-concurrency under way), each lead in turn."""
    load = ApiLoad()
    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {LAG_API_KEY}"}
    slots = asyncio.Semaphore(args.lag_concurrency)
    count = max(1, round(args.lag_rate * args.lag_seconds))

    async def one(index: int, scheduled: float) -> None:
        lead_id, chat = leads[index % len(leads)]
        text = f"lag {index}"
        url = f"{base}/api/v1/leads/{lead_id}/messages"
        async with slots:
            try:
                async with http.post(url, json={"text": text}, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                load.failures[exc.__class__.__name__] += 1
                return
        if status == 202:
            load.acked.append((chat, text))
            load.latencies.append(loop.time() - scheduled)
        else:
            load.failures[f"HTTP {status}"] += 1

    started = time.perf_counter()
    start = loop.time() + 0.01
    tasks = []
    for index in range(count):
        scheduled = start + index / args.lag_rate
        if (delay := scheduled - loop.time()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.gather(*tasks)
    load.wall = time.perf_counter() - started
    return load


@dataclass
class Lag:
    load: ApiLoad
    lags: list[float]  # seconds, one per send both answered by the fake and seen committed
    unmatched: int  # acknowledged rows with no answer or no commit seen
    interval: float  # the watch's poll interval
    mean_poll: float
    cpu: CpuMeter


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def lag_phase(
    args: argparse.Namespace, folder: Path, api_base: str, http: aiohttp.ClientSession
) -> Lag:
    """`leadline run` (a subprocess, SQLite) with one Telegram bot on the fake and its limit
    lifted; this process posts sends to its API and watches the database for their
    outcomes; the fake says when it answered each."""
    from bench.ingest import BROKER, LEADLINE, leadline_env, wait_until_up

    home = folder / "lag"
    home.mkdir()
    database = home / "leadline.db"
    (home / "brokers.toml").write_text(
        LAG_TOML.format(broker=BROKER, api_base=api_base, per_second=LIFTED)
    )
    leads = await lag_leads(database, BROKER, args.lag_leads)
    port = free_port()
    env = leadline_env(home, database, port) | {
        "BENCH_TOKEN": BOTS["lag"],
        "BENCH_API_KEY": LAG_API_KEY,
    }
    log_path = home / "leadline.log"
    process = spawn([LEADLINE, "run"], env, home, log_path)
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(base, process, log_path, leadline=True)
        before = await fetch_sends(http, api_base, "lag")
        offered = round(args.lag_rate * args.lag_seconds)
        print(f"lag: {offered} API sends at {args.lag_rate:g}/s to {len(leads)} leads", flush=True)
        interval = args.lag_poll_ms / 1000
        with CommitWatch(database, interval) as watch, CpuMeter(process.pid) as cpu:
            load = await api_load(http, base, leads, args)
            deadline = time.monotonic() + PHASE_BUDGET
            while time.monotonic() < deadline:
                if set(load.acked) <= watch.seen.copy().keys():  # the watch's thread adds
                    break
                await asyncio.sleep(POLL_SECONDS)
        answered = await fetch_sends(http, api_base, "lag")
    finally:
        await asyncio.to_thread(stop, process)
    at = dict(list(answered.items())[len(before) :])
    lags = [watch.seen[key] - at[key] for key in load.acked if key in at and key in watch.seen]
    unmatched = len(load.acked) - len(lags)
    return Lag(load, lags, unmatched, interval, watch.mean_poll, cpu)


async def lag_leads(database: Path, broker_id: str, count: int) -> list[tuple[int, str]]:
    """A migrated database with the broker and `count` leads, each with its own chat."""
    engine = make_engine(f"sqlite+aiosqlite:///{database}")
    try:
        await upgrade(engine)
        sessions = make_session_factory(engine)
        chats = chat_ids("lag", 0, count)
        people = [ChannelIdentity(broker_id, "telegram", chat) for chat in chats]
        async with sessions() as session, session.begin():
            await upsert_brokers(session, [BrokerRecord(broker_id, "Bench lag", "UTC")])
            found = await resolve_leads(session, people)
        return [(found[identity_of(who)], who.channel_user_id) for who in people]
    finally:
        await engine.dispose()


async def fetch_sends(
    http: aiohttp.ClientSession, api_base: str, phase: str
) -> dict[tuple[str, str], float]:
    """(chat, text) -> when the fake answered that sendMessage, in answer order."""
    async with http.get(f"{api_base}/bench/sends/{phase}") as response:
        response.raise_for_status()
        found = await response.json()
    answered = zip(found["chat_ids"], found["texts"], found["at"], strict=True)
    return {(str(chat), text): at for chat, text, at in answered}


def report_lag(lag: Lag) -> list[str]:
    """The lag's lines of the report; notes for the end."""
    load, lags = lag.load, lag.lags
    failures = ", ".join(f"{n} {why}" for why, n in load.failures.most_common()) or "none"
    print()
    print(
        f"lag: {len(load.acked)} sends queued through POST /api/v1 (202) in {load.wall:.1f} s, "
        f"failures: {failures}; API p50 {percentile(load.latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {percentile(load.latencies, 0.99) * 1000:.1f} ms"
    )
    print(
        f"  answer-to-commit (the fake's answer to the first poll of another connection that "
        f"saw the outcome; polls every {lag.interval * 1000:g} ms, {lag.mean_poll * 1000:.2f} ms "
        f"each): n {len(lags)}, p50 {percentile(lags, 0.5) * 1000:.1f} ms, "
        f"p90 {percentile(lags, 0.9) * 1000:.1f} ms, p99 {percentile(lags, 0.99) * 1000:.1f} ms, "
        f"max {max(lags, default=float('nan')) * 1000:.1f} ms; "
        f"{sum(1 for x in lags if x > LAG_SLOW)} above {LAG_SLOW * 1000:.0f} ms"
    )
    print(
        f"  cpu, % of one core: leadline {lag.cpu.server:.0f}%, this process "
        f"{lag.cpu.client:.0f}%, the rest {lag.cpu.others:.0f}%"
    )
    notes = []
    if lag.unmatched:
        notes.append(f"  note: {lag.unmatched} acknowledged sends had no answer or no commit seen")
    return notes


# --- the report -----------------------------------------------------------------------


def _ratio(engine: Run | None, naive: Naive | None) -> float:
    return engine.rate / naive.rate if engine and naive and naive.rate else float("nan")


@dataclass
class Results:
    queued_engine: int = 0
    queue_seconds: float = 0.0
    engine: Run | None = None
    engine_arrivals: Arrivals | None = None
    queued_naive: int = 0
    naive: Naive | None = None
    naive_arrivals: Arrivals | None = None
    naive_check: Tally | None = None
    kept: Naive | None = None
    queued_rate: int = 0
    rate: Run | None = None
    rate_arrivals: Arrivals | None = None
    lag: Lag | None = None
    notes: list[str] = field(default_factory=list)


def cpu_cells(cpu: CpuMeter, sends: int, wall: float) -> str:
    per_send = cpu.client * wall / 100 / sends * 1000 if sends else float("nan")
    return f"{cpu.client:>8.0f}%{cpu.server:>8.0f}%{cpu.others:>8.0f}%{per_send:>9.2f}"


def disturbed(name: str, cpu: CpuMeter) -> list[str]:
    notes = []
    if cpu.server >= FAKE_BOUND:
        notes.append(
            f"  note: the fake used {cpu.server:.0f}% of a core during {name}: "
            "the figure may be the fake's limit, not the sender's"
        )
    if cpu.others >= OTHERS_BUSY:
        notes.append(
            f"  note: other processes used {cpu.others:.0f}% of a core during {name}: "
            "figures are disturbed; run again on a quiet machine"
        )
    return notes


def exactly_once(queued: int, result: Tally | None, arrivals: Arrivals | None) -> bool:
    return (
        result is not None
        and arrivals is not None
        and result.sent == queued
        and result.max_attempts == 1
        and len(arrivals.at) == queued
        and arrivals.chats == queued
    )


def report(args: argparse.Namespace, results: Results) -> None:
    r = results
    if args.lag_only:
        if r.lag is not None:
            r.notes.extend(report_lag(r.lag))
        for note in r.notes:
            print(note)
        return
    print()
    print(
        "outbound delivery, Telegram sendMessage to a fake Bot API in its own process "
        f"(answering at once); os.cpu_count() = {os.cpu_count()}"
    )
    print(
        f"engine: {r.queued_engine} rows queued, each to its own chat, channel limit lifted "
        f"({LIFTED}/s), after {args.warmup} warm-up; Dispatcher.run() to the last sent_at"
    )
    print(
        f"naive: {r.queued_naive} rows, one at a time through aiogram, a new HTTP client (aiogram "
        "Bot and session, TLS context, connection) per message, each row committed on its own"
    )
    print(
        "kept: the same, but one aiogram Bot and TLS context for all; a new aiohttp "
        "session and connection per message"
    )
    print()
    print(
        f"{'sender':<8}{'sent':>8}{'seconds':>9}{'sends/s':>9}"
        f"{'engine':>9}{'fake':>9}{'others':>9}{'ms/send':>9}"
    )
    print(f"{'':<34}{'cpu, % of one core':^27}{'cpu ms':>9}")
    print(f"{'':<34}{'(this process, fake, rest)':^27}{'per send':>9}")
    if r.engine is not None:
        e = r.engine
        print(
            f"{'engine':<8}{e.result.sent:>8}{e.seconds:>9.2f}{e.rate:>9.0f}"
            f"{cpu_cells(e.cpu, e.result.sent, e.seen)}"
        )
    else:
        print(f"{'engine':<8}{'(not measured)':>22}")
    if r.naive is not None:
        n = r.naive
        print(
            f"{'naive':<8}{n.sent:>8}{n.wall:>9.2f}{n.rate:>9.0f}{cpu_cells(n.cpu, n.sent, n.wall)}"
        )
    else:
        print(f"{'naive':<8}{'(not measured)':>22}")
    if r.kept is not None:
        k = r.kept
        print(
            f"{'kept':<8}{k.sent:>8}{k.wall:>9.2f}{k.rate:>9.0f}{cpu_cells(k.cpu, k.sent, k.wall)}"
        )
    ratio = r.engine.rate / r.naive.rate if r.engine and r.naive and r.naive.rate else float("nan")
    kept_ratio = (
        r.engine.rate / r.kept.rate if r.engine and r.kept and r.kept.rate else float("nan")
    )
    print(f"ratio engine/naive sends/s: {ratio:.1f}x (engine/kept: {kept_ratio:.1f}x)")
    print()

    if r.engine is not None:
        e, a = r.engine, r.engine_arrivals
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(e.result.statuses.items()))
        print(
            f"engine: queued in {r.queue_seconds:.1f} s ({r.queued_engine / r.queue_seconds:.0f} "
            f"rows/s, not timed above); rows now: {statuses}; attempts max "
            f"{e.result.max_attempts}; the poll saw none pending after {e.seen:.2f} s"
        )
        commits, rollbacks = e.transactions["commit"], e.transactions["rollback"]
        per_send = commits / e.result.sent if e.result.sent else float("nan")
        print(
            f"  database during the run: {commits} commits ({per_send:.2f} per send), "
            f"{rollbacks} rollbacks"
        )
        if a is not None:
            print(
                f"  the fake got {len(a.at)} sendMessage to {a.chats} chats, "
                f"{a.rate():.0f}/s from its first to its last arrival ({a.span:.2f} s)"
            )
        r.notes.extend(disturbed("the engine phase", e.cpu))
    if r.naive is not None and r.naive_check is not None:
        a = r.naive_arrivals
        print(
            f"naive: {r.naive_check.sent} rows sent, attempts max {r.naive_check.max_attempts}"
            + (f"; the fake got {len(a.at)} sendMessage to {a.chats} chats" if a else "")
        )
        r.notes.extend(disturbed("the naive phase", r.naive.cpu))

    rate_20 = float("nan")
    burst = (0, 0.0)
    if r.rate is not None and r.rate_arrivals is not None and r.rate_arrivals.at:
        a = r.rate_arrivals
        rate_20 = a.rate_over(args.rate_seconds)
        burst = a.largest_window()
        in_window = round(rate_20 * args.rate_seconds)
        print()
        print(
            f"rate: {RATE:.0f} messages/s configured (rate_limits.telegram), {r.queued_rate} rows "
            f"to distinct chats; {len(a.at)} arrivals at the fake over {a.span:.2f} s"
        )
        print(
            f"  first {args.rate_seconds:g} s from the first arrival: {in_window} arrivals -> "
            f"{rate_20:.2f}/s ({(rate_20 / RATE - 1) * 100:+.1f}%)"
        )
        print(f"  first to last arrival: (n - 1) / span = {a.rate():.2f}/s")
        print(f"  largest burst in any 1 s window: {burst[0]} (window from +{burst[1]:.2f} s)")
        above = [offset for offset, count in a.windows() if count > RATE]
        if above:
            print(
                f"  1 s windows above {RATE:.0f}: {len(above)} of the {len(a.at)} starting at an "
                f"arrival, from +{above[0]:.2f} s to +{above[-1]:.2f} s"
            )
        if a.span < args.rate_seconds:
            r.notes.append(
                f"  note: the arrivals span {a.span:.1f} s, less than {args.rate_seconds:g} s: "
                "the rate over the window is not meaningful"
            )
        r.notes.extend(disturbed("the rate phase", r.rate.cpu))
    if r.lag is not None:
        r.notes.extend(report_lag(r.lag))
    for note in r.notes:
        print(note)

    engine_rate = r.engine.rate if r.engine else 0.0
    verdict = {
        f"engine >= {TARGET_SENDS_PER_S:.0f} sends/s": (
            engine_rate >= TARGET_SENDS_PER_S,
            f"{engine_rate:.0f}",
        ),
        f"engine >= {TARGET_RATIO:.0f}x the naive sender": (ratio >= TARGET_RATIO, f"{ratio:.1f}x"),
        "engine: every queued row sent exactly once": (
            exactly_once(r.queued_engine, r.engine and r.engine.result, r.engine_arrivals),
            "",
        ),
        f"rate within {TARGET_RATE_ERROR:.0%} of {RATE:.0f}/s over {args.rate_seconds:g} s": (
            abs(rate_20 / RATE - 1) <= TARGET_RATE_ERROR,
            f"{rate_20:.2f}/s",
        ),
        f"no 1 s window above {RATE:.0f}": (
            r.rate_arrivals is not None and 0 < burst[0] <= RATE,
            f"max {burst[0]}",
        ),
    }
    print()
    for target, (ok, value) in verdict.items():
        print(f"{'PASS' if ok else 'FAIL'}  {target}{f' ({value})' if value else ''}")
    print(f"overall: {'PASS' if all(ok for ok, _ in verdict.values()) else 'FAIL'}")


# --- the run --------------------------------------------------------------------------


async def bench(args: argparse.Namespace, folder: Path, results: Results) -> None:
    port = free_port()
    log_path = folder / "fake.log"
    command = [sys.executable, "-m", "bench.outbound", "--serve-fake", str(port)]
    process = spawn(command, dict(os.environ), REPO, log_path)
    api_base = f"http://127.0.0.1:{port}"
    try:
        await wait_for_fake(api_base, process, log_path)
        print(f"fake Bot API: pid {process.pid} on {api_base}", flush=True)
        # The collector as `leadline run` sets it once started; the naive sender,
        # in this same process, runs with it too.
        tune_gc()
        async with aiohttp.ClientSession() as http:
            if not args.lag_only:
                await engine_phase(args, folder, api_base, process.pid, http, results)
                await naive_phase(args, folder, api_base, process.pid, http, results)
                await rate_phase(args, folder, api_base, process.pid, http, results)
            if args.lag_seconds > 0:
                results.lag = await lag_phase(args, folder, api_base, http)
    finally:
        # Off the loop: nothing here needs the loop any more, but stop() waits.
        await asyncio.to_thread(stop, process)


async def engine_phase(
    args: argparse.Namespace,
    folder: Path,
    api_base: str,
    fake_pid: int,
    http: aiohttp.ClientSession,
    results: Results,
) -> None:
    stack = await open_stack(folder, "engine", api_base, LIFTED)
    try:
        if args.warmup:
            await queue(stack, chat_ids("engine", 0, args.warmup))
            await dispatch_all(stack, fake_pid)
        warm = await fetch_arrivals(http, api_base, "engine")
        print(f"engine: {len(warm.at)} warm-up sends; queueing {args.messages}", flush=True)
        # Only phase 1's rows count: the warm-up's leave the table.
        async with stack.sessions() as session, session.begin():
            await session.exec(sa.delete(ChatMessage))
        results.queue_seconds = await queue(stack, chat_ids("engine", args.warmup, args.messages))
        results.queued_engine = args.messages
        print("engine: sending", flush=True)
        profiler = cProfile.Profile() if args.profile else None
        results.engine = await dispatch_all(stack, fake_pid, profiler)
        if profiler is not None:
            profiler.dump_stats(args.profile)
            results.notes.append(f"cProfile of the engine phase written to {args.profile}")
        found = await fetch_arrivals(http, api_base, "engine")
        results.engine_arrivals = Arrivals(
            found.at[len(warm.at) :], found.chats - warm.chats, found.requests - warm.requests
        )
    finally:
        await stack.close()


async def naive_phase(
    args: argparse.Namespace,
    folder: Path,
    api_base: str,
    fake_pid: int,
    http: aiohttp.ClientSession,
    results: Results,
) -> None:
    stack = await open_stack(folder, "naive", api_base, LIFTED)
    try:
        await queue(stack, chat_ids("naive", 0, args.naive_messages))
        results.queued_naive = args.naive_messages
        print(f"naive: sending {args.naive_messages}", flush=True)
        results.naive = await send_naively(stack, api_base, fake_pid, keep_client=False)
        results.naive_check = await tally(stack)
        results.naive_arrivals = await fetch_arrivals(http, api_base, "naive")
    finally:
        await stack.close()
    stack = await open_stack(folder, "kept", api_base, LIFTED)
    try:
        await queue(stack, chat_ids("kept", 0, args.naive_messages))
        print(f"naive, client kept: sending {args.naive_messages}", flush=True)
        results.kept = await send_naively(stack, api_base, fake_pid, keep_client=True)
    finally:
        await stack.close()


async def rate_phase(
    args: argparse.Namespace,
    folder: Path,
    api_base: str,
    fake_pid: int,
    http: aiohttp.ClientSession,
    results: Results,
) -> None:
    stack = await open_stack(folder, "rate", api_base, RATE)
    count = math.ceil(RATE * args.rate_seconds) + RATE_EXTRA
    try:
        await queue(stack, chat_ids("rate", 0, count))
        results.queued_rate = count
        print(f"rate: sending {count} at {RATE:.0f}/s (about {count / RATE:.0f} s)", flush=True)
        results.rate = await dispatch_all(stack, fake_pid)
        results.rate_arrivals = await fetch_arrivals(http, api_base, "rate")
    finally:
        await stack.close()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.outbound",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000, help="engine phase rows")
    parser.add_argument("--naive-messages", type=int, default=1000, help="naive phase rows")
    parser.add_argument("--rate-seconds", type=float, default=20.0, help="rate phase window")
    parser.add_argument("--warmup", type=int, default=500, help="engine rows sent before phase 1")
    parser.add_argument("--lag-seconds", type=float, default=10.0, help="lag phase API load")
    parser.add_argument("--lag-rate", type=float, default=300.0, help="API sends/s offered")
    parser.add_argument("--lag-leads", type=int, default=1000, help="leads the API sends to")
    parser.add_argument("--lag-concurrency", type=int, default=64, help="API requests at once")
    parser.add_argument("--lag-poll-ms", type=float, default=1.0, help="commit watch interval")
    parser.add_argument("--lag-only", action="store_true", help="run the lag phase alone")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--profile", type=Path, help="write this process's cProfile of phase 1")
    parser.add_argument("--serve-fake", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages < 1 or args.naive_messages < 1 or args.rate_seconds <= 0:
        parser.error("--messages, --naive-messages and --rate-seconds must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    if args.lag_seconds < 0 or args.lag_rate <= 0 or args.lag_leads < 1:
        parser.error("--lag-seconds must be 0 or more, --lag-rate and --lag-leads positive")
    if args.lag_concurrency < 1 or args.lag_poll_ms <= 0:
        parser.error("--lag-concurrency and --lag-poll-ms must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_fake is not None:
        serve_fake(args.serve_fake)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = Results()
    try:
        with scratch_folder("leadline-bench-outbound-", args.keep, results.notes.append) as folder:
            asyncio.run(bench(args, folder, results))
    finally:
        report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
