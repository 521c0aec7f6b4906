"""A channel that fails to start is retried with growing delays until it comes up."""

from __future__ import annotations

import asyncio
import itertools
import random

from leadline.adapters.base import Adapter, AdapterContext
from leadline.config.brokers import BrokerConfig
from leadline.config.providers import ProviderConfig
from leadline.runtime.channels import Channel, ChannelState
from leadline.runtime.stopping import raise_if_cancelling
from leadline.runtime.supervisor import LAST_RETRY_SECONDS, next_delay, supervise


class Flaky(Adapter):
    name = "flaky"

    def __init__(self, failures: int) -> None:
        super().__init__(ProviderConfig(), AdapterContext("b", "B"))
        self.failures, self.starts = failures, 0

    async def start(self) -> None:
        self.starts += 1
        if self.starts <= self.failures:
            raise ConnectionError("api unreachable")


class NoInbox:
    async def receive(self, events):
        raise AssertionError("nothing polls here")

    async def conversation(self, channel_user_id, limit=200):
        return []

    def set_health(self, up: bool, reason: str | None = None) -> None:
        pass

    def senders(self) -> int:
        return 1


def channel_for(adapter: Adapter) -> Channel:
    broker = BrokerConfig("b", "B", "UTC", None, {})
    return Channel(broker, "flaky", adapter, ChannelState.DOWN, "not started")


async def test_failed_start_is_retried_until_the_channel_is_up():
    adapter = Flaky(failures=2)
    channel = channel_for(adapter)
    await asyncio.wait_for(supervise(channel, NoInbox(), first_delay=0.01), timeout=5)
    assert adapter.starts == 3
    assert (channel.state, channel.reason) == (ChannelState.UP, None)


async def test_down_channel_shows_the_reason_while_it_waits():
    channel = channel_for(Flaky(failures=100))
    task = asyncio.create_task(supervise(channel, NoInbox(), first_delay=0.05))
    await asyncio.sleep(0.02)
    assert channel.state == ChannelState.DOWN
    assert channel.reason == "ConnectionError: api unreachable"
    task.cancel()


def test_retry_delays_grow_to_a_ceiling_and_never_hammer():
    jitter = random.Random(1)
    delays = [5.0]
    for _ in range(12):
        delays.append(next_delay(delays[-1], jitter))
    assert all(b >= a * 1.6 for a, b in itertools.pairwise(delays[:7]))
    assert max(delays) <= LAST_RETRY_SECONDS
    assert delays[-1] >= LAST_RETRY_SECONDS * 0.8


async def test_a_worker_stops_even_when_a_library_turned_its_cancel_into_an_error():
    async def library_call() -> None:  # as aiohttp may, cancelled amid a connection attempt
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ConnectionError("cannot connect") from None

    errors: list[Exception] = []

    async def worker() -> None:
        while True:
            try:
                await library_call()
            except Exception as exc:  # a worker logs its round's errors and goes on
                errors.append(exc)
            raise_if_cancelling()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.01)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=1)
    assert task in done and task.cancelled()
    assert [type(e) for e in errors] == [ConnectionError]
