"""What every fake provider API shares: serving it on loopback, and a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import NoReturn, Protocol

from aiohttp import web


class Fake(Protocol):
    def app(self) -> web.Application: ...

    def close(self) -> None: ...


@contextlib.asynccontextmanager
async def running_fake(fake: Fake) -> AsyncIterator[str]:
    """Serve `fake` on 127.0.0.1 (a free port) and yield its base URL."""
    # No access log: request paths and queries hold tokens and hashes, never logged.
    runner = web.AppRunner(fake.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        fake.close()
        await runner.cleanup()


def drop_connection(request: web.Request) -> NoReturn:
    """No answer at all: the client sees the connection close mid-request. aiohttp
    treats a cancelled handler as a vanished peer, so it writes nothing and logs nothing."""
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError
