"""Keeping each channel running: retry a failed start with backoff, run its poller.

One broker's bad or revoked credentials, or an unreachable API, affect only
that channel: it shows as down in `/healthz` and is retried ever more slowly
(a revoked token is not hammered), while every other channel runs on. A poller
runs only in the process that owns it (runtime/owned.py); the channel is up in
every process, so each can send.
"""

from __future__ import annotations

import asyncio
import logging
import random

from leadline.adapters.base import Inbox
from leadline.runtime.channels import Channel, PollingRole, describe, mark, start_once
from leadline.runtime.owned import OwnedRunner
from leadline.storage.ownership import SoleOwner

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 5.0
LAST_RETRY_SECONDS = 900.0


def next_delay(delay: float, jitter: random.Random) -> float:
    return min(LAST_RETRY_SECONDS, delay * 2) * jitter.uniform(0.8, 1.0)


def poller_name(channel: Channel) -> str:
    return f"poller {channel.broker.id}/{channel.provider}"


async def supervise(
    channel: Channel,
    inbox: Inbox,
    first_delay: float = FIRST_RETRY_SECONDS,
    owner: OwnedRunner | None = None,
) -> None:
    """Until cancelled: (re)start the channel when it is down, and run its poller."""
    owner = owner or OwnedRunner(SoleOwner())
    adapter = channel.adapter
    assert adapter is not None
    jitter = random.Random()  # noqa: S311 (spreading retries, not a secret)
    delay = first_delay

    def standby(waiting: bool) -> None:
        channel.polling = PollingRole.STANDBY if waiting else PollingRole.OWNER

    while True:
        if channel.state != "up" and not await start_once(channel):
            log.info("broker %s: retrying %s in %.0f s", *channel.key, delay)
            await asyncio.sleep(delay)
            delay = next_delay(delay, jitter)
            continue
        delay = first_delay
        if not adapter.polls:
            return
        try:
            # poll() returns only when polling cannot go on
            if not await owner.run(poller_name(channel), lambda: adapter.poll(inbox), standby):
                continue  # another process owns the poller now: stand by, still up
            mark(channel, False, "polling stopped")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("broker %s: %s polling failed", *channel.key)
            mark(channel, False, describe(exc))
        channel.polling = None
        await _close_quietly(channel)
        await asyncio.sleep(delay)


async def _close_quietly(channel: Channel) -> None:
    assert channel.adapter is not None
    try:
        await channel.adapter.close()
    except Exception:
        log.exception("broker %s: %s failed to close", *channel.key)
