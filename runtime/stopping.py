"""Honouring a cancel that a library swallowed.

A long-running worker catches its round's errors and goes on. When a cancel lands
inside a library that turns it into an ordinary error (aiohttp may report a cancel
during a connection attempt as ClientConnectorError), the worker would go on past
its own cancellation, and shutdown would wait for it in vain. Workers call
`raise_if_cancelling` after a caught error: the task still has the cancel pending,
so the cancel is carried out.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
