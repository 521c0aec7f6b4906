"""`leadline status` and `/healthz`: queued, in flight, sent and failed in the last hour, pauses."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.delivery_report import DeliveryCounts, delivery_counts
from leadline.storage.engine import make_session_factory
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.migrate import upgrade
from leadline.storage.outbox import QueuedMessage, enqueue, pause_channel
from leadline.storage.types import utcnow
from tests.conftest import DEMO_TOML, AppFactory
from tests.test_process import child_env, run_cli

# Each row: (attempts, send_after, lease_until, status, sent_at, updated_at), times from now.
NOW_ROWS = {
    "queued": (0, None, None, "pending", None, 0),
    "scheduled": (0, +3600, None, "pending", None, 0),
    "retrying": (2, +30, None, "pending", None, 0),
    "lease ran out": (1, None, -5, "pending", None, -100),
    "in flight": (1, None, +60, "pending", None, 0),
    "sent": (1, None, None, "sent", -60, -60),
    "read later": (1, None, None, "read", -600, -10),
    "sent long ago": (1, None, None, "sent", -7200, -7200),
    "failed": (3, None, None, "failed", None, -30),
    "failed long ago": (3, None, None, "failed", None, -9000),
}


async def fill_outbox(engine: AsyncEngine) -> None:
    """One row in each state for demo/signed, and a pause on acme/signed."""
    sessions = make_session_factory(engine)
    now = utcnow()

    def at(seconds: int | None):
        return None if seconds is None else now + timedelta(seconds=seconds)

    async with sessions() as session, session.begin():
        await upsert_brokers(
            session, [BrokerRecord("demo", "Demo", "UTC"), BrokerRecord("acme", "Acme", "UTC")]
        )
        lead = await ensure_lead(session, ChannelIdentity("demo", "signed", "u1"))
        for text, (attempts, after, lease, status, sent, updated) in NOW_ROWS.items():
            message_id = await enqueue(session, QueuedMessage(lead, "demo", "signed", "u1", text))
            await session.exec(
                sa.text(
                    "UPDATE chat_messages SET attempts = :a, send_after = :after, "
                    "lease_until = :lease, status = :status, sent_at = :sent, "
                    "updated_at = :updated WHERE id = :id"
                ).bindparams(
                    a=attempts,
                    after=at(after),
                    lease=at(lease),
                    status=status,
                    sent=at(sent),
                    updated=at(updated),
                    id=message_id,
                )
            )
        await pause_channel(
            session, "acme", "signed", now + timedelta(seconds=90), "429: slow down"
        )


EXPECTED_DEMO = DeliveryCounts(
    queued=4, retrying=2, in_flight=1, sent_last_hour=2, failed_last_hour=1
)


async def test_counts_tell_queued_retrying_in_flight_and_the_last_hours_outcomes(
    engine: AsyncEngine,
):
    await upgrade(engine)
    await fill_outbox(engine)
    async with make_session_factory(engine)() as session:
        counts = await delivery_counts(session, utcnow())
    assert counts[("demo", "signed")] == EXPECTED_DEMO
    acme = counts[("acme", "signed")]
    assert (acme.queued, acme.pause_reason) == (0, "429: slow down")
    assert acme.paused_until is not None and acme.paused_until > utcnow()


async def test_healthz_shows_the_delivery_counters_of_every_channel(make_app: AppFactory):
    app = await make_app()
    # The running dispatcher would send the due rows while we count them.
    app.service.dispatcher.stop()
    await next(t for t in app.service._tasks if t.get_name() == "dispatcher")
    await fill_outbox(app.service.engine)
    body = await (await app.client.get("/healthz")).json()
    demo = body["brokers"]["demo"]["providers"]
    assert demo["signed"]["delivery"] == EXPECTED_DEMO.as_json()
    assert demo["webchat"]["delivery"] == DeliveryCounts().as_json()
    assert body["brokers"]["acme"]["providers"]["signed"]["delivery"]["pause_reason"] == (
        "429: slow down"
    )


@pytest.fixture
async def filled(tmp_path: Path, database_url: str, engine: AsyncEngine) -> dict[str, str]:
    (tmp_path / "brokers.toml").write_text(DEMO_TOML)
    await upgrade(engine)
    await fill_outbox(engine)
    return child_env(tmp_path, database_url)


async def test_status_command_prints_every_configured_channel_with_its_counters(
    filled: dict[str, str], tmp_path: Path
):
    result = run_cli("status", env=filled, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = {tuple(line.split()[:2]): line.split() for line in result.stdout.splitlines()[1:]}
    assert set(lines) == {("demo", "webchat"), ("demo", "signed"), ("acme", "signed")}
    assert lines[("demo", "signed")][2:7] == ["4", "2", "1", "2", "1"]
    assert lines[("demo", "webchat")][2:9] == ["0", "0", "0", "0", "0", "0", "-"]  # no process
    assert "(429: slow down)" in " ".join(lines[("acme", "signed")])


async def test_status_command_speaks_json_for_scripts(filled: dict[str, str], tmp_path: Path):
    result = run_cli("status", "--json", env=filled, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    by_key = {(c["broker"], c["provider"]): c for c in json.loads(result.stdout)}
    assert by_key[("demo", "signed")]["in_flight"] == 1
    assert by_key[("demo", "signed")]["processes"] == 0
    assert "paused_until" in by_key[("acme", "signed")]


def test_status_on_a_database_never_migrated_says_so(tmp_path: Path):
    (tmp_path / "brokers.toml").write_text(DEMO_TOML)
    env = child_env(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    result = run_cli("status", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "leadline db upgrade" in result.stderr
