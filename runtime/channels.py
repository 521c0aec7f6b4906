"""The running channels: one adapter instance per broker and enabled provider.

A channel that fails to start is down with its reason; it never stops the
others. `/healthz` reports what is here.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from leadline.adapters.base import Adapter, AdapterContext
from leadline.adapters.registry import Registry
from leadline.config.brokers import BrokerConfig, BrokersFile

log = logging.getLogger(__name__)


class ChannelState(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    DISABLED = "disabled"


class PollingRole(enum.StrEnum):
    OWNER = "owner"  # this process polls
    STANDBY = "standby"  # another process polls; this one takes over if it dies


@dataclass(slots=True)
class Channel:
    broker: BrokerConfig
    provider: str
    adapter: Adapter | None
    state: ChannelState
    reason: str | None = None
    polling: PollingRole | None = None  # for a channel that polls, once it is up

    @property
    def key(self) -> tuple[str, str]:
        return self.broker.id, self.provider


class Channels:
    def __init__(self, channels: Mapping[tuple[str, str], Channel]) -> None:
        self._channels = dict(channels)

    @classmethod
    def build(cls, brokers: BrokersFile, registry: Registry, public_url: str | None) -> Channels:
        channels: dict[tuple[str, str], Channel] = {}
        for broker in brokers.brokers.values():
            context = AdapterContext(broker.id, broker.name, public_url)
            for provider, config in broker.providers.items():
                adapter_type = registry.get(provider)
                assert adapter_type is not None  # the loader only accepts known providers
                adapter = adapter_type(config, context)
                channels[(broker.id, provider)] = Channel(
                    broker, provider, adapter, ChannelState.DOWN, "not started"
                )
            for provider, reason in broker.disabled.items():
                channels[(broker.id, provider)] = Channel(
                    broker, provider, None, ChannelState.DISABLED, reason
                )
        return cls(channels)

    def __iter__(self) -> Iterator[Channel]:
        return iter(self._channels.values())

    def get(self, broker_id: str, provider: str) -> Channel | None:
        return self._channels.get((broker_id, provider))

    def up(self, broker_id: str, provider: str) -> Adapter | None:
        channel = self._channels.get((broker_id, provider))
        if channel is None or channel.state != ChannelState.UP:
            return None
        return channel.adapter

    async def start(self) -> None:
        """A first start of every channel, all at once; `supervise` retries the failures."""
        for channel in self:
            if channel.adapter is None:
                log.warning("broker %s: provider %s disabled (%s)", *channel.key, channel.reason)
        await asyncio.gather(*(start_once(c) for c in self if c.adapter is not None))

    async def close(self) -> None:
        for channel in self:
            if channel.adapter is None or channel.state == ChannelState.DISABLED:
                continue
            try:
                await channel.adapter.close()
            except Exception:
                log.exception("broker %s: provider %s failed to close", *channel.key)


def mark(channel: Channel, up: bool, reason: str | None = None) -> None:
    """Record a channel's health; log only the changes."""
    state = ChannelState.UP if up else ChannelState.DOWN
    if (state, reason) == (channel.state, channel.reason):
        return
    channel.state, channel.reason = state, reason
    if up:
        log.info("broker %s: provider %s is up", *channel.key)
    else:
        log.error("broker %s: provider %s is down: %s", *channel.key, reason)


START_SECONDS = 30.0  # an API that never answers must not hold the whole process


async def start_once(channel: Channel) -> bool:
    assert channel.adapter is not None
    try:
        await asyncio.wait_for(_start_live(channel.adapter), START_SECONDS)
    except TimeoutError:
        mark(channel, False, f"start did not finish in {START_SECONDS:.0f} s")
        return False
    except Exception as exc:
        mark(channel, False, describe(exc))
        return False
    mark(channel, True)
    return True


async def _start_live(adapter: Adapter) -> None:
    """A running channel: started (only looking), then told to the provider (`go_live`)."""
    await adapter.start()
    await adapter.go_live()


def describe(exc: BaseException) -> str:
    text = str(exc) or exc.__class__.__name__
    return f"{exc.__class__.__name__}: {text}" if str(exc) else text
