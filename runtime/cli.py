"""`leadline`: run the service, check brokers.toml, migrate the database, list adapters."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa
from aiohttp import web
from dotenv import dotenv_values
from pydantic import ValidationError

from leadline.adapters import conformance
from leadline.adapters.registry import Registry, discover
from leadline.config.brokers import BrokersFile
from leadline.config.loader import load_brokers_file
from leadline.config.settings import Settings
from leadline.runtime.gc_tuning import tune_gc
from leadline.runtime.hours import hours_report
from leadline.runtime.http import build_app
from leadline.runtime.legacy_import import BATCH_SIZE, import_telegram_messages
from leadline.runtime.logs import Redactor, configure_logging
from leadline.runtime.online import Finding, check_online, subscribe
from leadline.runtime.responder import ResponderError, load_responder
from leadline.runtime.shares import sender_group
from leadline.storage.crm_events import EventCounts, event_counts
from leadline.storage.delivery_report import DeliveryCounts, delivery_counts
from leadline.storage.engine import DatabaseUrlError, make_engine, make_session_factory, safe_url
from leadline.storage.migrate import current_revision, upgrade
from leadline.storage.ownership import ownership_for
from leadline.storage.types import utcnow

log = logging.getLogger("leadline")


def environment() -> Mapping[str, str]:
    """What `${NAME}` in brokers.toml resolves against: the environment, then `.env`."""
    from_file = {k: v for k, v in dotenv_values(".env").items() if v is not None}
    return {**from_file, **os.environ}


def load(settings: Settings) -> tuple[Registry, BrokersFile]:
    registry = discover(settings.plugins_dir)
    brokers = load_brokers_file(settings.brokers_file, registry.config_models(), environment())
    return registry, brokers


def cmd_run(settings: Settings) -> int:
    redactor = Redactor()
    configure_logging(settings.log_level, settings.log_format, redactor)
    registry, brokers = load(settings)
    redactor.update(brokers.secrets)
    for issue in brokers.issues:
        log.error("brokers.toml: %s", issue)
    if not brokers.brokers:
        log.error("no valid broker in %s; nothing to run", settings.brokers_file)
        return 2
    app = build_app(settings, brokers, registry, redactor)
    app.on_startup.append(_tune_gc)  # after the service and its channels have started
    # run_app handles SIGINT/SIGTERM: it stops accepting, lets requests finish,
    # then runs the cleanup that stops the workers and closes sessions and the database.
    try:
        web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc)
        return 2
    return 0


async def _tune_gc(_app: web.Application) -> None:
    tune_gc()


def cmd_check(settings: Settings, online: bool = False) -> int:
    registry, brokers = load(settings)
    for problem in registry.problems:
        print(f"warning: {problem}")
    for issue in brokers.issues:
        print(f"error: {issue}")
    for broker in brokers.brokers.values():
        running = ", ".join(sorted(broker.providers)) or "none"
        print(f"broker {broker.id} ({broker.name}): providers {running}")
        for provider, reason in sorted(broker.disabled.items()):
            print(f"  {provider} disabled: {reason}")
    failed = bool(brokers.issues)
    for broker in brokers.brokers.values():
        if broker.responder is not None:
            try:
                load_responder(broker.responder)
            except ResponderError as exc:
                print(f"error: broker {broker.id!r}, key 'responder': {exc}")
                failed = True
    if online:
        redactor = _quiet_logging(settings, brokers)
        findings = asyncio.run(check_online(brokers, registry, _public_url(settings)))
        failed |= _report(findings, redactor)
    if brokers.issues:
        print(f"{settings.brokers_file}: {len(brokers.issues)} error(s)")
    elif failed:
        print(f"{settings.brokers_file}: valid, but not every broker can run as configured")
    else:
        print(f"{settings.brokers_file}: OK")
    return 1 if failed else 0


def cmd_webhooks_subscribe(settings: Settings, broker_id: str, provider: str) -> int:
    registry, brokers = load(settings)
    redactor = _quiet_logging(settings, brokers)
    finding = asyncio.run(subscribe(brokers, registry, _public_url(settings), broker_id, provider))
    return 1 if _report([finding], redactor) else 0


def _quiet_logging(settings: Settings, brokers: BrokersFile) -> Redactor:
    """The channels' own log lines (on stderr) during an online command: warnings and
    worse, secrets masked as in `run`."""
    redactor = Redactor(brokers.secrets)
    configure_logging("WARNING", settings.log_format, redactor)
    return redactor


def _report(findings: list[Finding], redactor: Redactor) -> bool:
    """Print what the providers said (secrets masked); True if any channel has a problem."""
    for finding in findings:
        verdict = redactor.redact(finding.problem or "webhooks delivered here")
        print(f"online: broker {finding.broker_id}, {finding.provider}: {verdict}")
    return any(f.problem for f in findings)


def _public_url(settings: Settings) -> str | None:
    return str(settings.public_url).rstrip("/") if settings.public_url else None


def cmd_hours(settings: Settings, broker_id: str) -> int:
    """This week's opening hours and the next opening, in the broker's time zone."""
    _, brokers = load(settings)
    broker = brokers.brokers.get(broker_id)
    if broker is None:
        print(f"error: no valid broker {broker_id!r} in {settings.brokers_file}", file=sys.stderr)
        return 2
    for line in hours_report(broker, utcnow()):
        print(line)
    return 0


def cmd_db_upgrade(settings: Settings) -> int:
    async def migrate() -> str | None:
        engine = make_engine(settings.database_url)
        try:
            await upgrade(engine)
            return await current_revision(engine)
        finally:
            await engine.dispose()

    revision = asyncio.run(migrate())
    print(f"{safe_url(settings.database_url)}: at revision {revision}")
    return 0


def cmd_status(settings: Settings, as_json: bool = False) -> int:
    """The outbox per broker and provider, and the CRM events per broker, read from the
    database the service uses."""
    _, brokers = load(settings)

    keys = {(b.id, p) for b in brokers.brokers.values() for p in [*b.providers, *b.disabled]}

    async def read() -> tuple[
        dict[tuple[str, str], DeliveryCounts], dict[str, EventCounts], dict[str, int]
    ]:
        engine = make_engine(settings.database_url)
        ownership = ownership_for(engine)
        try:
            async with make_session_factory(engine)() as session:
                counts = await delivery_counts(session, utcnow())
                events = await event_counts(session)
            return counts, events, await ownership.members([sender_group(k) for k in keys])
        finally:
            await ownership.close()
            await engine.dispose()

    try:
        counts, events, senders = asyncio.run(read())
    except sa.exc.DBAPIError as exc:
        print(
            f"error: cannot read the outbox ({exc.__class__.__name__}); "
            "is the database migrated? (leadline db upgrade)",
            file=sys.stderr,
        )
        return 2
    table = {key: counts.get(key, DeliveryCounts()) for key in sorted(keys | set(counts))}
    running = {key: senders.get(sender_group(key), 0) for key in table}
    crm = {b.id: events.get(b.id, EventCounts()) for b in brokers.brokers.values() if b.events}
    if as_json:
        found = [_status_json(b, p, c, crm.get(b), running[(b, p)]) for (b, p), c in table.items()]
        print(json.dumps(found))
        return 0
    print(STATUS_HEADER)
    for (broker_id, provider), found in table.items():
        pause = "-"
        if found.paused_until is not None:
            pause = f"until {found.paused_until:%Y-%m-%d %H:%M:%S} UTC ({found.pause_reason})"
        print(
            f"{broker_id:<16} {provider:<10} {found.queued:>7} {found.retrying:>9} "
            f"{found.in_flight:>9} {found.sent_last_hour:>8} {found.failed_last_hour:>9} "
            f"{running[(broker_id, provider)]:>9}  {pause}"
        )
    if crm:
        print(f"\n{'BROKER':<16} {'CRM EVENTS':>10} {'FAILING':>8}  OLDEST FAILURE")
        for broker_id, found in sorted(crm.items()):
            error = found.last_error or "-"
            print(f"{broker_id:<16} {found.pending:>10} {found.failing:>8}  {error}")
    return 0


def _status_json(
    broker: str, provider: str, counts: DeliveryCounts, crm: EventCounts | None, processes: int
) -> dict[str, object]:
    found: dict[str, object] = {"broker": broker, "provider": provider, **counts.as_json()}
    found["processes"] = processes  # running `leadline run` processes sending on it
    if crm is not None:
        found["crm_events"] = {
            "pending": crm.pending,
            "failing": crm.failing,
            "last_error": crm.last_error,
        }
    return found


STATUS_HEADER = (
    f"{'BROKER':<16} {'PROVIDER':<10} {'QUEUED':>7} {'RETRYING':>9} "
    f"{'IN FLIGHT':>9} {'SENT 1H':>8} {'FAILED 1H':>9} {'PROCESSES':>9}  PAUSE"
)


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    """`import telegram-messages`: a legacy bot's Telegram history into a broker's leads."""
    _, brokers = load(settings)
    broker = brokers.brokers.get(args.broker)
    if broker is None:
        print(f"error: no valid broker {args.broker!r} in {settings.brokers_file}", file=sys.stderr)
        return 2
    return import_telegram_messages(
        settings.database_url,
        broker,
        args.source,
        dry_run=args.dry_run,
        batch_size=args.batch_size,
    )


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


def cmd_adapters(settings: Settings) -> int:
    registry = discover(settings.plugins_dir)
    for entry in sorted(registry.entries.values(), key=lambda e: e.name):
        print(f"{entry.name:<12} {entry.source:<12} {entry.origin}")
    for problem in registry.problems:
        print(f"warning: {problem}")
    return 0


def cmd_adapters_check(settings: Settings, name: str) -> int:
    """Run the conformance suite on one adapter, with the kit its module defines."""
    registry = discover(settings.plugins_dir)
    entry = registry.entries.get(name)
    if entry is None:
        print(f"error: no adapter {name!r} found (`leadline adapters` lists them)", file=sys.stderr)
        return 2
    # A module entry point, a plugin file or a class entry point: the kit sits beside the
    # class, in the module that defines it.
    module = sys.modules.get(entry.adapter.__module__)
    make_kit = getattr(module, "conformance_kit", None)
    if not callable(make_kit):
        print(
            f"error: adapter {name!r} has no conformance kit: its module "
            f"{entry.adapter.__module__} ({entry.origin}) defines no conformance_kit() "
            "(docs/adapters.md)",
            file=sys.stderr,
        )
        return 2
    try:
        kit = make_kit()
    except Exception as exc:
        print(f"error: conformance_kit() of {name!r} failed: {exc!r}", file=sys.stderr)
        return 2
    failures = dict(asyncio.run(conformance.run(kit)))
    for check in conformance.CHECKS:
        reason = failures.get(check.__name__)
        print(f"{check.__name__:<30} {'ok' if reason is None else f'FAILED: {reason}'}")
    return 1 if failures else 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="leadline", description=__doc__)
    top.add_argument("--brokers", type=Path, help="brokers file (default: LEADLINE_BROKERS_FILE)")
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start every valid broker's channels")
    check = commands.add_parser("check", help="validate brokers.toml; non-zero exit on any error")
    check.add_argument(
        "--online",
        action="store_true",
        help=(
            "also start each channel, only looking, and ask its provider whether webhooks "
            "reach us; changes nothing at the provider"
        ),
    )
    webhooks = commands.add_parser("webhooks", help="webhook delivery, asked of the provider")
    subscribe_cmd = webhooks.add_subparsers(dest="webhooks_command", required=True).add_parser(
        "subscribe",
        help="have the provider deliver a channel's webhooks here again (Meta's "
        "subscribed_apps, Telegram's setWebhook)",
    )
    subscribe_cmd.add_argument("broker", help="the broker id")
    subscribe_cmd.add_argument("provider", help="the provider, e.g. messenger")
    db = commands.add_parser("db", help="database maintenance")
    db.add_subparsers(dest="db_command", required=True).add_parser(
        "upgrade", help="apply the migrations"
    )
    adapters = commands.add_parser("adapters", help="list the adapters found and where from")
    adapters_check = adapters.add_subparsers(dest="adapters_command").add_parser(
        "check", help="run the conformance suite on an adapter with its conformance_kit()"
    )
    adapters_check.add_argument("adapter", help="the adapter's name, e.g. postbox")
    hours = commands.add_parser("hours", help="a broker's opening hours this week")
    hours.add_argument("broker", help="the broker id")
    status = commands.add_parser(
        "status", help="outbound messages per broker and provider: queued, in flight, sent, failed"
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    legacy = commands.add_parser("import", help="import history from a legacy system")
    telegram = legacy.add_subparsers(dest="import_command", required=True).add_parser(
        "telegram-messages",
        help="a legacy bot's telegram_messages (and leads) table into a broker's leads",
    )
    telegram.add_argument(
        "--from", dest="source", required=True, metavar="URL",
        help="the legacy database: sqlite:///path/legacy.db or postgresql://user@host/db",
    )  # fmt: skip
    telegram.add_argument("--broker", required=True, help="the broker id (in brokers.toml)")
    telegram.add_argument(
        "--dry-run", action="store_true", help="report what would change; write nothing"
    )
    telegram.add_argument(
        "--batch-size", type=_positive, default=BATCH_SIZE, metavar="N",
        help=f"legacy rows per committed batch (default {BATCH_SIZE})",
    )  # fmt: skip
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        for item in exc.errors(include_input=False, include_url=False):
            name = "LEADLINE_" + "_".join(str(p) for p in item["loc"]).upper()
            print(f"error: {name}: {item['msg']}", file=sys.stderr)
        return 2
    if args.brokers is not None:
        settings = settings.model_copy(update={"brokers_file": args.brokers})
    commands = {
        "run": cmd_run,
        "check": lambda s: cmd_check(s, online=args.online),
        "webhooks": lambda s: cmd_webhooks_subscribe(s, args.broker, args.provider),
        "db": cmd_db_upgrade,
        "adapters": lambda s: (
            cmd_adapters_check(s, args.adapter) if args.adapters_command else cmd_adapters(s)
        ),
        "hours": lambda s: cmd_hours(s, args.broker),
        "status": lambda s: cmd_status(s, as_json=args.json),
        "import": lambda s: cmd_import(s, args),
    }
    try:
        return commands[args.command](settings)
    except DatabaseUrlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
