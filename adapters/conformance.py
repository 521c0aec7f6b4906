"""The conformance suite every adapter must pass, built-in or dropped in.

An adapter is checked through what it promises in `adapters/base.py`, with no
database and no runtime: it is fed its own sample deliveries and talks to a fake
of its provider's API that it declares. A `Kit` says all that:

    from leadline.adapters.conformance import Kit, Sample, run

    def conformance_kit() -> Kit:          # in your adapter's module, or your tests
        return Kit(adapter=MyAdapter, config={...}, secrets=[...], sign=my_sign,
                   samples=[Sample("text", body, messages=1)], fake_api=MyFakeApi,
                   recipient="user-1")

    failures = await run(conformance_kit())   # [] when every check passes

or from the command line: `leadline adapters check NAME`, for an adapter whose
module defines `conformance_kit()`. The checks (`CHECKS`):

- signatures fail closed: a missing, a wrong, one for another body (where the signature
  covers the body) and (where signatures carry a time) a replayed signature are refused
  with a 4xx reason; a right one is accepted;
- a duplicate delivery stores one row: parsing the same body twice gives the same
  idempotency keys, each a storable id;
- batches lose nothing: each sample gives exactly the messages and statuses it holds;
- a secret of the config set to nothing fails validation;
- garbage never raises out of `parse` anything but `MalformedPayload`;
- status mapping is monotonic: status samples in the provider's own order never map
  to a status that goes back;
- a send works, and a throttled send (the provider's 429 or its equivalent) is
  reported retryable, with the provider's delay when it gives one;
- secrets never appear in a log line (at DEBUG) or in an error's text;
- a start only looks: starting the channel and asking whether webhooks reach us (what
  `leadline check --online` does) sends the fake API no request that changes anything.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from pydantic import ValidationError

from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    OutboundEcho,
    OutboundMessage,
    ProviderNotice,
    RequestRejected,
    RetryableSendError,
    StatusUpdate,
    StatusWatermark,
)
from leadline.adapters.payload import ident

FUZZ_CASES = 300
PUBLIC_URL = "https://leadline.example"  # never fetched: a fake API at most records it


class FakeApi(Protocol):
    """A stand-in for the provider's HTTP API, served on loopback by the suite."""

    def app(self) -> web.Application: ...

    def throttle_next(self) -> None:
        """Make the next send answer the provider's rate-limit response."""

    def reject_next(self) -> None:
        """Make the next send answer the provider's bad-credentials response."""


@dataclass(frozen=True, slots=True)
class Sample:
    """A delivery the provider could send, and what it holds."""

    name: str
    body: bytes
    messages: int = 0  # InboundMessage events it must give
    statuses: int = 0  # StatusUpdate events it must give


@dataclass(frozen=True, slots=True)
class Kit:
    adapter: type[Adapter]
    # The provider's table as brokers.toml would hold it (secrets resolved), without
    # `api_base`: the suite points that at the fake API.
    config: Mapping[str, Any]
    secrets: Sequence[str]  # every value that must never be logged or shown
    samples: Sequence[Sample]
    recipient: str  # a chat user the fake API accepts sends to
    # Headers that authenticate `body` as sent at Unix time `at`; None: no webhooks.
    sign: Callable[[bytes, float], Mapping[str, str]] | None = None
    fake_api: Callable[[], FakeApi] | None = None
    # Seconds after which a signed request must be refused as a replay (None: the
    # provider's signatures carry no time).
    replay_window: float | None = None
    # False where the provider authenticates with a shared secret that covers no body
    # (Telegram's secret token): a body changed in transit cannot be told apart there.
    signs_body: bool = True
    # The provider's delay in its throttling answer (None: it gives none).
    throttle_delay: float | None = None
    status_samples: Sequence[Sample] = ()  # status deliveries in the provider's own order
    # What a send needs besides the recipient: the last inbound time, for messaging windows.
    outbound: Mapping[str, Any] = field(default_factory=dict)
    # Whether a request to the fake API (HTTP method, path) only reads; None: GET and HEAD
    # do. For APIs that read by POST (Telegram's Bot API).
    reads: Callable[[str, str], bool] | None = None


Check = Callable[[Kit], Awaitable[None]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConformanceError(AssertionError):
    """A check failed: the text says what the adapter did wrong."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise ConformanceError(message)


# --- webhooks ------------------------------------------------------------------------------


async def signatures_fail_closed(kit: Kit) -> None:
    if kit.sign is None:
        return
    async with started(kit) as adapter:
        for sample in kit.samples:
            now = time.time()
            adapter.verify(kit.sign(sample.body, now), sample.body)  # the right one passes
            refused(adapter, {}, sample.body, "a request without a signature")
            if kit.signs_body:
                tampered = sample.body + b" "
                signed = kit.sign(sample.body, now)
                refused(adapter, signed, tampered, "a body changed after signing")
            wrong = {k: _garble(v) for k, v in kit.sign(sample.body, now).items()}
            refused(adapter, wrong, sample.body, "a wrong signature")
            if kit.replay_window is not None:
                old = kit.sign(sample.body, now - kit.replay_window - 60)
                refused(adapter, old, sample.body, "a replayed (stale) signature")
                ahead = kit.sign(sample.body, now + kit.replay_window + 60)
                refused(adapter, ahead, sample.body, "a signature dated in the future")


async def secrets_must_not_be_blank(kit: Kit) -> None:
    """`${VAR}` set to nothing must be a configuration error: a blank signing secret
    would let anyone sign, a blank token only fails later and less clearly."""
    model = kit.adapter.config_model
    for key, value in kit.config.items():
        if not isinstance(value, str) or value not in kit.secrets:
            continue
        try:
            model.model_validate({**kit.config, key: ""})
        except ValidationError:
            continue
        raise ConformanceError(f"the config accepts an empty {key!r}")


def refused(adapter: Adapter, headers: Mapping[str, str], body: bytes, what: str) -> None:
    try:
        adapter.verify(_case_insensitive(headers), body)
    except RequestRejected as exc:
        expect(400 <= exc.status < 500, f"{what} was refused with {exc.status}, not a 4xx")
        expect(bool(exc.reason), f"{what} was refused without a reason")
        return
    raise ConformanceError(f"{what} was accepted: signatures must fail closed")


async def duplicates_give_the_same_keys(kit: Kit) -> None:
    if kit.sign is None:
        return
    async with started(kit) as adapter:
        for sample in kit.samples:
            first = [key(e) for e in parse(adapter, kit, sample.body)]
            second = [key(e) for e in parse(adapter, kit, sample.body)]
            expect(first == second, f"{sample.name}: a redelivery gives other ids {second}")
            for found in first:
                expect(
                    ident(found[1]) == found[1], f"{sample.name}: id {found[1]!r} cannot be stored"
                )


async def batches_lose_nothing(kit: Kit) -> None:
    if kit.sign is None:
        return
    async with started(kit) as adapter:
        for sample in [*kit.samples, *kit.status_samples]:
            events = parse(adapter, kit, sample.body)
            messages = sum(isinstance(e, InboundMessage) for e in events)
            statuses = sum(isinstance(e, StatusUpdate) for e in events)
            expect(
                (messages, statuses) == (sample.messages, sample.statuses),
                f"{sample.name}: {messages} messages and {statuses} statuses, "
                f"not {sample.messages} and {sample.statuses}",
            )


async def garbage_never_raises(kit: Kit) -> None:
    if kit.sign is None:
        return
    rng = random.Random(8)  # noqa: S311 (reproducible fuzzing, not a secret)
    async with started(kit) as adapter:
        for case, body in zip(range(FUZZ_CASES), _garbage(kit, rng), strict=False):
            try:
                events = adapter.parse(_case_insensitive(kit.sign(body, time.time())), body)
            except MalformedPayload:
                continue
            except Exception as exc:
                raise ConformanceError(
                    f"parse raised {type(exc).__name__} on garbage (case {case}): "
                    "only MalformedPayload may come out"
                ) from exc
            for event in events:
                expect(isinstance(event, _EVENTS), f"parse gave a {type(event).__name__}")


async def statuses_are_monotonic(kit: Kit) -> None:
    if kit.sign is None or not kit.status_samples:
        return
    async with started(kit) as adapter:
        ranks = []
        for sample in kit.status_samples:
            for event in parse(adapter, kit, sample.body):
                if isinstance(event, StatusUpdate | StatusWatermark):
                    ranks.append((sample.name, event.status))
        for (before, earlier), (name, later) in itertools.pairwise(ranks):
            expect(
                later.rank >= earlier.rank,
                f"{name} maps to {later.value}, after {before} mapped to {earlier.value}",
            )


# --- sends ----------------------------------------------------------------------------------


async def sends_and_throttles(kit: Kit) -> None:
    if kit.fake_api is None:
        return
    fake = kit.fake_api()
    async with serving(fake) as base, started(kit, base) as adapter:
        result = await adapter.send(outgoing(kit, "1"))
        expect(bool(result.channel_message_id), "a send gave no provider id")
        fake.throttle_next()
        try:
            await adapter.send(outgoing(kit, "2"))
        except RetryableSendError as exc:
            if kit.throttle_delay is not None:
                expect(
                    exc.retry_after == kit.throttle_delay,
                    f"a throttled send waits {exc.retry_after}, not the provider's "
                    f"{kit.throttle_delay}",
                )
            return
        raise ConformanceError("a throttled send was not reported as retryable")


async def secrets_never_leak(kit: Kit) -> None:
    records: list[logging.LogRecord] = []
    handler = _Keep(records)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    errors: list[str] = []
    try:
        await _exercise(kit, errors)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    text = "\n".join([*(r.getMessage() for r in records), *errors])
    for secret in kit.secrets:
        expect(secret not in text, "a secret appeared in a log line or an error's text")


async def _exercise(kit: Kit, errors: list[str]) -> None:
    """Everything that may talk about secrets: refused requests, failed sends."""
    if kit.sign is not None:
        async with started(kit) as adapter:
            sample = kit.samples[0]
            for headers in ({}, {k: _garble(v) for k, v in kit.sign(sample.body, 0).items()}):
                try:
                    adapter.verify(_case_insensitive(headers), sample.body)
                except RequestRejected as exc:
                    errors.append(f"{exc} {exc.reason}")
    if kit.fake_api is not None:
        fake = kit.fake_api()
        async with serving(fake) as base, started(kit, base) as adapter:
            for trouble in (fake.reject_next, fake.throttle_next):
                trouble()
                try:
                    await adapter.send(outgoing(kit, "3"))
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc} {exc.args!r}")


# --- a start only looks ----------------------------------------------------------------------


async def start_only_looks(kit: Kit) -> None:
    if kit.fake_api is None:
        return
    seen: list[tuple[str, str]] = []
    async with serving(kit.fake_api(), seen) as base, started(kit, base) as adapter:
        # Whether the provider can tell is not this check's question: what it was sent is.
        with contextlib.suppress(Exception):
            await adapter.subscription_problem()
    reads = kit.reads or _reads_by_method
    # The path's last part only: a path may hold a token (Telegram's /bot<token>/...).
    changes = [f"{m} .../{p.rsplit('/', 1)[-1]}" for m, p in seen if not reads(m, p)]
    expect(
        not changes,
        f"starting for a check changed the provider's state ({', '.join(changes)}): "
        "start() only looks; what `leadline run` must tell the provider goes in go_live()",
    )


def _reads_by_method(method: str, path: str) -> bool:
    return method in ("GET", "HEAD")


CHECKS: tuple[Check, ...] = (
    signatures_fail_closed,
    secrets_must_not_be_blank,
    duplicates_give_the_same_keys,
    batches_lose_nothing,
    garbage_never_raises,
    statuses_are_monotonic,
    sends_and_throttles,
    secrets_never_leak,
    start_only_looks,
)


async def run(kit: Kit) -> list[tuple[str, str]]:
    """Every check; returns (check, what failed) for each that failed."""
    failures = []
    for check in CHECKS:
        try:
            await check(kit)
        except Exception as exc:
            failures.append((check.__name__, f"{type(exc).__name__}: {exc}"))
    return failures


# --- helpers ----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def started(kit: Kit, api_base: str | None = None) -> AsyncIterator[Adapter]:
    table = {**kit.config, **({"api_base": api_base} if api_base else {})}
    config = kit.adapter.config_model.model_validate(table)
    # A public URL: adapters that check where their webhook points (Telegram) need one.
    context = AdapterContext("conformance", "Conformance Realty", PUBLIC_URL)
    adapter = kit.adapter(config, context)
    try:
        if api_base is not None:
            await adapter.start()  # inside the try: a failed start still gets its close
        yield adapter
    finally:
        await adapter.close()


@contextlib.asynccontextmanager
async def serving(fake: FakeApi, seen: list[tuple[str, str]] | None = None) -> AsyncIterator[str]:
    """Serve `fake` on 127.0.0.1 (a free port) and yield its base URL; with `seen`, the
    (method, path) of every request it receives is appended there."""
    app = fake.app()
    if seen is not None:

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            seen.append((request.method, request.path))
            return await handler(request)

        app.middlewares.insert(0, record)
    # No access log: request paths and queries hold tokens and hashes, never logged.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def parse(adapter: Adapter, kit: Kit, body: bytes) -> list[InboundEvent]:
    assert kit.sign is not None
    headers = _case_insensitive(kit.sign(body, time.time()))
    adapter.verify(headers, body)
    return adapter.parse(headers, body)


def outgoing(kit: Kit, ref: str) -> OutboundMessage:
    fields = {"text": "Conformance check", **kit.outbound}
    return OutboundMessage(ref=ref, channel_user_id=kit.recipient, **fields)


def key(event: InboundEvent) -> tuple[str, str]:
    """What the runtime's idempotency key takes from an event."""
    if isinstance(event, StatusWatermark):
        return ("watermark", f"{event.channel_user_id}:{event.up_to.isoformat()}")
    if isinstance(event, ProviderNotice):
        return ("notice", event.key)
    return (type(event).__name__, event.channel_message_id)


_EVENTS = (InboundMessage, InboundEdit, StatusUpdate, StatusWatermark, OutboundEcho, ProviderNotice)


def _garble(value: str) -> str:
    """The same shape, other content: a signature that is well formed but wrong."""
    return "".join(_flip(ch) for ch in value)


def _flip(ch: str) -> str:
    if ch.isdigit():
        return str((int(ch) + 1) % 10)
    if ch in "abcdef":
        return "abcdef"[("abcdef".index(ch) + 1) % 6]
    return ch


def _case_insensitive(headers: Mapping[str, str]) -> Mapping[str, str]:
    from multidict import CIMultiDict

    return CIMultiDict(headers)


def _garbage(kit: Kit, rng: random.Random) -> Iterator[bytes]:
    """Noisy bytes and mutated JSON of the samples, forever."""
    bodies = [s.body for s in [*kit.samples, *kit.status_samples]]
    junk: list[Any] = [None, 0, -1, 2**70, 1e300, "", "x" * 300, "\u0000", [], {}, True]
    while True:
        body = rng.choice(bodies)
        if rng.random() < 0.3:
            noisy = bytearray(body)
            for _ in range(rng.randint(1, 8)):
                noisy[rng.randrange(len(noisy))] = rng.randrange(256)
            yield bytes(noisy)
            continue
        try:
            payload = json.loads(body)
        except ValueError:
            yield body[: rng.randrange(len(body) + 1)]
            continue
        yield json.dumps(_mutate(copy.deepcopy(payload), rng, junk)).encode()


def _mutate(node: Any, rng: random.Random, junk: list[Any]) -> Any:
    """Replace or drop one randomly chosen value somewhere in the payload."""
    if isinstance(node, dict) and node and rng.random() < 0.8:
        name = rng.choice(list(node))
        if rng.random() < 0.2:
            del node[name]
        else:
            node[name] = _mutate(node[name], rng, junk)
        return node
    if isinstance(node, list) and node and rng.random() < 0.8:
        index = rng.randrange(len(node))
        node[index] = _mutate(node[index], rng, junk)
        return node
    if isinstance(node, str) and node[:1] in "{[" and rng.random() < 0.5:
        try:  # a JSON document inside a string (TikTok's `content`)
            return json.dumps(_mutate(json.loads(node), rng, junk))
        except ValueError:
            pass
    return rng.choice(junk)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self._records = records

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)
