"""Slow and broken request bodies: answered in bounded time, never holding a handler.

Raw sockets against the real app on loopback: a chunked body whose framing breaks after
the headers is answered 400 at once (aiohttp's C parser would leave the read waiting for
the client to hang up), a body that trickles in is answered 408 after
`LEADLINE_BODY_TIMEOUT_SECONDS`, neither logs an ERROR, and a few hundred of them at once
neither stop nor slow a normal delivery beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from pydantic import ValidationError

from leadline.config.settings import Settings
from tests.conftest import DEMO_TOML, TEST_ENV, AppFactory, AppHarness, wait_for
from tests.helpers import rows, signed_delivery

DEADLINE = 30.0  # generous: the machine may be busy
SECRET = TEST_ENV["DEMO_SIGNED_SECRET"]
API_KEY = "demo-api-key-0123456789abcdef"
API_TOML = DEMO_TOML.replace("[brokers.demo]\n", f'[brokers.demo]\napi_keys = ["{API_KEY}"]\n', 1)
WEBHOOK = b"POST /webhooks/demo/signed HTTP/1.1\r\nHost: x\r\nX-Signature: sha256=00\r\n"
API_PATCH = b"PATCH /api/v1/leads/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n" % (
    API_KEY.encode()
)
CHUNKED = b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
FIRST_CHUNK = b'5\r\n{"mes\r\n'
# What follows a valid first chunk: each breaks the chunked framing.
BROKEN_FRAMING = {
    "chunk size not hex": b"zz\r\nsages\r\n0\r\n\r\n",
    "chunk longer than its size": b"4\r\nsages\r\n0\r\n\r\n",
    "no CRLF after the chunk": b"5\r\nsagesXY0\r\n\r\n",
    "garbage instead of a chunk": b"\x00\xff\xfe GET / HTTP/1.1\r\n\r\n",
}


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


async def read_answer(reader: asyncio.StreamReader, timeout: float = DEADLINE) -> Answer:
    """The server's answer (None at a close without one), or fail after `timeout` s."""
    data = b""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while b"\r\n\r\n" not in data:
        chunk = await _read_until(reader, deadline)
        if not chunk:
            return Answer(None)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = await _read_until(reader, deadline)
        if not chunk:
            break
        body += chunk
    return Answer(status, headers, body[:length])


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = DEADLINE) -> bool:
    """Whether the server closes the connection (within `timeout` s) after its answer."""
    deadline = asyncio.get_running_loop().time() + timeout
    return await _read_until(reader, deadline) == b""


async def _read_until(reader: asyncio.StreamReader, deadline: float) -> bytes:
    left = deadline - asyncio.get_running_loop().time()
    try:
        return await asyncio.wait_for(reader.read(65536), max(left, 0.01))
    except TimeoutError:
        raise AssertionError(f"no answer within {DEADLINE} s") from None
    except ConnectionResetError:
        return b""


@contextlib.asynccontextmanager
async def raw_connection(
    app: AppHarness,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    server = app.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


def server_connections(app: AppHarness) -> int:
    return len(app.client.server.runner.server.connections)


async def trickle(writer: asyncio.StreamWriter, every: float, stop: asyncio.Event) -> None:
    """One byte of body every `every` s until `stop` (or the server hangs up)."""
    while not stop.is_set():
        try:
            await send(writer, b" ")
        except (ConnectionError, RuntimeError):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def inbound(app: AppHarness) -> int:
    """Messages stored as received (the welcome replies to them are left out)."""
    found = await rows(
        app.service.engine, "SELECT count(*) AS n FROM chat_messages WHERE direction = 'in'"
    )
    return found[0]["n"]


# --- broken framing ---------------------------------------------------------------


@pytest.mark.parametrize("breakage", sorted(BROKEN_FRAMING))
async def test_chunked_framing_broken_after_the_headers_is_answered_400_at_once_and_closed(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, breakage: str
):
    """The headers and a first chunk arrive, the framing breaks a moment later: 400 and a
    closed connection well before the body timeout (60 s here), no ERROR logged."""
    app = await make_app(body_timeout_seconds=60)
    started = asyncio.get_running_loop().time()
    async with raw_connection(app) as (reader, writer):
        await send(writer, WEBHOOK + CHUNKED + FIRST_CHUNK)
        await asyncio.sleep(0.2)  # a moment later: the handler is reading the body by now
        await send(writer, BROKEN_FRAMING[breakage])
        answer = await read_answer(reader)
        closed = await closed_by_server(reader)
    took = asyncio.get_running_loop().time() - started
    assert answer.status == 400, answer
    assert "framing" in json.loads(answer.body)["error"]
    assert answer.headers.get("connection", "").lower() == "close", answer.headers
    assert closed
    assert took < 30, f"{took:.1f} s: waited for a timeout instead of the framing error"
    assert errors_logged(caplog) == []
    assert await inbound(app) == 0


async def test_broken_framing_in_the_first_packet_is_400_and_one_info_line_not_an_error(
    app: AppHarness, caplog: pytest.LogCaptureFixture
):
    """Framing that breaks in the same packet as the headers is aiohttp's own 400: it is
    the client's fault, logged as one INFO line without a traceback."""
    caplog.set_level(logging.INFO, logger="aiohttp.server")
    async with raw_connection(app) as (reader, writer):
        await send(writer, WEBHOOK + CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n")
        answer = await read_answer(reader)
    assert answer.status == 400, answer
    assert errors_logged(caplog) == []
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert len(refused) == 1 and refused[0].levelno == logging.INFO, refused
    assert refused[0].exc_info is None
    assert "malformed request refused" in refused[0].getMessage()


# --- slow bodies ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "framing"),
    [
        (WEBHOOK, b"Content-Length: 1000\r\n\r\n"),
        (WEBHOOK, CHUNKED),
        (API_PATCH, b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"),
    ],
    ids=["webhook", "webhook-chunked", "api"],
)
async def test_body_trickling_in_is_answered_408_after_the_body_timeout_and_closed(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, route: bytes, framing: bytes
):
    """A byte every 0.1 s keeps every single read short, but the whole body is bounded:
    408 after `body_timeout_seconds` (1 s here), and the connection closes after it."""
    app = await make_app(API_TOML, body_timeout_seconds=1.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    async with raw_connection(app) as (reader, writer):
        started = loop.time()
        await send(writer, route + framing)
        chunked = framing == CHUNKED
        feeder = asyncio.create_task(
            trickle_chunks(writer, stop) if chunked else trickle(writer, 0.1, stop)
        )
        try:
            answer = await read_answer(reader)
            took = loop.time() - started
        finally:
            stop.set()
            await feeder
        # aiohttp reads what is left of the body for up to 10 s ("lingering") so the
        # client sees the answer before the close: checked on one route only.
        closed = await closed_by_server(reader) if route == WEBHOOK and not chunked else True
    assert answer.status == 408, answer
    assert "did not arrive within 1 s" in json.loads(answer.body)["error"]
    assert answer.headers.get("connection", "").lower() == "close", answer.headers
    assert closed
    assert took >= 0.95, f"answered after {took:.2f} s, before the 1 s timeout"
    assert errors_logged(caplog) == []


async def trickle_chunks(writer: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    """A valid chunked body, one single-byte chunk every 0.1 s, never its last chunk."""
    while not stop.is_set():
        try:
            await send(writer, b"1\r\n \r\n")
        except (ConnectionError, RuntimeError):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def test_a_body_arriving_in_time_is_still_taken(make_app: AppFactory):
    """The bound is on the whole body, not a guess at its speed: a delivery sent in a few
    pieces within the timeout is stored and answered 200."""
    app = await make_app(body_timeout_seconds=5.0)
    body, headers = signed_delivery(
        SECRET, {"messages": [{"id": "m-pieces", "from": "u1", "text": "in pieces"}]}
    )
    head = b"POST /webhooks/demo/signed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    head += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    async with raw_connection(app) as (reader, writer):
        await send(writer, head)
        for start in range(0, len(body), 20):
            await send(writer, body[start : start + 20])
            await asyncio.sleep(0.05)
        answer = await read_answer(reader)
    assert answer.status == 200, answer
    assert await inbound(app) == 1


# --- a few hundred at once ----------------------------------------------------------

SLOW = 200
BROKEN = 100


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_hundreds_of_slow_and_broken_bodies_neither_block_nor_exhaust_the_process(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
):
    """300 connections at once (200 bodies trickling in, 100 with framing that breaks)
    while a normal signed delivery is stored and answered 200; each bad one gets its 408
    or 400, and once they are gone the connections and file descriptors are back and the
    app still serves."""
    app = await make_app(body_timeout_seconds=8.0)
    fds_before = open_fds()
    stop = asyncio.Event()
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    feeders: list[asyncio.Task[None]] = []
    try:
        server = app.client.server
        for start in range(0, SLOW + BROKEN, 50):  # in batches: the listen backlog is 128
            batch = range(start, min(start + 50, SLOW + BROKEN))
            connections += await asyncio.gather(
                *(asyncio.open_connection(server.host, server.port) for _ in batch)
            )
        answers = [asyncio.create_task(read_answer(reader, 60)) for reader, _ in connections]
        for _, writer in connections[:SLOW]:
            writer.write(WEBHOOK + b"Content-Length: 1000\r\n\r\n")
            feeders.append(asyncio.create_task(trickle(writer, 1.0, stop)))
        breakages = sorted(BROKEN_FRAMING)
        for _, writer in connections[SLOW:]:
            writer.write(WEBHOOK + CHUNKED + FIRST_CHUNK)
        await asyncio.sleep(0.2)
        for index, (_, writer) in enumerate(connections[SLOW:]):
            writer.write(BROKEN_FRAMING[breakages[index % len(breakages)]])

        # Beside them, while the slow ones still wait for their bodies: a normal delivery.
        body, headers = signed_delivery(
            SECRET, {"messages": [{"id": "m-normal", "from": "u1", "text": "hello"}]}
        )
        response = await asyncio.wait_for(
            app.client.post("/webhooks/demo/signed", data=body, headers=headers), DEADLINE
        )
        assert response.status == 200, await response.text()
        assert await inbound(app) == 1
        slow_still_open = sum(not task.done() for task in answers[:SLOW])

        statuses = [answer.status for answer in await asyncio.gather(*answers)]
        assert statuses[:SLOW] == [408] * SLOW, statuses[:SLOW]
        assert statuses[SLOW:] == [400] * BROKEN, statuses[SLOW:]
    finally:
        stop.set()
        await asyncio.gather(*feeders, return_exceptions=True)
        for _, writer in connections:
            writer.close()
    # The delivery went through while the slow bodies still held their handlers.
    assert slow_still_open > SLOW // 2, f"only {slow_still_open} slow bodies were still open"

    async def all_gone() -> bool:
        return server_connections(app) <= 1 and open_fds() <= fds_before + 5

    await wait_for(all_gone, timeout=DEADLINE)
    body, headers = signed_delivery(
        SECRET, {"messages": [{"id": "m-after", "from": "u1", "text": "still there?"}]}
    )
    response = await app.client.post("/webhooks/demo/signed", data=body, headers=headers)
    assert response.status == 200
    assert await inbound(app) == 2
    assert errors_logged(caplog) == []


# --- the setting ------------------------------------------------------------------


def test_body_timeout_is_10_s_by_default_and_set_by_its_variable(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("LEADLINE_BODY_TIMEOUT_SECONDS", raising=False)
    assert Settings(_env_file=None).body_timeout_seconds == 10.0  # type: ignore[call-arg]
    monkeypatch.setenv("LEADLINE_BODY_TIMEOUT_SECONDS", "2.5")
    assert Settings(_env_file=None).body_timeout_seconds == 2.5  # type: ignore[call-arg]
    monkeypatch.setenv("LEADLINE_BODY_TIMEOUT_SECONDS", "0")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
