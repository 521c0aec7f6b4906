"""`leadline import telegram-messages` on a 100,000-row legacy SQLite database.

Builds a legacy database like an old bot's (a `telegram_messages` table and a `leads`
table: 5,000 Telegram users, 20 messages each, every tenth without a Telegram message
id, a few rows that must be skipped), then runs the real command (`leadline.runtime.
cli.main`, in this process) into a fresh SQLite database and times it:

1. the first run: every row read, leads, channels and messages created;
2. the same again after forgetting the progress (`legacy_imports`): every row read
   again and found already stored (the idempotent path);
3. a plain rerun: resumes after the last legacy id, reads nothing.

Target: the first run under a minute. Always exits 0: a benchmark, not a test.

    .venv/bin/python -m bench.import_telegram                 # from the repository root
    .venv/bin/python -m bench.import_telegram --rows 20000 --batch-size 1000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.scratch import scratch_folder

USERS = 5000
FIRST_USER = 500_000_000
BAD_EVERY = 997  # every this many rows one cannot be imported
TARGET_SECONDS = 60.0
BROKERS_TOML = """\
[brokers.bench]
name = "Bench Realty"
[brokers.bench.providers.webchat]
"""
DIRECTIONS_IN = ("in", "incoming", "Inbound", "user")
DIRECTIONS_OUT = ("out", "outgoing", "OUTBOUND", "bot", "assistant")


def build_legacy(path: Path, rows: int) -> None:
    """The legacy bot's database, written with the stdlib sqlite3 module."""
    rng = random.Random(9)
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE leads (id INTEGER PRIMARY KEY, name TEXT, phone TEXT, tags TEXT);
        CREATE TABLE telegram_messages (
            id INTEGER PRIMARY KEY, lead_id INTEGER, telegram_user_id INTEGER,
            telegram_username TEXT, telegram_message_id INTEGER, message_text TEXT,
            direction TEXT, ai_response_used INTEGER, created_at TEXT
        );
        """
    )
    conn.executemany(
        "INSERT INTO leads VALUES (?, ?, ?, ?)",
        [
            (n + 1, f"Lead {n}", f"+54 11 5{n:07d}", '["buyer", "zona norte"]' if n % 2 else "rent")
            for n in range(USERS)
        ],
    )
    start = datetime(2023, 1, 1, tzinfo=UTC)
    message_ids = [0] * USERS
    batch = []
    for i in range(rows):
        user = rng.randrange(USERS)
        message_ids[user] += 1
        out = i % 2 == 1
        when = start + timedelta(seconds=30 * i)
        created = when.isoformat() if i % 3 else when.strftime("%Y-%m-%d %H:%M:%S")
        direction = rng.choice(DIRECTIONS_OUT if out else DIRECTIONS_IN)
        telegram_id = FIRST_USER + user
        if i % BAD_EVERY == 0:
            direction = "sideways"
        batch.append(
            (
                i + 1,
                user + 1,
                telegram_id,
                f"user_{user}",
                None if i % 10 == 0 else message_ids[user],
                f"message {i}: is the flat on Calle {i % 300} still available?",
                direction,
                int(out and rng.random() < 0.3),
                created,
            )
        )
    conn.executemany("INSERT INTO telegram_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", batch)
    conn.commit()
    conn.close()


def run_import(folder: Path, legacy: Path, batch_size: int) -> tuple[float, str, int]:
    """One run of the real command: (wall seconds, its stdout, its exit code)."""
    from leadline.runtime import cli

    out, err = io.StringIO(), io.StringIO()
    argv = ["--brokers", str(folder / "brokers.toml"), "import", "telegram-messages"]
    argv += ["--from", f"sqlite:///{legacy}", "--broker", "bench"]
    argv += ["--batch-size", str(batch_size)]
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return time.perf_counter() - started, out.getvalue() + err.getvalue(), code


def figure(output: str, label: str) -> str:
    for line in output.splitlines():
        if line.strip().startswith(label.strip() + ":"):
            return line.split(":", 1)[1].strip()
    return "?"


def forget_progress(database: Path) -> None:
    conn = sqlite3.connect(database)
    conn.execute("DELETE FROM legacy_imports")
    conn.commit()
    conn.close()


def bench(folder: Path, rows: int, batch_size: int) -> None:
    legacy = folder / "legacy.db"
    database = folder / "leadline.db"
    (folder / "brokers.toml").write_text(BROKERS_TOML)
    os.environ["LEADLINE_DATABASE_URL"] = f"sqlite+aiosqlite:///{database}"
    started = time.perf_counter()
    build_legacy(legacy, rows)
    print(
        f"legacy database: {rows:,} rows, {USERS:,} users ({time.perf_counter() - started:.1f} s)"
    )
    print(f"batches of {batch_size:,} rows; a fresh SQLite database")
    print(f"{'run':<34}{'seconds':>9}{'rows/s':>10}  messages new / present, skipped")
    runs = (
        ("1. first import", None),
        ("2. again, progress forgotten", forget_progress),
        ("3. again, resuming", None),
    )
    first = None
    for name, before in runs:
        if before is not None:
            before(database)
        seconds, output, code = run_import(folder, legacy, batch_size)
        if code != 0:
            print(f"{name}: exit {code}\n{output}")
            return
        read = int(figure(output, "done").split()[1].replace(",", "")) if "done:" in output else 0
        rate = f"{read / seconds:,.0f}" if read and seconds else "-"
        counts = (
            f"{figure(output, '  messages new')} / {figure(output, '  messages already present')}"
            f", {figure(output, '  rows skipped').split(' ')[0]}"
        )
        print(f"{name:<34}{seconds:>9.2f}{rate:>10}  {counts}")
        first = first if first is not None else seconds
    verdict = "met" if first is not None and first < TARGET_SECONDS else "MISSED"
    print(f"target: {rows:,} rows under {TARGET_SECONDS:.0f} s on SQLite: {verdict}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.import_telegram",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=100_000, help="legacy messages")
    parser.add_argument("--batch-size", type=int, default=2000, help="rows per batch")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batch_size < 1:
        parser.error("--rows and --batch-size must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with scratch_folder("leadline-import-bench-", args.keep) as folder:
        bench(folder, args.rows, args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
