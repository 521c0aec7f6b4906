"""Webhook ingestion end to end: `leadline run` on SQLite beside a bare aiohttp handler.

Starts `leadline run` (a subprocess, SQLite in a temp folder) with one Telegram
broker in webhook mode (a fake Bot API in this process answers getMe/setWebhook),
and a bare aiohttp handler in another subprocess (read the body, parse JSON,
answer 200). Both are driven from this process over loopback the same way, with
distinct Telegram message Updates:

0. warm-up: --warmup updates (connections opened, first leads created);
1. throughput: --messages updates at --concurrency requests in flight (closed loop);
2. latency: an open-loop schedule offering --rate updates/s for --seconds, each
   request sent at its scheduled time whatever the answers; latency is counted
   from that scheduled time to the 200, so time spent queued for one of the
   --concurrency connections counts too.

Each phase has its own update ids. CPU of the server, of this process (the
client) and of the rest of the machine comes from /proc per phase: the client
shares the 2 cores, and a client near 100% means the figure is its limit.

Leadline is then stopped (SIGTERM) and its database counted: every acknowledged
update stored exactly once, and "stored messages/s" = acknowledged-and-stored
updates of phase 1 / phase 1's wall time. Targets (2 cores): >= 3,000 stored
msgs/s, p99 < 25 ms at 1,000/s. Always exits 0: it is a benchmark, not a test.

    .venv/bin/python -m bench.ingest                                # from the repo root
    .venv/bin/python -m bench.ingest --messages 5000 --seconds 3 --keep
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.scratch import scratch_folder

Popen = subprocess.Popen[bytes]
REPO = Path(__file__).resolve().parent.parent
LEADLINE = str(Path(sys.executable).parent / "leadline")
BROKER = "bench"
TOKEN = "424242:BENCHtoken_ingest-0123456789"  # noqa: S105 (a fake bot's token)
SECRET = "bench-webhook-secret-0123456789"  # noqa: S105 (a loopback benchmark's secret)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
USERS = 500
FIRST_CHAT = 700_000_000
FIRST_UPDATE = 300_000_000
REQUEST_TIMEOUT = 10.0
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
PHASE_BUDGET = 300.0  # the throughput phase stops taking new requests after this
TARGET_STORED_PER_S = 3000.0
TARGET_P99_MS = 25.0
CLIENT_BOUND = 90.0  # % of a core: above, the client limits the throughput phase
OTHERS_BUSY = 25.0  # % of a core used by other processes: the figures are disturbed
TICK = os.sysconf("SC_CLK_TCK")

BROKERS_TOML = """\
[brokers.bench]
name = "Bench Realty"
timezone = "UTC"
default_provider = "telegram"

[brokers.bench.providers.telegram]
bot_token = "${{BENCH_TOKEN}}"
mode = "webhook"
webhook_secret = "${{BENCH_SECRET}}"
api_base = "{api_base}"

[brokers.bench.features]
auto_reply = false
"""


# --- the bare handler (its own process) -------------------------------------------


def serve_bare(port: int) -> None:
    """What every webhook server does at least: read the body, parse JSON, answer 200."""

    async def handle(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(status=200, text="")

    app = web.Application()
    app.router.add_post("/webhooks/{broker_id}/{provider}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the load ------------------------------------------------------------------


def update_body(index: int) -> tuple[bytes, str]:
    """A distinct Telegram message Update and its Leadline message key."""
    user = index % USERS
    chat_id = FIRST_CHAT + user
    message_id = index + 1  # unique overall, so unique per chat
    sender = {
        "id": chat_id,
        "is_bot": False,
        "first_name": f"Lead{user}",
        "username": f"lead_{user}",
        "language_code": "en",
    }
    update = {
        "update_id": FIRST_UPDATE + index,
        "message": {
            "message_id": message_id,
            "from": sender,
            "chat": {
                "id": chat_id,
                "first_name": f"Lead{user}",
                "username": f"lead_{user}",
                "type": "private",
            },
            "date": int(time.time()),
            "text": f"Hi, is the 2-bedroom flat from listing #{index} still available?",
        },
    }
    return json.dumps(update, separators=(",", ":")).encode(), f"{chat_id}:{message_id}"


@dataclass
class Batch:
    """One phase's updates: an id range of its own."""

    bodies: list[bytes]
    keys: list[str]

    @classmethod
    def build(cls, start: int, count: int) -> Batch:
        built = [update_body(i) for i in range(start, start + count)]
        return cls([b for b, _ in built], [k for _, k in built])


@dataclass
class Outcome:
    acked: list[int] = field(default_factory=list)  # indexes into the batch
    latencies: list[float] = field(default_factory=list)  # seconds, acked requests only
    failures: Counter[str] = field(default_factory=Counter)
    wall: float = 0.0
    lag: list[float] = field(default_factory=list)  # open loop: sent later than scheduled
    cpu_server: float = 0.0  # % of one core
    cpu_client: float = 0.0
    cpu_others: float = 0.0  # everything else on the machine

    @property
    def rate(self) -> float:
        return len(self.acked) / self.wall if self.wall else 0.0

    def percentile(self, q: float, values: Sequence[float] | None = None) -> float:
        ordered = sorted(self.latencies if values is None else values)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process (all its threads), from /proc; 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_seconds() -> float:
    """CPU time all processes on the machine spent busy (all cores), from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


class CpuMeter:
    """CPU of the server, of this process (the client) and of the whole machine, in % of
    one core over the phase; `others` is what the rest of the machine used meanwhile."""

    def __init__(self, server_pid: int) -> None:
        self.pids = (server_pid, os.getpid())

    def __enter__(self) -> CpuMeter:
        self.start = [cpu_seconds(p) for p in self.pids]
        self.machine_start = machine_busy_seconds()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        wall = time.perf_counter() - self.started or 1e-9
        used = [cpu_seconds(p) - s for p, s in zip(self.pids, self.start, strict=True)]
        self.server, self.client = (100 * u / wall for u in used)
        machine = 100 * (machine_busy_seconds() - self.machine_start) / wall
        self.others = max(0.0, machine - self.server - self.client)


async def post(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes
) -> str | None:
    """None when acknowledged (200), else why not."""
    try:
        async with http.post(url, data=body, headers=headers) as response:
            await response.read()
            return None if response.status == 200 else f"HTTP {response.status}"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return exc.__class__.__name__


async def closed_loop(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    batch: Batch,
    concurrency: int,
    pid: int,
) -> Outcome:
    outcome = Outcome()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PHASE_BUDGET
    pending = iter(range(len(batch.bodies)))

    async def worker() -> None:
        for index in pending:
            if loop.time() > deadline:
                outcome.failures["not sent (phase budget)"] += 1
                continue
            sent = loop.time()
            failure = await post(http, url, headers, batch.bodies[index])
            if failure is None:
                outcome.acked.append(index)
                outcome.latencies.append(loop.time() - sent)
            else:
                outcome.failures[failure] += 1

    with CpuMeter(pid) as cpu:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        outcome.wall = time.perf_counter() - started
    outcome.cpu_server, outcome.cpu_client, outcome.cpu_others = cpu.server, cpu.client, cpu.others
    return outcome


async def open_loop(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    batch: Batch,
    rate: float,
    pid: int,
) -> Outcome:
    """Send request n at start + n/rate whatever happened to the earlier ones."""
    outcome = Outcome()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, scheduled: float) -> None:
        failure = await post(http, url, headers, batch.bodies[index])
        if failure is None:
            outcome.acked.append(index)
            outcome.latencies.append(loop.time() - scheduled)
        else:
            outcome.failures[failure] += 1

    with CpuMeter(pid) as cpu:
        started = time.perf_counter()
        start = loop.time() + 0.01
        for index in range(len(batch.bodies)):
            scheduled = start + index / rate
            delay = scheduled - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            outcome.lag.append(max(0.0, loop.time() - scheduled))
            task = asyncio.create_task(one(index, scheduled))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
            for task in unfinished:
                task.cancel()
                outcome.failures["unfinished"] += 1
        outcome.wall = time.perf_counter() - started
    outcome.cpu_server, outcome.cpu_client, outcome.cpu_others = cpu.server, cpu.client, cpu.others
    return outcome


@dataclass
class Phases:
    throughput: Outcome
    latency: Outcome


async def drive(
    base: str, pid: int, warmup: Batch, first: Batch, second: Batch, args: argparse.Namespace
) -> Phases:
    url = f"{base}/webhooks/{BROKER}/telegram"
    headers = {"Content-Type": "application/json", SECRET_HEADER: SECRET}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        if warmup.bodies:
            await closed_loop(http, url, headers, warmup, args.concurrency, pid)
        throughput = await closed_loop(http, url, headers, first, args.concurrency, pid)
        await asyncio.sleep(0.5)  # let the server settle between phases
        latency = await open_loop(http, url, headers, second, args.rate, pid)
    return Phases(throughput, latency)


# --- the servers -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(command: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> Popen:
    with log_path.open("wb") as log_file:
        return subprocess.Popen(  # noqa: S603
            command, env=env, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT
        )


def stop(process: Popen | None) -> int | None:
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def wait_until_up(base: str, process: Popen, log_path: Path, leadline: bool) -> None:
    """Leadline: /healthz shows the telegram provider up. Bare: any HTTP answer."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last = "no answer"
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"exited early ({process.returncode}):\n{tail(log_path)}")
            try:
                if leadline:
                    async with http.get(base + "/healthz") as response:
                        health = await response.json()
                    state = health["brokers"][BROKER]["providers"]["telegram"]
                    if state.get("state") == "up":
                        return
                    last = json.dumps(state)
                else:
                    async with http.get(base + "/") as response:
                        await response.read()
                    return
            except (aiohttp.ClientError, TimeoutError, KeyError, ValueError) as exc:
                last = exc.__class__.__name__
            await asyncio.sleep(0.1)
    raise RuntimeError(f"not up after {STARTUP_TIMEOUT:.0f}s (last: {last}):\n{tail(log_path)}")


def leadline_env(folder: Path, database: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADLINE_")}
    env.update(
        LEADLINE_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        LEADLINE_BROKERS_FILE=str(folder / "brokers.toml"),
        LEADLINE_HOST="127.0.0.1",
        LEADLINE_PORT=str(port),
        LEADLINE_PUBLIC_URL="https://bench.example",
        LEADLINE_LOG_LEVEL="WARNING",
        BENCH_TOKEN=TOKEN,
        BENCH_SECRET=SECRET,
    )
    return env


@dataclass
class Stored:
    rows: int
    distinct: int
    keys: set[str]
    outbound: int


def count_stored(database: Path) -> Stored:
    with contextlib.closing(sqlite3.connect(database)) as db:
        where = "broker_id = ? AND provider = 'telegram' AND direction = 'in'"
        rows, distinct = db.execute(
            f"SELECT count(*), count(DISTINCT channel_message_id) FROM chat_messages WHERE {where}",  # noqa: S608
            (BROKER,),
        ).fetchone()
        keys = {
            k
            for (k,) in db.execute(
                f"SELECT channel_message_id FROM chat_messages WHERE {where}",  # noqa: S608
                (BROKER,),
            )
        }
        (outbound,) = db.execute(
            "SELECT count(*) FROM chat_messages WHERE direction = 'out'"
        ).fetchone()
    return Stored(rows, distinct, keys, outbound)


# --- the report ------------------------------------------------------------------


def fmt_failures(outcome: Outcome) -> str:
    if not outcome.failures:
        return "0"
    return ", ".join(f"{n} {why}" for why, n in outcome.failures.most_common())


def row(name: str, phases: Phases | None, sent: int) -> str:
    if phases is None:
        return f"{name:<10}{'(not measured)':>16}"
    t, lat = phases.throughput, phases.latency
    failed = sum(lat.failures.values())
    return (
        f"{name:<10}{t.rate:>10.0f}{lat.percentile(0.50):>9.1f}{lat.percentile(0.99):>9.1f}"
        f"{max(lat.latencies, default=float('nan')) * 1000:>9.1f}{f'{failed}/{sent}':>12}"
    )


def cpu_row(name: str, phases: Phases | None) -> str:
    if phases is None:
        return f"{name:<10}{'(not measured)':>16}"
    t = phases.throughput
    per_message = t.cpu_server * t.wall / 100 / len(t.acked) * 1000 if t.acked else float("nan")
    cells = "".join(
        f"{o.cpu_server:>8.0f}%{o.cpu_client:>8.0f}%{o.cpu_others:>8.0f}%"
        for o in (phases.throughput, phases.latency)
    )
    return f"{name:<10}{cells}{per_message:>10.2f}"


def report(
    args: argparse.Namespace,
    leadline: Phases | None,
    bare: Phases | None,
    stored: Stored | None,
    batches: tuple[Batch, Batch, Batch],
    notes: list[str],
) -> None:
    warmup, first, second = batches
    print()
    print(
        f"webhook ingestion, Telegram message updates over loopback; os.cpu_count() = "
        f"{os.cpu_count()}"
    )
    print(
        f"throughput: {len(first.bodies)} updates at concurrency {args.concurrency} "
        f"(after {len(warmup.bodies)} warm-up); latency: {args.rate:.0f}/s offered "
        f"(open loop) for {args.seconds:g} s, from the scheduled send to the 200"
    )
    print()
    print(f"{'server':<10}{'msgs/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'failed':>12}")
    print(f"{'':<10}{'(acked)':>10}{f'(at {args.rate:.0f}/s offered)':>39}")
    print(row("leadline", leadline, len(second.bodies)))
    print(row("bare", bare, len(second.bodies)))
    print()
    print(f"{'cpu, % of one core':<19}{'throughput phase':>17}{'latency phase':>27}")
    print(f"{'':<10}" + f"{'server':>9}{'client':>9}{'others':>9}" * 2 + f"{'srv ms/msg':>11}")
    print(cpu_row("leadline", leadline))
    print(cpu_row("bare", bare))
    print()
    for name, phases in (("leadline", leadline), ("bare", bare)):
        if phases is None:
            continue
        t, lat = phases.throughput, phases.latency
        lag = lat.percentile(0.99, lat.lag)
        print(
            f"{name}: throughput phase {len(t.acked)}/{len(first.bodies)} acked in "
            f"{t.wall:.2f} s (failed: {fmt_failures(t)}; closed-loop p50/p99 "
            f"{t.percentile(0.5):.1f}/{t.percentile(0.99):.1f} ms); latency phase "
            f"failed: {fmt_failures(lat)}; client send lag p99 {lag:.1f} ms"
        )
        if t.cpu_client >= CLIENT_BOUND:
            print(
                f"  note: the client used {t.cpu_client:.0f}% of a core: {name}'s msgs/s is "
                "the load generator's limit here, not the server's"
            )
        if max(t.cpu_others, lat.cpu_others) >= OTHERS_BUSY:
            print(
                f"  note: other processes used up to {max(t.cpu_others, lat.cpu_others):.0f}% "
                "of a core meanwhile: figures are disturbed; run again on a quiet machine"
            )
        if t.rate < args.rate:
            print(
                f"  note: {name} cannot keep up with {args.rate:.0f}/s (its throughput is "
                f"{t.rate:.0f}/s): the latency figures measure a growing backlog"
            )
    if leadline and bare and bare.throughput.rate:
        ratio = leadline.throughput.rate / bare.throughput.rate
        print(f"ratio leadline/bare throughput: {ratio:.2f}x")

    stored_rate = float("nan")
    exactly_once = False
    if leadline and stored:
        acked_keys = [first.keys[i] for i in leadline.throughput.acked]
        acked_keys += [second.keys[i] for i in leadline.latency.acked]
        sent_keys = set(warmup.keys) | set(first.keys) | set(second.keys)
        missing = [k for k in acked_keys if k not in stored.keys]
        unexpected = len(stored.keys - sent_keys)
        first_stored = sum(1 for i in leadline.throughput.acked if first.keys[i] in stored.keys)
        stored_rate = first_stored / leadline.throughput.wall if leadline.throughput.wall else 0
        exactly_once = stored.rows == stored.distinct and not missing and not unexpected
        print(
            f"stored: {first_stored} of phase 1's {len(leadline.throughput.acked)} acknowledged "
            f"updates in the database -> {stored_rate:.0f} stored msgs/s"
        )
        print(
            f"exactly once: {stored.rows} inbound rows, {stored.distinct} distinct keys, "
            f"{len(missing)} acknowledged missing, {unexpected} unexpected, "
            f"{stored.outbound} outbound -> {'OK' if exactly_once else 'FAILED'}"
        )
    elif leadline:
        print("stored: database not counted")
    for note in notes:
        print(note)

    p99 = leadline.latency.percentile(0.99) if leadline else float("nan")
    lat_failed = sum(leadline.latency.failures.values()) if leadline else 0
    verdict = {
        f"stored >= {TARGET_STORED_PER_S:.0f} msgs/s": (
            stored_rate >= TARGET_STORED_PER_S,
            f"{stored_rate:.0f}",
        ),
        f"p99 < {TARGET_P99_MS:.0f} ms at {args.rate:.0f}/s": (
            p99 < TARGET_P99_MS and lat_failed == 0,
            f"{p99:.1f} ms, {lat_failed} failed",
        ),
        "every acknowledged message stored exactly once": (exactly_once, ""),
    }
    print()
    for target, (ok, value) in verdict.items():
        print(f"{'PASS' if ok else 'FAIL'}  {target}{f' ({value})' if value else ''}")
    print(f"overall: {'PASS' if all(ok for ok, _ in verdict.values()) else 'FAIL'}")


# --- the run ---------------------------------------------------------------------


async def bench(args: argparse.Namespace, folder: Path) -> None:
    from tests.fakes.serving import running_fake
    from tests.fakes.telegram_api import FakeTelegram

    latency_count = max(1, round(args.rate * args.seconds))
    warmup = Batch.build(0, args.warmup)
    first = Batch.build(args.warmup, args.messages)
    second = Batch.build(args.warmup + args.messages, latency_count)
    batches = (warmup, first, second)
    database = folder / "leadline.db"
    notes: list[str] = []
    leadline: Phases | None = None
    bare: Phases | None = None
    stored: Stored | None = None
    fake = FakeTelegram()
    fake.add_bot(TOKEN, "bench_bot")
    process: Popen | None = None
    try:
        async with running_fake(fake) as api_base:
            (folder / "brokers.toml").write_text(BROKERS_TOML.format(api_base=api_base))
            port = free_port()
            log_path = folder / "leadline.log"
            env = leadline_env(folder, database, port)
            command = [LEADLINE, "run"]
            if args.profile:  # cProfile writes its stats when SIGTERM ends the run cleanly
                profiler = [sys.executable, "-m", "cProfile", "-o", str(args.profile)]
                command = [*profiler, "-m", "leadline.runtime.cli", "run"]
            process = spawn(command, env, folder, log_path)
            base = f"http://127.0.0.1:{port}"
            print(f"leadline: starting on {base} (SQLite {database})", flush=True)
            try:
                await wait_until_up(base, process, log_path, leadline=True)
                print("leadline: telegram up; driving it", flush=True)
                leadline = await drive(base, process.pid, warmup, first, second, args)
            except RuntimeError as exc:
                notes.append(f"leadline: {exc}")
            finally:
                # Off the loop: the fake Bot API stays responsive while Leadline shuts down.
                code = await asyncio.to_thread(stop, process)
                process = None
            if code not in (0, None):
                notes.append(f"leadline exited with {code}:\n{tail(log_path)}")
            problems = [
                line
                for line in log_path.read_text(errors="replace").splitlines()
                if "WARNING" in line or "ERROR" in line
            ]
            if problems:
                notes.append(f"leadline log: {len(problems)} warning/error lines, last:")
                notes.extend(f"  {line}" for line in problems[-5:])
        if leadline is not None and database.exists():
            stored = count_stored(database)

        port = free_port()
        log_path = folder / "bare.log"
        command = [sys.executable, "-m", "bench.ingest", "--bare-server", str(port)]
        process = spawn(command, dict(os.environ), REPO, log_path)
        base = f"http://127.0.0.1:{port}"
        print(f"bare: starting on {base}; driving it", flush=True)
        try:
            await wait_until_up(base, process, log_path, leadline=False)
            bare = await drive(base, process.pid, warmup, first, second, args)
        except RuntimeError as exc:
            notes.append(f"bare: {exc}")
    finally:
        stop(process)
    report(args, leadline, bare, stored, batches, notes)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=20_000, help="throughput phase size")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency phase length")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency phase msgs/s")
    parser.add_argument("--warmup", type=int, default=200, help="updates sent before phase 1")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--profile", type=Path, help="write Leadline's cProfile stats here")
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.messages < 1 or args.concurrency < 1 or args.seconds <= 0 or args.rate <= 0:
        parser.error("--messages, --concurrency, --seconds and --rate must be positive")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_server is not None:
        serve_bare(args.bare_server)
        return 0
    with scratch_folder("leadline-bench-", args.keep) as folder:
        asyncio.run(bench(args, folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
