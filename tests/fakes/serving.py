"""What every fake provider API shares: serving it on loopback, and a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import NoReturn, Protocol

from aiohttp import web

from leadline.adapters.conformance import serving


class Fake(Protocol):
    def app(self) -> web.Application: ...

    def close(self) -> None: ...


@contextlib.asynccontextmanager
async def running_fake(fake: Fake) -> AsyncIterator[str]:
    """Serve `fake` on 127.0.0.1 (a free port) and yield its base URL; the conformance
    suite's own `serving` does the serving, so both serve a fake the same way."""
    async with serving(fake) as base:
        try:
            yield base
        finally:
            fake.close()


def drop_connection(request: web.Request) -> NoReturn:
    """No answer at all: the client sees the connection close mid-request. aiohttp
    treats a cancelled handler as a vanished peer, so it writes nothing and logs nothing."""
    if request.transport is not None:
        request.transport.close()
    raise asyncio.CancelledError
