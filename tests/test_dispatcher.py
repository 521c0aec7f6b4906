"""The dispatcher on a real database with the signed test provider: retries, failures, order."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.adapters.base import (
    AdapterContext,
    Capabilities,
    OutboundMessage,
    SendResult,
    TemplateRef,
)
from leadline.config.brokers import BrokerConfig, Features
from leadline.runtime.channels import Channel, Channels, ChannelState
from leadline.runtime.dispatcher import Dispatcher
from leadline.runtime.retry import RetryPolicy
from leadline.storage.brokers import BrokerRecord, upsert_brokers
from leadline.storage.leads import ChannelIdentity, ensure_lead
from leadline.storage.outbox import QueuedMessage, enqueue
from tests.conftest import DEMO_TOML, TEST_ENV, load_test_brokers, make_settings
from tests.helpers import as_utc, rows


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    sessions: async_sessionmaker[AsyncSession]
    broker: BrokerConfig
    adapter: Any  # the signed test adapter, as loaded from the plugins folder
    channels: Channels
    clock: Clock
    dispatcher: Dispatcher

    async def queue(self, user: str, text: str) -> int:
        async with self.sessions() as session, session.begin():
            identity = ChannelIdentity("demo", "signed", user)
            lead_id = await ensure_lead(session, identity)
            return await enqueue(session, QueuedMessage(lead_id, "demo", "signed", user, text))

    async def row(self, message_id: int) -> dict:
        engine = self.sessions.kw["bind"]
        (found,) = await rows(engine, "SELECT * FROM chat_messages WHERE id = :id", id=message_id)
        return found

    async def run_cycles(self, count: int = 1) -> None:
        """Run dispatcher cycles and wait for the sends they started."""
        for _ in range(count):
            await self.dispatcher.cycle()
            await self.dispatcher.drain_in_flight()


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession], tmp_path: Path) -> World:
    brokers_file = tmp_path / "brokers.toml"
    brokers_file.write_text(DEMO_TOML)
    registry, loaded = load_test_brokers(make_settings("sqlite://", brokers_file), TEST_ENV)
    broker = loaded.brokers["demo"]
    async with sessions() as session, session.begin():
        await upsert_brokers(session, [BrokerRecord("demo", broker.name, broker.timezone)])
    # The class the plugins folder loaded, as the runtime would use it.
    adapter_type = registry.get("signed")
    assert adapter_type is not None
    adapter = adapter_type(broker.providers["signed"], AdapterContext("demo", broker.name))
    channels = Channels({("demo", "signed"): Channel(broker, "signed", adapter, ChannelState.UP)})
    clock = Clock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    policy = RetryPolicy(max_attempts=3, base_seconds=2, jitter=random.Random(7))
    dispatcher = Dispatcher(sessions, channels, policy=policy, clock=clock)
    return World(sessions, broker, adapter, channels, clock, dispatcher)


async def test_due_message_is_sent_and_keeps_the_provider_id(world: World):
    message_id = await world.queue("u1", "hello")
    await world.run_cycles()
    row = await world.row(message_id)
    assert (row["status"], row["channel_message_id"], row["attempts"]) == (
        "sent",
        f"sig-{message_id}",
        1,
    )
    assert [m.text for m in world.adapter.sent] == ["hello"]


async def test_retryable_failure_waits_with_backoff_then_sends(world: World):
    world.adapter.script = ["retry"]
    message_id = await world.queue("u1", "hello")
    await world.run_cycles()
    row = await world.row(message_id)
    assert (row["status"], row["attempts"], row["error"]) == ("pending", 1, "503: provider busy")
    wait = (as_utc(row["send_after"]) - world.clock.now).total_seconds()
    assert 1.0 <= wait <= 2.0  # first backoff: between half and all of 2 s
    await world.run_cycles()
    assert world.adapter.sent == []  # not due yet
    world.clock.advance(2.1)
    await world.run_cycles()
    row = await world.row(message_id)
    assert (row["status"], row["attempts"]) == ("sent", 2)


async def test_retry_after_from_the_provider_is_honoured_exactly(world: World):
    world.adapter.script = ["retry-after:7"]
    message_id = await world.queue("u1", "hello")
    await world.run_cycles()
    row = await world.row(message_id)
    assert as_utc(row["send_after"]) == world.clock.now + timedelta(seconds=7)
    assert row["error"] == "429: slow down"
    world.clock.advance(6.9)
    await world.run_cycles()
    assert world.adapter.sent == []
    world.clock.advance(0.1)
    await world.run_cycles()
    assert (await world.row(message_id))["status"] == "sent"


async def test_permanent_failure_ends_failed_at_once_with_the_provider_error(world: World):
    world.adapter.script = ["permanent"]
    message_id = await world.queue("u1", "hello")
    await world.run_cycles()
    row = await world.row(message_id)
    assert (row["status"], row["attempts"], row["error"]) == (
        "failed",
        1,
        "403: user blocked the bot",
    )
    world.clock.advance(3600)
    await world.run_cycles()
    assert world.adapter.sent == []


async def test_retries_give_up_after_the_configured_attempts(world: World):
    world.adapter.script = ["retry", "retry", "retry"]
    message_id = await world.queue("u1", "hello")
    for _ in range(3):
        await world.run_cycles()
        world.clock.advance(600)
    row = await world.row(message_id)
    assert row["status"] == "failed"
    assert row["attempts"] == 3
    assert row["error"].startswith("gave up after 3 attempts: 503")


async def test_a_retrying_message_holds_back_later_ones_to_the_same_chat_only(world: World):
    world.adapter.script = ["retry"]
    first = await world.queue("u1", "first")
    second = await world.queue("u1", "second")
    other = await world.queue("u2", "to someone else")
    await world.run_cycles(2)
    assert [m.text for m in world.adapter.sent] == ["to someone else"]
    assert (await world.row(second))["status"] == "pending"
    world.clock.advance(5)
    await world.run_cycles(2)
    assert [m.text for m in world.adapter.sent] == ["to someone else", "first", "second"]
    assert (await world.row(first))["status"] == (await world.row(other))["status"] == "sent"


async def test_two_dispatchers_on_one_database_send_each_row_once_and_in_order(world: World):
    """As two processes would: each takes rows with a lease, so none goes twice."""
    other = Dispatcher(world.sessions, world.channels, clock=world.clock)
    for i in range(12):
        await world.queue(f"u{i % 3}", f"m{i}")
    for _ in range(6):
        await asyncio.gather(world.dispatcher.cycle(), other.cycle())
        await asyncio.gather(world.dispatcher.drain_in_flight(), other.drain_in_flight())
    texts = [m.text for m in world.adapter.sent]
    assert sorted(texts) == sorted(f"m{i}" for i in range(12))  # each exactly once
    for user in range(3):
        mine = [m.text for m in world.adapter.sent if m.channel_user_id == f"u{user}"]
        assert mine == [f"m{i}" for i in range(user, 12, 3)]


async def test_never_two_sends_in_flight_to_one_chat(world: World):
    in_flight: dict[str, int] = {}
    most: dict[str, int] = {}

    async def slow_send(message: OutboundMessage) -> SendResult:
        user = message.channel_user_id
        in_flight[user] = in_flight.get(user, 0) + 1
        most[user] = max(most.get(user, 0), in_flight[user])
        await asyncio.sleep(0.01)
        in_flight[user] -= 1
        return SendResult(f"x-{message.ref}")

    world.adapter.send = slow_send  # type: ignore[method-assign]
    for i in range(6):
        await world.queue(f"u{i % 2}", f"m{i}")
    # Several cycles racing the sends, as wake-ups would cause.
    await asyncio.gather(*(world.dispatcher.cycle() for _ in range(5)))
    await world.dispatcher.drain_in_flight()
    await world.run_cycles(3)  # one message per chat per cycle
    assert most == {"u0": 1, "u1": 1}
    sent = await rows(world.sessions.kw["bind"], "SELECT status FROM chat_messages")
    assert {r["status"] for r in sent} == {"sent"}


async def test_a_failing_typing_indicator_never_holds_up_the_message(world: World):
    channel = world.channels.get("demo", "signed")
    assert channel is not None
    channel.broker = dataclasses.replace(channel.broker, features=Features(typing_indicator=True))
    world.adapter.capabilities = Capabilities(webhooks=True, typing_indicator=True)
    calls: list[str] = []

    async def broken_typing(message: OutboundMessage) -> None:
        calls.append(message.channel_user_id)
        raise ConnectionError("typing endpoint down")

    world.adapter.send_typing = broken_typing
    message_id = await world.queue("u1", "hello")
    await world.run_cycles()
    assert calls == ["u1"]
    assert (await world.row(message_id))["status"] == "sent"


async def test_message_for_a_disabled_provider_fails_with_the_reason(world: World):
    channel = world.channels.get("demo", "signed")
    assert channel is not None
    channel.state, channel.reason = ChannelState.DISABLED, "enabled = false"
    message_id = await world.queue("u1", "hello")
    await world.run_cycles()
    row = await world.row(message_id)
    assert row["status"] == "failed"
    assert "enabled = false" in row["error"]


async def test_message_for_a_down_channel_waits_for_it(world: World):
    channel = world.channels.get("demo", "signed")
    assert channel is not None
    channel.state, channel.reason = ChannelState.DOWN, "token revoked"
    message_id = await world.queue("u1", "hello")
    await world.run_cycles()
    row = await world.row(message_id)
    assert (row["status"], row["attempts"]) == ("pending", 0)
    channel.state = ChannelState.UP
    await world.run_cycles()
    assert (await world.row(message_id))["status"] == "sent"


async def test_scheduled_message_waits_for_its_send_after(world: World):
    async with world.sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "signed", "u1"))
        message_id = await enqueue(
            session,
            QueuedMessage(
                lead_id,
                "demo",
                "signed",
                "u1",
                "good morning",
                send_after=world.clock.now + timedelta(hours=9),
            ),
        )
    await world.run_cycles()
    assert world.adapter.sent == []
    assert await world.dispatcher.cycle() == 5.0  # idle poll: the opening is hours away
    world.clock.advance(9 * 3600)
    await world.run_cycles()
    assert (await world.row(message_id))["status"] == "sent"


async def test_a_template_for_a_provider_without_templates_fails_saying_so(world: World):
    async with world.sessions() as session, session.begin():
        lead_id = await ensure_lead(session, ChannelIdentity("demo", "signed", "u1"))
        template = TemplateRef("follow_up", "es").to_json()
        queued = QueuedMessage(
            lead_id, "demo", "signed", "u1", None, provider_metadata={"template": template}
        )
        message_id = await enqueue(session, queued)
    await world.run_cycles()
    row = await world.row(message_id)
    assert (row["status"], row["error"]) == ("failed", "signed cannot send message templates")
    assert world.adapter.sent == []


async def test_what_the_adapter_reports_of_a_send_is_kept_in_the_rows_metadata(world: World):
    original = world.adapter.send

    async def send_in_parts(message: OutboundMessage) -> SendResult:
        await original(message)
        return SendResult("part-2", metadata={"parts": ["part-1", "part-2"]})

    world.adapter.send = send_in_parts
    message_id = await world.queue("u1", "a long text")
    await world.run_cycles()
    row = await world.row(message_id)
    assert row["channel_message_id"] == "part-2"
    metadata = row["provider_metadata"]
    metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    assert metadata["parts"] == ["part-1", "part-2"]
