"""A channel's rate limit as the provider counts it: arrival times at the fake Bot API.

The real dispatcher sends through the real Telegram adapter (Telegram's default 30
messages/s per bot) to the fake on loopback. Waves of new chats are queued just after
the previous wave left the queue, after idles of every length up to one and a half
windows: the gate must pace each wave evenly from its first send, never let a burst
through because the queue refilled soon after it emptied. No 1 s window of the fake's
arrival times may hold more than 30.

The property is an upper bound on arrivals per window: a slow or loaded machine only
sends later, which makes it easier to keep, so this test holds beside a CPU hog.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from leadline.adapters.base import OutboundMessage, SendResult
from tests import test_delivery_telegram as delivery
from tests.conftest import wait_for
from tests.test_delivery_telegram import LineFactory, accepted, warm_up

# The engine on the fake Bot API exactly as the delivery tests start it.
start_line = delivery.start_line
tuned_gc = delivery.tuned_gc

TELEGRAM_PER_SECOND = 30
WAVE = 40  # more than one window's worth: a burst would show at the wave's start
# Extra idles after a wave left the queue, in windows (1 s): "at once" to past a window.
IDLES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.2, 1.5)


def most_in_any_window(times: list[float], span: float = 1.0) -> int:
    """The most arrivals within any half-open span [t, t + span)."""
    times = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] >= span:
            start += 1
        most = max(most, end - start + 1)
    return most


def record_passes(adapter: Any) -> dict[str, float]:
    """When the engine hands each message (by text) to the adapter: right after its pass."""
    passed: dict[str, float] = {}
    send: Callable[[OutboundMessage], Any] = adapter.send

    async def recorded(message: OutboundMessage) -> SendResult:
        passed[message.text or ""] = time.monotonic()
        return await send(message)

    adapter.send = recorded
    return passed


async def test_no_second_at_the_api_holds_more_than_30_when_waves_of_new_chats_follow_idles(
    start_line: LineFactory,
):
    line = await start_line()
    await warm_up(line)
    passed = record_passes(line.adapter("demo", "telegram"))
    ids: list[int] = []
    for wave, idle in enumerate(IDLES):
        chats = [(400000000 + wave * 1000 + i, f"w{wave}-{i}") for i in range(WAVE)]
        ids += await line.queue(chats)

        async def wave_sent(expected: int = len(ids)) -> bool:
            return len(accepted(line.demo)) >= expected

        # Polled often: the next wave is queued right after this one left the queue.
        await wait_for(wave_sent, timeout=30, interval=0.005)
        await asyncio.sleep(idle)

    found = await line.settled(ids)

    assert {r["status"] for r in found.values()} == {"sent"}
    calls = accepted(line.demo)
    arrivals = [call.at for call in calls]
    assert len(arrivals) == len(ids)
    # How long each send took from its pass to its arrival, for the failure message.
    delays = [call.at - passed[call.params["text"]] for call in calls]
    spread = f"pass to arrival {min(delays) * 1e3:.1f}-{max(delays) * 1e3:.1f} ms"
    spread += f" (median {statistics.median(delays) * 1e3:.1f})"
    busiest = most_in_any_window(arrivals)
    assert busiest <= TELEGRAM_PER_SECOND, f"{busiest} arrivals within one second; {spread}"
