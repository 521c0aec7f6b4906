"""`leadline import telegram-messages`: a legacy bot's Telegram history into a broker's leads.

Reads the legacy `telegram_messages` table (runtime/legacy_source.py) in legacy-id
order, a batch at a time, and stores each batch with its progress in one transaction
(storage/importing.py): a run that is interrupted resumes after the last batch
committed, and whatever it reads again is stored nothing twice. `--dry-run` plans the
same batches and writes nothing. On a terminal, stderr shows a progress bar; the
summary goes to stdout.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa

from leadline.config.brokers import BrokerConfig
from leadline.runtime.legacy_source import (
    TABLE,
    LegacyDatabase,
    LegacyError,
    LegacyUrl,
    Skip,
    check_row,
    legacy_id_of,
    legacy_url,
)
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.engine import make_engine, make_session_factory, safe_url
from leadline.storage.importing import HistoryImport, HistoryRow, ImportCounts
from leadline.storage.migrate import current_revision, head_revision, upgrade

PROVIDER = "telegram"
BATCH_SIZE = 2000
SKIPS_SHOWN = 20  # skipped rows reported one per line; the rest only counted
BAR_SECONDS = 0.1  # the progress bar is redrawn at most this often


@dataclass
class Outcome:
    """What one run did (or, dry, would do)."""

    counts: ImportCounts = field(default_factory=ImportCounts)
    rows_read: int = 0
    skips: list[Skip] = field(default_factory=list)  # the first SKIPS_SHOWN
    skip_kinds: Counter[str] = field(default_factory=Counter)
    last_legacy_id: int = 0
    seconds: float = 0.0
    importing: bool = False  # set up, reading batches: a failure now stops on the way

    def skipped(self, skips: Sequence[Skip]) -> None:
        room = SKIPS_SHOWN - len(self.skips)
        self.skips.extend(skips[: max(room, 0)])
        self.skip_kinds.update(skip.kind for skip in skips)


def import_telegram_messages(
    database_url: str,
    broker: BrokerConfig,
    source_url: str,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """The command: 0 when done (skipped rows included), 2 when it cannot start, 1 when
    it stopped on the way, 130 when interrupted (the next run resumes)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        where = legacy_url(source_url)
    except LegacyError as exc:
        print(f"error: {exc}", file=err)
        return 2
    outcome = Outcome()
    try:
        asyncio.run(_import(database_url, broker, where, dry_run, batch_size, outcome, out, err))
    except LegacyError as exc:
        print(f"error: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        print(
            f"\ninterrupted after legacy id {outcome.last_legacy_id}: "
            "what was committed stays; the next run resumes after it",
            file=err,
        )
        return 130
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        if not outcome.importing:  # before any batch: the Leadline database is not there
            where_to = safe_url(database_url)
            print(f"error: cannot use the Leadline database {where_to}: {reason}", file=err)
            return 2
        print(
            f"error: the import stopped after legacy id {outcome.last_legacy_id} "
            f"({exc.__class__.__name__}: {reason}); the next run resumes there",
            file=err,
        )
        return 1
    return 0


async def _import(
    database_url: str,
    broker: BrokerConfig,
    where: LegacyUrl,
    dry_run: bool,
    batch_size: int,
    outcome: Outcome,
    out: TextIO,
    err: TextIO,
) -> None:
    source = where.source
    if dry_run:
        _require_existing(database_url)
    engine = make_engine(database_url)
    try:
        legacy = await LegacyDatabase.open(where)
    except BaseException:
        await engine.dispose()
        raise
    try:
        if dry_run:
            if await current_revision(engine) != head_revision():
                raise LegacyError(
                    f"the Leadline database {safe_url(database_url)} is not migrated yet: "
                    "run `leadline db upgrade` first (a run without --dry-run does it too)"
                )
        else:
            await upgrade(engine)
        sessions = make_session_factory(engine)
        history = HistoryImport(broker.id, PROVIDER, source, dry_run=dry_run)
        async with sessions() as session:
            progress = await history.start(session)
            if not dry_run:  # as `leadline run` does at start
                await upsert_brokers(
                    session, [BrokerRecord(broker.id, broker.name, broker.timezone)]
                )
                await session.commit()
        after = progress.last_legacy_id if progress else 0
        outcome.last_legacy_id = after
        _header(out, broker, source, legacy, dry_run, after)
        bar = ProgressBar(err, await legacy.count_after(after)) if err.isatty() else None

        started = time.perf_counter()
        outcome.importing = True
        while True:
            raw = await legacy.rows_after(after, batch_size)
            if not raw:
                break
            checked = [check_row(item, legacy_id_of(item), source) for item in raw]
            rows = [row for row in checked if isinstance(row, HistoryRow)]
            skips = [row for row in checked if isinstance(row, Skip)]
            last = legacy_id_of(raw[-1])
            async with sessions() as session:  # a dry run's session ends rolled back
                counts = await history.store(session, rows, last, len(skips), legacy.lead_details)
                if not dry_run:
                    await session.commit()
            after = outcome.last_legacy_id = last
            outcome.counts.add(counts)
            outcome.rows_read += len(raw)
            outcome.skipped(skips)
            if bar is not None:
                bar.show(outcome.rows_read, time.perf_counter() - started)
        outcome.seconds = time.perf_counter() - started
        if bar is not None:
            bar.done(outcome.rows_read, outcome.seconds)
        _summary(out, outcome, dry_run)
    finally:
        await engine.dispose()
        await legacy.close()


def _require_existing(database_url: str) -> None:
    """A dry run must not create the Leadline database (SQLite would, by connecting)."""
    try:
        url = sa.make_url(database_url)
    except sa.exc.ArgumentError:
        return  # make_engine says why
    path = url.database
    on_file = url.get_backend_name() == "sqlite" and path and path != ":memory:"
    if on_file and not Path(path).exists():
        raise LegacyError(
            f"no Leadline database at {safe_url(database_url)} yet: a dry run plans against "
            "an existing one (a run without --dry-run creates it)"
        )


# --- what is printed -----------------------------------------------------------------


def _header(
    out: TextIO,
    broker: BrokerConfig,
    source: str,
    legacy: LegacyDatabase,
    dry_run: bool,
    after: int,
) -> None:
    mode = "dry run of the import" if dry_run else "import"
    print(f"{mode}: {TABLE} of {legacy.where.label} into broker {broker.id} ({PROVIDER})", file=out)
    leads = (
        "legacy leads table found (name, phone, tags)"
        if legacy.lead_columns is not None
        else "no legacy leads table: new leads are named after their Telegram username"
    )
    ai = legacy.ai_column or "none (ai_response_used false)"
    print(f"source {source}; {leads}; AI flag column: {ai}", file=out)
    if after > 0:
        print(f"resuming after legacy id {after} (earlier runs got that far)", file=out)
    out.flush()


def _summary(out: TextIO, outcome: Outcome, dry_run: bool) -> None:
    for skip in outcome.skips:
        print(f"skipped legacy id {skip.legacy_id}: {skip.detail}", file=out)
    skipped = sum(outcome.skip_kinds.values())
    if skipped > len(outcome.skips):
        print(f"... and {skipped - len(outcome.skips):,} more skipped rows", file=out)
    rate = outcome.rows_read / outcome.seconds if outcome.seconds > 0 else 0.0
    read = f"read {outcome.rows_read:,} legacy rows in {outcome.seconds:.1f} s ({rate:,.0f} rows/s)"
    print(f"dry run, nothing written: {read}" if dry_run else f"done: {read}", file=out)
    counts = outcome.counts
    verb = "to create" if dry_run else "created"
    kinds = ", ".join(f"{kind}: {n:,}" for kind, n in sorted(outcome.skip_kinds.items()))
    lines = [
        (f"leads {verb}", counts.leads_created),
        (f"lead channels {verb}", counts.channels_created),
        ("lead channels attached to existing leads", counts.channels_attached),
        ("messages new", counts.messages_new),
        ("messages already present", counts.messages_present),
    ]
    for label, value in lines:
        print(f"  {label}: {value:,}", file=out)
    print(f"  rows skipped: {skipped:,}" + (f" ({kinds})" if kinds else ""), file=out)
    if not dry_run:
        print(f"  last legacy id: {outcome.last_legacy_id}", file=out)
    out.flush()


class ProgressBar:
    """One line on a terminal, redrawn in place: done/total, rows/s, time left."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.total = max(total, 0)
        self._drawn = 0.0

    def show(self, done: int, seconds: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._drawn < BAR_SECONDS:
            return
        self._drawn = now
        width = shutil.get_terminal_size((80, 20)).columns
        rate = done / seconds if seconds > 0 else 0.0
        total = max(self.total, done)
        share = done / total if total else 1.0
        left = f"{(total - done) / rate:.0f} s left" if rate > 0 and done < total else ""
        text = f" {share:4.0%} {done:,}/{total:,} rows  {rate:,.0f} rows/s  {left}"
        room = max(10, min(40, width - len(text) - 3))
        filled = int(room * share)
        line = f"[{'#' * filled}{'.' * (room - filled)}]{text}"
        self.stream.write("\r" + line[: width - 1].ljust(width - 1))
        self.stream.flush()

    def done(self, done: int, seconds: float) -> None:
        self.show(done, seconds, force=True)
        self.stream.write("\n")
        self.stream.flush()
