"""Small helpers the tests share: signing deliveries and reading the tables."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.fakes.plugins.signed import sign
from tests.fakes.telegram_api import FakeTelegram

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def signed_delivery(secret: str, payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(payload).encode()
    return body, {"X-Signature": sign(secret, body), "Content-Type": "application/json"}


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(sa.text(sql), params)
        return [dict(r._mapping) for r in result]


async def count(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as conn:
        return (await conn.execute(sa.text(f"SELECT count(*) FROM {table}"))).scalar_one()  # noqa: S608


def as_utc(value: datetime | str) -> datetime:
    """A timestamp read with raw SQL: SQLite gives naive text, PostgreSQL aware datetimes."""
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# --- watching a fake provider's HTTP API -------------------------------------------------


@dataclass
class ApiCall:
    """One HTTP call to a fake API: when it arrived and how it was answered."""

    method: str  # lower case
    chat: str | None
    started: float  # time.monotonic()
    finished: float | None = None
    status: int | None = None  # None: no answer (the connection was dropped)


Arrival = Callable[[ApiCall], Awaitable[None]]


class CallProbe:
    """An aiohttp middleware for a fake provider: logs the calls of some methods with
    their times, and measures how many calls to one chat were under way at once.

    `on_arrival` runs when a call arrives, before the fake handles it (to look at the
    database as the sender left it right before this attempt).
    """

    def __init__(self, methods: Collection[str] = ("sendmessage",)) -> None:
        self.methods = {m.lower() for m in methods}
        self.calls: list[ApiCall] = []
        self.most_at_once: Counter[str | None] = Counter()
        self.on_arrival: Arrival | None = None
        self._open: Counter[str | None] = Counter()

    def of(self, chat: object) -> list[ApiCall]:
        return [call for call in self.calls if call.chat == str(chat)]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        method = request.match_info.get("method", "").lower()
        if method not in self.methods:
            return await handler(request)
        call = ApiCall(method, await _chat_of(request), time.monotonic())
        self.calls.append(call)
        self._open[call.chat] += 1
        self.most_at_once[call.chat] = max(self.most_at_once[call.chat], self._open[call.chat])
        try:
            if self.on_arrival is not None:
                await self.on_arrival(call)
            response = await handler(request)
            call.status = response.status
            return response
        finally:
            call.finished = time.monotonic()
            self._open[call.chat] -= 1


async def _chat_of(request: web.Request) -> str | None:
    # aiohttp keeps a read body (and a parsed form), so the fake's handler reads it again.
    value: Any = request.query.get("chat_id")
    if request.method == "POST" and request.body_exists:
        if request.content_type == "application/json":
            body = await request.json()
            value = body.get("chat_id", value) if isinstance(body, dict) else value
        else:
            value = (await request.post()).get("chat_id", value)
    return None if value is None else str(value)


class ProbedTelegram(FakeTelegram):
    """The fake Bot API with a `CallProbe` in front of its methods."""

    def __init__(self, probe: CallProbe | None = None) -> None:
        super().__init__()
        self.probe = probe or CallProbe()

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(self.probe.middleware)
        return app


# The shared provider fixtures beside the repository, else where this machine keeps them.
FIXTURE_DIRS = (
    Path(__file__).resolve().parents[2] / "shared" / "providers" / "fixtures",
    Path("/work/shared/providers/fixtures"),
)


def fixtures_dir() -> Path:
    """The folder of PROVIDERS.md's payloads (../shared/providers/fixtures)."""
    for folder in FIXTURE_DIRS:
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"provider fixtures not found in {', '.join(map(str, FIXTURE_DIRS))}")


def provider_fixture(name: str) -> Path:
    """One file of the provider fixtures."""
    path = fixtures_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f"provider fixture {path} not found")
    return path


def fixture_json(name: str) -> Any:
    """One provider fixture, decoded (a fresh copy each call: tests may change it)."""
    return json.loads(provider_fixture(name).read_text())


def shape(value: Any) -> Any:
    """The structure of a JSON value: keys and value types, not the values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__
