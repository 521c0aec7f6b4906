"""Keeping each channel running: retry a failed start with backoff, run its poller.

One broker's bad or revoked credentials, or an unreachable API, affect only
that channel: it shows as down in `/healthz` and is retried ever more slowly
(a revoked token is not hammered), while every other channel runs on.
"""

from __future__ import annotations

import asyncio
import logging
import random

from leadline.adapters.base import Inbox
from leadline.runtime.channels import Channel, describe, mark, start_once

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 5.0
LAST_RETRY_SECONDS = 900.0


def next_delay(delay: float, jitter: random.Random) -> float:
    return min(LAST_RETRY_SECONDS, delay * 2) * jitter.uniform(0.8, 1.0)


async def supervise(
    channel: Channel, inbox: Inbox, first_delay: float = FIRST_RETRY_SECONDS
) -> None:
    """Until cancelled: (re)start the channel when it is down, and run its poller."""
    adapter = channel.adapter
    assert adapter is not None
    jitter = random.Random()  # noqa: S311 (spreading retries, not a secret)
    delay = first_delay
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
            await adapter.poll(inbox)  # returns only when polling cannot go on
            mark(channel, False, "polling stopped")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("broker %s: %s polling failed", *channel.key)
            mark(channel, False, describe(exc))
        await _close_quietly(channel)
        await asyncio.sleep(delay)


async def _close_quietly(channel: Channel) -> None:
    assert channel.adapter is not None
    try:
        await channel.adapter.close()
    except Exception:
        log.exception("broker %s: %s failed to close", *channel.key)
