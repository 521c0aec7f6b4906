"""Garbage at every route: a clear 4xx, never a 5xx, and nothing stored half-way.

The random streams are seeded (`SEED`): a failure names its seed and case number,
and the same seed replays the same requests. The bugs this module once found have
regression tests at the bottom.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import string
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import ClientError, ClientResponse, WSMsgType, WSServerHandshakeError
from aiohttp.client_ws import ClientWebSocketResponse
from yarl import URL

from leadline.runtime.sanitize import id_digest
from tests.conftest import TEST_ENV, AppHarness
from tests.fakes.plugins.signed import sign
from tests.helpers import count, rows

SEED = 20260511
HTTP_CASES = 200
RAW_CASES = 80
FRAME_CASES = 120
MAX_BODY = 1024 * 1024
MAX_TEXT = 4000  # the web chat's default max_message_chars
SECRETS = {"demo": TEST_ENV["DEMO_SIGNED_SECRET"], "acme": TEST_ENV["ACME_SIGNED_SECRET"]}
SIGNED = {("demo", "signed"), ("acme", "signed")}
STORED_TABLES = ("chat_messages", "leads", "lead_channels")
VISITOR = "visitor-abcdefgh1234"
TIMEOUT = 10.0

# Some inputs have a dedicated regression test at the bottom instead of a place in the
# random streams: compressed bodies (415), deeply nested JSON websocket frames, ids
# with a trailing newline, non-UTF-8 signature bytes, and correctly signed messages
# with wrong-typed or unstorable fields.

UNICODE = ["é", "ß", "Ω", "経", "紀", "🏠", "\u202e", "\u200b", "\ufeff", "\u0301", "\x00", "\x7f"]
TEXT_ALPHABET = list(string.ascii_letters + string.digits + string.punctuation + " ") + UNICODE


def random_text(rng: random.Random, low: int = 0, high: int = 20) -> str:
    return "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(low, high)))


def header_text(rng: random.Random, low: int = 0, high: int = 40) -> str:
    """A header value the client can send: no CR/LF/NUL, possibly non-ASCII."""
    alphabet = [c for c in TEXT_ALPHABET if c not in "\x00\x7f"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, high))).strip()


def random_hex(rng: random.Random, n: int = 64) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


# --- JSON of the wrong shapes ----------------------------------------------------

KEYS = ["messages", "statuses", "id", "text", "name", "type", "ids", "", "é", "0"]


def random_json(rng: random.Random, depth: int = 0, keys: list[str] = KEYS) -> Any:
    kinds = ["null", "bool", "int", "float", "str"]
    if depth < 4:
        kinds += ["list", "dict", "dict"]
    kind = rng.choice(kinds)
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 2**63, -(2**70), rng.randint(-(10**6), 10**6)])
    if kind == "float":
        return rng.choice([0.5, -1e308, 1e-308, float("nan"), float("inf")])
    if kind == "str":
        return random_text(rng)
    if kind == "list":
        return [random_json(rng, depth + 1, keys) for _ in range(rng.randint(0, 4))]
    return {rng.choice(keys): random_json(rng, depth + 1, keys) for _ in range(rng.randint(0, 4))}


def unstorable_delivery(rng: random.Random) -> bytes:
    """A body that, even correctly signed, the signed provider must refuse (400) or that
    carries no message (200): never a message to store. Its `messages` entries never
    have a sender ("from"), so no message of it can be parsed."""
    choice = rng.randrange(9)
    if choice == 0:
        return rng.choice([b"", b"null", b"[]", b"0", b"-1e999", b'"messages"', b"true", b"NaN"])
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    if choice == 2:  # invalid UTF-8 around something JSON-looking
        return rng.choice([b"\xff\xfe{}", b'{"messages": "\xc3("}', b'{"a": "\xed\xa0\x80"}'])
    if choice == 3:
        bracket = rng.choice([b"[", b'{"a":'])
        return bracket * rng.randint(2000, 20000)  # nested deep: RecursionError in json
    if choice == 4:
        return b'{"messages": [' + b'{"id": "m1", "text": "no sender"}' + b"]}"
    if choice == 5:
        status = {"id": random_text(rng, 1), "status": rng.choice(["", "bogus", "READ", None])}
        return json.dumps({"statuses": [status]}).encode()
    if choice == 6:
        shape = rng.choice([None, 5, "x", {"a": 1}, [1, 2], [None], [[]], ["m1"]])
        return json.dumps({rng.choice(["messages", "statuses"]): shape}).encode()
    if choice == 7:
        return b'{"messages": [], "statuses": []}'  # valid, empty: 200, stores nothing
    keys = [k for k in KEYS if k not in ("id", "messages", "statuses")]
    return json.dumps(random_json(rng, keys=keys), allow_nan=True).encode()


def garbage_body(rng: random.Random) -> bytes:
    choice = rng.randrange(10)
    if choice == 0:
        return b""
    if choice == 1:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))
    if choice == 2:
        return rng.choice([b"\xff\xfe\xfd", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]) * 3
    if choice == 3:  # huge but under the limit
        return rng.choice([b" ", b"[", b"a", b"\x00"]) * (MAX_BODY - rng.randint(0, 4096))
    if choice == 4:  # over the limit
        return b"{" + b" " * (MAX_BODY + rng.randint(0, 4096))
    if choice == 5:
        return random_text(rng, 0, 200).encode("utf-8", "surrogatepass")
    if choice in (6, 7):
        return json.dumps(random_json(rng), allow_nan=True).encode()
    return unstorable_delivery(rng)


# --- requests to our routes --------------------------------------------------------

BROKERS = [
    "demo",
    "acme",
    "nobody",
    "DEMO",
    "démo",
    "経紀人",
    "🏠",
    "demo ",
    "\x00",
    "%",
    "%ff",
    "<script>alert(1)</script>",
    "'; DROP TABLE leads; --",
    "demo\u202e",
    "a" * 1500,
]
PROVIDERS = ["signed", "webchat", "nothing", "SIGNED", "sígned", "signed\x00", "x" * 400]
VISITORS = [
    VISITOR,
    "abcdefgh",
    "short",
    "a" * 65,
    "bad id!!!",
    "訪問者abcdefgh",
    "",
    "a\x00bcdefgh",
]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-16",
    "application/json; charset=bogus",
    "text/plain",
    "multipart/form-data; boundary=",
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    "*/*",
    ";;;",
    "",
]


def segment(rng: random.Random, pool: list[str]) -> str:
    value = rng.choice(pool) if rng.random() < 0.8 else random_text(rng, 1, 30)
    # aiohttp's `{broker_id}` matches `[^{}/]+`: other paths are aiohttp's own 404.
    value = value.replace("/", "").replace("{", "").replace("}", "")
    if value.strip(".") == "" or value.strip() == "":
        value = "x" + value  # "", "." and ".." are not segments `{broker_id}` matches
    return value


@dataclass
class Query:
    raw: list[str] = field(default_factory=list)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, key: str | None, value: str = "", raw: str | None = None) -> None:
        self.raw.append(raw if raw is not None else f"{quote(key or '')}={quote(value, safe='')}")
        if key is not None:
            self.first.setdefault(key, value)

    def render(self) -> str:
        return "?" + "&".join(self.raw) if self.raw else ""


def random_query(rng: random.Random) -> Query:
    query = Query()
    for _ in range(rng.randint(0, 4)):
        choice = rng.randrange(9)
        if choice == 0:
            query.add("visitor", rng.choice(VISITORS))
        elif choice == 1:
            query.add("token", rng.choice(["let-me-in", "", random_text(rng)]))
        elif choice == 2:
            query.add("challenge", random_text(rng, 0, 50))
        elif choice == 3:
            query.add("visitor", "", raw="visitor")
        elif choice == 4:
            query.add(None, raw=rng.choice(["%ff%fe=%c0%af", "a=&&=b&&", ";;", "%", "%zz=1"]))
        elif choice == 5:
            query.add("x", "y" * rng.randint(100, 3000))
        elif choice == 6:
            query.add(None, raw="a[b][c]=d&__proto__=1&constructor=x")
        else:
            query.add(random_text(rng, 1, 8), random_text(rng))
    return query


@dataclass
class Case:
    index: int
    method: str
    target: str  # encoded path and query
    headers: dict[str, str]
    body: bytes
    expect: set[int] | None = None  # a route of ours: the statuses it may answer
    note: str = ""

    def __str__(self) -> str:
        body = f"{len(self.body)} B {self.body[:60]!r}"
        return (
            f"seed={SEED} case={self.index} ({self.note}): {self.method} {self.target[:200]!r} "
            f"headers={ {k: v[:80] for k, v in self.headers.items()} } body={body}"
        )


def signature(rng: random.Random, secret: str, body: bytes) -> str | None:
    """Any X-Signature but the right one (None: no header)."""
    right = sign(secret, body)
    return rng.choice(
        [
            None,
            "",
            "sha256=",
            "sha256=" + random_hex(rng),  # the right prefix, the wrong hex
            right.upper(),
            right[:-1] + ("0" if right[-1] != "0" else "1"),
            right[7:],
            "sha1=" + random_hex(rng, 40),
            sign("another-secret", body),
            sign(secret, body + b" "),
            "sha256=" + "0" * 5000,
            header_text(rng, 1),
        ]
    )


def with_signature(headers: dict[str, str], value: str | None) -> None:
    if value is not None:
        headers["X-Signature"] = value


def webhook_post_case(rng: random.Random, index: int, broker: str, provider: str) -> Case:
    headers: dict[str, str] = {}
    body = garbage_body(rng)
    secret = SECRETS.get(broker, SECRETS["demo"])
    signed_right = rng.random() < 0.3
    if signed_right:
        body = unstorable_delivery(rng)
        headers["X-Signature"] = sign(secret, body)
    else:
        with_signature(headers, signature(rng, secret, body))
    if rng.random() < 0.7:
        headers["Content-Type"] = rng.choice(CONTENT_TYPES)
    if rng.random() < 0.15:
        # Compressed bodies are refused whole (415), valid, broken or a gzip bomb alike.
        if rng.random() < 0.3:
            body = b"\x00" * (MAX_BODY + rng.randint(1, 100_000))
        encoding = rng.choice(["gzip", "deflate"])
        headers["Content-Encoding"] = encoding
        if signed_right:
            headers["X-Signature"] = sign(secret, body)
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        if rng.random() < 0.3:
            body = body[: len(body) // 2]  # does not decode
    elif rng.random() < 0.05:
        headers["Content-Encoding"] = rng.choice(["identity", "bogus", "x-gzip", "IDENTITY"])
    compressed = headers.get("Content-Encoding", "identity").lower() != "identity"
    if (broker, provider) not in SIGNED:
        expect = {404}
    elif compressed:
        expect = {415}
    elif len(body) > MAX_BODY:
        expect = {413}
    elif not headers.get("X-Signature", "").strip():
        expect = {401}
    elif signed_right:
        expect = {200, 400}
    else:
        expect = {403}
    target = f"/webhooks/{quote(broker, safe='')}/{quote(provider, safe='')}"
    return Case(index, "POST", target + random_query(rng).render(), headers, body, expect)


def webhook_get_case(rng: random.Random, index: int, broker: str, provider: str) -> Case:
    query = random_query(rng)
    if rng.random() < 0.3:
        query.add("token", "let-me-in")
    target = f"/webhooks/{quote(broker, safe='')}/{quote(provider, safe='')}"
    if (broker, provider) in SIGNED:
        expect = {200} if query.first.get("token") == "let-me-in" else {403}
    elif (broker, provider) == ("demo", "webchat"):
        expect = {405}
    else:
        expect = {404}
    headers = {"X-Signature": header_text(rng)} if rng.random() < 0.3 else {}
    return Case(index, "GET", target + query.render(), headers, garbage_body(rng)[:500], expect)


def socket_headers(rng: random.Random) -> dict[str, str]:
    """Upgrade-looking headers that never make a valid websocket handshake."""
    candidates = {
        "Upgrade": rng.choice(["websocket", "WebSocket", "h2c", "garbage", ""]),
        "Connection": rng.choice(["Upgrade", "keep-alive, Upgrade", "garbage"]),
        "Sec-WebSocket-Version": rng.choice(["13", "8", "99", "x", ""]),
        "Sec-WebSocket-Key": rng.choice(["", "garbage", "AAAA", "!!!!", "x" * 100]),
        "Sec-WebSocket-Protocol": rng.choice([",,, ;;", "chat", "é"]),
        "Sec-WebSocket-Extensions": rng.choice(["permessage-deflate; x=y", "garbage"]),
    }
    return {k: v for k, v in candidates.items() if rng.random() < 0.6}


def webchat_case(rng: random.Random, index: int, broker: str, host: str) -> Case:
    query = random_query(rng)
    headers: dict[str, str] = {}
    if rng.random() < 0.5:
        headers.update(socket_headers(rng))
    if rng.random() < 0.4:
        headers["Origin"] = rng.choice(
            ["https://evil.example", "null", f"http://{host}", "", header_text(rng), host]
        )
    target = f"/webchat/{quote(broker, safe='')}"
    if rng.random() < 0.5:
        expect = {200} if broker == "demo" else {404}
        return Case(index, "GET", target + query.render(), headers, b"", expect)
    if rng.random() < 0.5:
        query.add("visitor", rng.choice(VISITORS))
    visitor = query.first.get("visitor", "")
    origin = headers.get("Origin")
    if broker != "demo":
        expect = {404}
    elif not (
        8 <= len(visitor) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in visitor)
    ):
        expect = {400}
    elif origin is not None and origin.split("://", 1)[-1] != host:
        expect = {403}
    else:
        expect = {400}  # no complete upgrade: "this route takes a websocket upgrade"
    return Case(index, "GET", target + "/ws" + query.render(), headers, b"", expect)


def odd_case(rng: random.Random, index: int) -> Case:
    """Methods and paths no route of ours answers: only "not 5xx" is asked of them."""
    broker = quote(segment(rng, BROKERS), safe="")
    paths = [
        "/",
        "/healthz",
        f"/webhooks/{broker}/signed",
        f"/webhooks/{broker}/webchat",
        f"/webchat/{broker}",
        f"/webchat/{broker}/ws",
        f"/webhooks/{broker}",
        f"/webhooks/{broker}/signed/extra",
        "/webhooks//signed",
        "/webchat/demo/",
        "/webchat/demo/ws/",
        "/healthz/",
        "/nope",
        "/webhooks/demo%2Fsigned",
        "/webhooks/%2e%2e/signed",
        "/static/../../etc/passwd",
        "/webhooks/demo/signed%00",
        "/" + "a" * rng.randint(1000, 9000),
        "/" + quote(random_text(rng, 1, 50), safe="/"),
    ]
    path = rng.choice(paths)
    method = rng.choice(["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "POST", "GET", "TRACE"])
    headers: dict[str, str] = {}
    if rng.random() < 0.5:
        with_signature(headers, signature(rng, SECRETS["demo"], b""))
    if rng.random() < 0.3:
        headers["Content-Type"] = rng.choice(CONTENT_TYPES)
    # Headers aiohttp's parser refuses get its own 400 with a body, even to HEAD,
    # which the client then cannot parse: the raw stream sends those to HEAD.
    if rng.random() < 0.1 and method != "HEAD":
        headers["Expect"] = rng.choice(["100-continue", "bogus"])
    if rng.random() < 0.1 and method != "HEAD":
        headers["Content-Encoding"] = rng.choice(["br", "zstd", "bogus"])
    if rng.random() < 0.2:
        headers["X-Garbage-" + str(rng.randrange(100))] = header_text(rng)
    body = garbage_body(rng) if method not in ("GET", "HEAD", "TRACE") else b""
    return Case(index, method, path + random_query(rng).render(), headers, body, note="odd")


def our_case(rng: random.Random, index: int, host: str) -> Case:
    broker, provider = segment(rng, BROKERS), segment(rng, PROVIDERS)
    if rng.random() < 0.6:  # mostly the channels that exist
        broker, provider = rng.choice(sorted(SIGNED | {("demo", "webchat")}))
    choice = rng.randrange(10)
    if choice < 4:
        case = webhook_post_case(rng, index, broker, provider)
    elif choice < 6:
        case = webhook_get_case(rng, index, broker, provider)
    elif choice < 9:
        case = webchat_case(rng, index, broker, host)
    else:
        path = rng.choice(["/", "/healthz"])
        case = Case(index, "GET", path + random_query(rng).render(), {}, b"", {200})
    if rng.random() < 0.2:
        case.headers["X-Garbage-" + str(rng.randrange(100))] = header_text(rng)
    if rng.random() < 0.1:
        case.headers["Accept"] = rng.choice(["", "*/*;q=x", "text/html, é", ";;;"])
    if len(case.target) > 7000:  # aiohttp's own request-line limit answers (400, text)
        case.expect, case.note = None, "line too long"
    return case


async def assert_json_error(response: ClientResponse, where: object) -> None:
    body = await response.read()
    assert response.content_type == "application/json", f"{where}: {response.status} {body[:200]!r}"
    data = json.loads(body)
    assert isinstance(data, dict), f"{where}: {data!r}"
    reason = data.get("error")
    assert isinstance(reason, str) and reason, f"{where}: {data!r}"


async def send(app: AppHarness, case: Case) -> ClientResponse:
    try:
        return await asyncio.wait_for(
            app.client.request(
                case.method,
                URL(case.target, encoded=True),
                data=case.body,
                headers=case.headers,
                allow_redirects=False,
            ),
            TIMEOUT,
        )
    except TimeoutError:
        raise AssertionError(f"{case}: no answer within {TIMEOUT} s") from None
    except ClientError as exc:
        raise AssertionError(f"{case}: {exc!r}"[:3000]) from exc


async def assert_nothing_stored(app: AppHarness, where: object) -> None:
    for table in STORED_TABLES:
        n = await count(app.service.engine, table)
        assert n == 0, f"{where}: {n} rows in {table}"


# --- the random HTTP streams --------------------------------------------------------


async def test_garbage_requests_get_a_clear_4xx_never_a_5xx_and_store_nothing(app: AppHarness):
    rng = random.Random(SEED)
    server = app.client.server
    host = f"{server.host}:{server.port}"
    seen: dict[int, int] = {}
    for index in range(HTTP_CASES):
        case = odd_case(rng, index) if rng.random() < 0.2 else our_case(rng, index, host)
        response = await send(app, case)
        status = response.status
        seen[status] = seen.get(status, 0) + 1
        assert status < 500, f"{case}: {status} {(await response.read())[:300]!r}"
        if case.expect is not None:
            assert status in case.expect, f"{case}: {status}, expected {sorted(case.expect)}"
            if 400 <= status < 500:
                await assert_json_error(response, case)
        response.release()
    await assert_nothing_stored(app, f"seed={SEED}, after {HTTP_CASES} cases")
    # The stream reached every answer it is meant to exercise.
    assert {200, 400, 401, 403, 404, 405, 413, 415} <= set(seen), f"seed={SEED}: {seen}"


RAW_SEGMENTS = [
    b"demo",
    b"acme",
    b"signed",
    b"webchat",
    b"d\xc3\xa9mo",
    b"\xff\xfe",
    b"%ff%fe",
    b"%C0%AF",
    b"%00",
    b"%",
    b"%zz",
    b"..",
    b".",
    b"%2e%2e",
    b"%2F",
    b"",
    b"demo;x=1",
    b"demo#frag",
    b"\x00",
    b"\t",
    b"\x7f",
]
RAW_TARGETS = [
    b"/",
    b"/healthz",
    b"/webhooks/{b}/{p}",
    b"/webchat/{b}",
    b"/webchat/{b}/ws",
    b"/{b}",
    b"//webhooks//{b}//{p}",
    b"/webhooks/{b}/{p}/../../healthz",
    b"http://evil.example/webhooks/{b}/{p}",
    b"*",
]
RAW_METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"TRACE"]
RAW_METHODS += [b"FOO", b"get", b"G\xc3\xa9T", b"POST POST", b"M-SEARCH"]
RAW_QUERIES = [
    b"",
    b"?visitor=visitor-abcdefgh1234",
    b"?visitor=\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8",
    b"?\xff",
    b"?%ff=%fe",
    b"?token=let-me-in&challenge=\xc3\xa9",
    b"?token=let-me-in&challenge=%00%0d%0aSet-Cookie:x",
    b"?" + b"&" * 3000,
]


def raw_bytes(rng: random.Random, low: int = 0, high: int = 40) -> bytes:
    """Header-ish bytes: anything but CR, LF (they would frame a different request)."""
    allowed = [b for b in range(256) if b not in (10, 13)]
    return bytes(rng.choice(allowed) for _ in range(rng.randint(low, high)))


def raw_request(rng: random.Random) -> bytes:
    method = rng.choice(RAW_METHODS)
    template = rng.choice(RAW_TARGETS)
    target = template.replace(b"{b}", rng.choice(RAW_SEGMENTS)).replace(
        b"{p}", rng.choice(RAW_SEGMENTS)
    )
    if rng.random() < 0.05:
        target = b"/" + b"a" * rng.randint(5000, 20000)
    target += rng.choice(RAW_QUERIES)
    version = rng.choice([b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/9.9", b"HTTP/1.1x"])
    headers = [b"Connection: close"]
    if rng.random() < 0.9:
        headers.append(b"Host: " + rng.choice([b"127.0.0.1", b"x", b"\xff\xfe", b""]))
    for name in (b"X-Signature", b"Origin", b"Content-Type", b"Upgrade", b"Accept", b"Cookie"):
        if rng.random() < 0.3:
            headers.append(name + b": " + raw_bytes(rng))
    if rng.random() < 0.1:
        headers.append(rng.choice([b"X-\xff: y", b"Bad Header: x", b": empty", b" folded: x"]))
    if rng.random() < 0.1:
        headers.append(b"Sec-WebSocket-Key: " + raw_bytes(rng, 0, 30))
    body = b""
    if rng.random() < 0.6:
        body = raw_bytes(rng, 0, 3000)
        if rng.random() < 0.2:
            headers.append(b"Transfer-Encoding: chunked")
            if rng.random() < 0.5:  # well formed
                body = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
            else:  # a chunk size line the parser refuses at once
                body = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
        else:
            headers.append(b"Content-Length: %d" % len(body))
    head = b" ".join([method, target, version]) + b"\r\n" + b"\r\n".join(headers)
    return head + b"\r\n\r\n" + body


async def raw_exchange(app: AppHarness, data: bytes) -> bytes:
    server = app.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()


async def test_raw_http_garbage_never_gets_a_5xx_and_stores_nothing(app: AppHarness):
    """Bytes the aiohttp client will not send: odd methods, raw non-ASCII paths and
    header bytes, broken chunking, bad versions. Each gets an answer below 500."""
    rng = random.Random(SEED + 1)
    for index in range(RAW_CASES):
        data = raw_request(rng)
        where = f"seed={SEED + 1} case={index}: {data[:300]!r}"
        try:
            answer = await raw_exchange(app, data)
        except TimeoutError:
            raise AssertionError(f"{where}: no answer within {TIMEOUT} s") from None
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1."), f"{where}: answered {answer[:200]!r}"
        status = int(status_line.split()[1])
        assert status < 500, f"{where}: answered {answer[:400]!r}"
    await assert_nothing_stored(app, f"seed={SEED + 1}, after {RAW_CASES} raw cases")


# --- signed, and still refused ---------------------------------------------------------

SECRET = SECRETS["demo"]


async def post_signed(app: AppHarness, body: bytes, path: str = "/webhooks/demo/signed"):
    headers = {"X-Signature": sign(SECRET, body), "Content-Type": "application/json"}
    return await app.client.post(path, data=body, headers=headers)


MALFORMED_FOR_THE_PROVIDER = {
    "not json": b"hello",
    "empty": b"",
    "invalid utf-8": b'{"messages": [{"id": "m1", "from": "u1", "text": "\xff\xfe"}]}',
    "array": b'[{"id": "m1", "from": "u1"}]',
    "null": b"null",
    "number": b"42",
    "string": b'"messages"',
    "messages is an object": b'{"messages": {"id": "m1", "from": "u1"}}',
    "messages is a string": b'{"messages": "m1"}',
    "message is a list": b'{"messages": [["m1", "u1"]]}',
    "message without sender": b'{"messages": [{"id": "m1", "text": "hi"}]}',
    "message without id": b'{"messages": [{"from": "u1", "text": "hi"}]}',
    "unknown status": b'{"statuses": [{"id": "m1", "status": "exploded"}]}',
    "status without id": b'{"statuses": [{"status": "read"}]}',
    "nested deep": b"[" * 100_000 + b"]" * 100_000,
    "truncated": b'{"messages": [{"id": "m1", "from": "u1"',
}


async def test_signed_but_malformed_bodies_are_400_and_store_nothing(app: AppHarness):
    for name, body in MALFORMED_FOR_THE_PROVIDER.items():
        response = await post_signed(app, body)
        assert response.status == 400, f"{name}: {response.status} {await response.text()}"
        await assert_json_error(response, name)
        await assert_nothing_stored(app, name)


async def test_signed_batch_with_a_malformed_second_message_stores_none_of_it(app: AppHarness):
    batch = {
        "messages": [
            {"id": "m1", "from": "u1", "text": "first, fine"},
            {"id": "m2", "text": "second, no sender"},
            {"id": "m3", "from": "u3", "text": "third, fine"},
        ]
    }
    response = await post_signed(app, json.dumps(batch).encode())
    assert response.status == 400
    await assert_json_error(response, "batch")
    await assert_nothing_stored(app, "batch with a malformed 2nd message")
    # The same batch, mended, then stores all of it.
    batch["messages"][1]["from"] = "u2"
    assert (await post_signed(app, json.dumps(batch).encode())).status == 200
    stored = sorted(r["channel_message_id"] for r in await inbound(app))
    assert stored == ["m1", "m2", "m3"]


async def test_signed_batch_whose_second_message_has_an_unstorable_id_stores_none_of_it(
    app: AppHarness,
):
    """All-or-nothing: the 2nd message's id holds a control character no id can have."""
    body = (
        b'{"messages": [{"id": "m1", "from": "u1", "text": "fine"},'
        b' {"id": "i\\u0007", "from": "u2", "text": "fine"},'
        b' {"id": "m3", "from": "u3", "text": "fine"}]}'
    )
    response = await post_signed(app, body)
    assert response.status == 400
    await assert_json_error(response, "batch with an unstorable 2nd message")
    await assert_nothing_stored(app, "batch with an unstorable 2nd message")


async def test_signed_batch_whose_second_message_id_is_over_255_chars_is_stored_whole(
    app: AppHarness,
):
    """A plugin's id longer than any column holds is stored under its sha256 digest."""
    body = (
        b'{"messages": [{"id": "m1", "from": "u1", "text": "fine"},'
        b' {"id": "' + b"i" * 300 + b'", "from": "u2", "text": "fine"},'
        b' {"id": "m3", "from": "u3", "text": "fine"}]}'
    )
    for _ in range(2):  # the redelivery stores nothing new
        response = await post_signed(app, body)
        assert response.status == 200, await response.text()
    stored = sorted(r["channel_message_id"] for r in await inbound(app))
    assert stored == sorted(["m1", id_digest("i" * 300), "m3"])


async def test_text_the_database_cannot_hold_is_repaired_not_refused(app: AppHarness):
    """NUL and lone surrogates in free text become U+FFFD; the batch is stored whole."""
    body = (
        b'{"messages": [{"id": "m1", "from": "u1", "text": "a\\u0000b"},'
        b' {"id": "m2", "from": "u2", "text": "\\ud800!", "name": "\\udfffAna"}]}'
    )
    response = await post_signed(app, body)
    assert response.status == 200, await response.text()
    stored = sorted((r["channel_message_id"], r["message_text"]) for r in await inbound(app))
    assert stored == [("m1", "a\ufffdb"), ("m2", "\ufffd!")]


async def test_wrong_signatures_are_401_or_403_and_store_nothing(app: AppHarness):
    body = json.dumps({"messages": [{"id": "m1", "from": "u1", "text": "hi"}]}).encode()
    right = sign(SECRET, body)
    cases: list[tuple[dict[str, str], int]] = [
        ({}, 401),
        ({"X-Signature": ""}, 401),
        ({"X-Signature": "sha256="}, 403),
        ({"X-Signature": "sha256=" + "0" * 64}, 403),
        ({"X-Signature": right[:-2] + ("00" if right[-2:] != "00" else "11")}, 403),
        ({"X-Signature": right.upper()}, 403),
        ({"X-Signature": right[7:]}, 403),
        ({"X-Signature": sign(TEST_ENV["ACME_SIGNED_SECRET"], body)}, 403),
        ({"X-Signature": "sha256=" + "é" * 64}, 403),
        ({"X-Signature": right + right}, 403),
    ]
    for headers, expected in cases:
        response = await app.client.post("/webhooks/demo/signed", data=body, headers=headers)
        assert response.status == expected, headers
        await assert_json_error(response, headers)
    await assert_nothing_stored(app, "wrong signatures")


# --- the web chat's socket ------------------------------------------------------------


def same_origin(app: AppHarness) -> str:
    server = app.client.server
    return f"http://{server.host}:{server.port}"


async def ws_refused(app: AppHarness, target: str, **kwargs: Any) -> int:
    with pytest.raises(WSServerHandshakeError) as refused:
        ws = await app.client.ws_connect(URL(target, encoded=True), **kwargs)
        await ws.close()
    return refused.value.status


HANDSHAKE_REFUSALS = {
    "no visitor": ("/webchat/demo/ws", {}, 400),
    "empty visitor": ("/webchat/demo/ws?visitor=", {}, 400),
    "short visitor": ("/webchat/demo/ws?visitor=abc", {}, 400),
    "long visitor": ("/webchat/demo/ws?visitor=" + "a" * 65, {}, 400),
    "visitor with a space": ("/webchat/demo/ws?visitor=visitor%20abcdefgh", {}, 400),
    "visitor with a slash": ("/webchat/demo/ws?visitor=visitor%2Fabcdefgh", {}, 400),
    "visitor with a NUL": ("/webchat/demo/ws?visitor=visitor-abcdefgh%00", {}, 400),
    "visitor with a newline inside": ("/webchat/demo/ws?visitor=visitor%0Aabcdefgh", {}, 400),
    "unicode visitor": ("/webchat/demo/ws?visitor=" + quote("訪問者-abcdefgh"), {}, 400),
    "invalid utf-8 visitor": ("/webchat/demo/ws?visitor=%ff%fe%fd%fc%fb%fa%f9%f8", {}, 400),
    "cross-origin": (
        f"/webchat/demo/ws?visitor={VISITOR}",
        {"origin": "https://evil.example"},
        403,
    ),
    "null origin": (f"/webchat/demo/ws?visitor={VISITOR}", {"origin": "null"}, 403),
    "unknown broker": (f"/webchat/nobody/ws?visitor={VISITOR}", {}, 404),
    "broker without web chat": (f"/webchat/acme/ws?visitor={VISITOR}", {}, 404),
    "unicode broker": (f"/webchat/{quote('démo')}/ws?visitor={VISITOR}", {}, 404),
}


async def test_socket_handshake_refusals_are_4xx_not_upgrades(app: AppHarness):
    for name, (target, kwargs, expected) in HANDSHAKE_REFUSALS.items():
        assert await ws_refused(app, target, **kwargs) == expected, name
        # The same request as a plain GET: the same status, with a JSON reason.
        headers = {"Origin": kwargs["origin"]} if "origin" in kwargs else {}
        response = await app.client.get(URL(target, encoded=True), headers=headers)
        assert response.status == expected, name
        await assert_json_error(response, name)
    # Without a complete upgrade, a valid visitor still gets 400, not a socket.
    for headers in (
        {},
        {"Upgrade": "websocket"},
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "garbage"},
        {"Origin": same_origin(app)},
    ):
        response = await app.client.get(f"/webchat/demo/ws?visitor={VISITOR}", headers=headers)
        assert response.status == 400, headers
        await assert_json_error(response, headers)
    await assert_nothing_stored(app, "refused handshakes")


async def receive_json(ws: ClientWebSocketResponse, where: object) -> dict[str, Any]:
    try:
        message = await ws.receive(timeout=TIMEOUT)
    except TimeoutError:
        raise AssertionError(f"{where}: no frame within {TIMEOUT} s") from None
    assert message.type == WSMsgType.TEXT, f"{where}: got {message.type!r} {message.data!r}"
    frame = json.loads(message.data)
    assert isinstance(frame, dict), f"{where}: {frame!r}"
    return frame


async def until_ack(ws: ClientWebSocketResponse, ack_id: str, where: object) -> list[dict]:
    """The frames before the ack of `ack_id` (replies to the visitor left out)."""
    before: list[dict] = []
    while True:
        frame = await receive_json(ws, where)
        if frame.get("type") == "ack" and frame.get("id") == ack_id:
            return before
        if frame.get("type") == "message":  # a reply (the welcome), legitimately pushed
            continue
        before.append(frame)


@dataclass
class Frame:
    kind: str  # "text", "binary" or "ping"
    data: Any
    expect_error: bool | None  # None: an error frame or nothing, both fine

    def describe(self) -> str:
        return f"{self.kind} {str(self.data)[:120]!r}"


def bad_id(rng: random.Random) -> Any:
    return rng.choice(
        [None, 5, "", "short", "a" * 65, "bad id!!", "訪問者abcdefgh", ["abcdefgh1"], "abc/defgh"]
    )


def bad_text(rng: random.Random) -> Any:
    return rng.choice([None, "", "   ", "\n\t", 5, ["hi"], {"t": 1}, "x" * (MAX_TEXT + 1)])


def garbage_frame(rng: random.Random) -> Frame:
    choice = rng.randrange(12)
    if choice == 0:
        return Frame("text", random_text(rng, 0, 60), True)  # JSON only by a fluke: see below
    if choice == 1:
        return Frame("text", rng.choice(["", " ", "[]", "[1,2]", "null", "42", '"message"']), True)
    if choice == 2:
        kind = rng.choice([None, "Message", "MESSAGE", "ack", "history", 5, ["message"], ""])
        return Frame("text", json.dumps({"type": kind, "id": "abcdefgh1", "text": "x"}), True)
    if choice == 3:
        return Frame("text", json.dumps({"id": "abcdefgh1", "text": "no type"}), True)
    if choice == 4:
        frame = {"type": "message", "id": bad_id(rng), "text": random_text(rng, 1)}
        if rng.random() < 0.3:
            del frame["id"]
        return Frame("text", json.dumps(frame), True)
    if choice == 5:
        frame = {
            "type": "message",
            "id": f"garbage{rng.randrange(10**6):08d}",
            "text": bad_text(rng),
        }
        if rng.random() < 0.3:
            del frame["text"]
        return Frame("text", json.dumps(frame), True)
    if choice == 6:
        text = "x" * rng.randint(MAX_TEXT + 1, 20_000)
        return Frame("text", json.dumps({"type": "message", "id": "toolong01", "text": text}), True)
    if choice == 7:
        ids = rng.choice([None, "abc", 5, [5], [None], ["a" * 65], {"a": 1}])
        return Frame("text", json.dumps({"type": "received", "ids": ids}), True)
    if choice == 8:  # well formed: marks nothing (no such reply); the database may refuse odd ids
        ids = [random_text(rng, 0, 64) for _ in range(rng.randint(0, 5))]
        return Frame("text", json.dumps({"type": "received", "ids": ids}), None)
    if choice == 9:
        return Frame(
            "binary", bytes(rng.randrange(256) for _ in range(rng.randint(0, 3000))), False
        )
    if choice == 10:
        return Frame("ping", bytes(rng.randrange(256) for _ in range(rng.randint(0, 100))), False)
    raw = bytes(rng.randrange(32, 127) for _ in range(rng.randint(1, 200))).decode()
    return Frame("text", raw, True)


async def connect(app: AppHarness, visitor: str = VISITOR) -> ClientWebSocketResponse:
    ws = await app.client.ws_connect(
        f"/webchat/demo/ws?visitor={visitor}", origin=same_origin(app), autoping=True
    )
    history = await receive_json(ws, "connect")
    assert history["type"] == "history"
    return ws


async def inbound(app: AppHarness) -> list[dict[str, Any]]:
    return await rows(
        app.service.engine,
        "SELECT channel_message_id, message_text FROM chat_messages WHERE direction = 'in'",
    )


async def test_socket_survives_garbage_frames_and_still_acks_a_valid_message_once(
    app: AppHarness,
):
    """Each garbage frame gets an error frame or nothing; the socket stays open. After
    each, the same valid message is resent and acknowledged again: it is stored once."""
    rng = random.Random(SEED + 2)
    ws = await connect(app)
    sync = {"type": "message", "id": "sync-message-0001", "text": "hello, still there?"}
    await ws.send_str(json.dumps(sync))
    assert await until_ack(ws, sync["id"], "first sync") == []
    kinds: dict[str, int] = {}
    for index in range(FRAME_CASES):
        frame = garbage_frame(rng)
        where = f"seed={SEED + 2} frame={index}: {frame.describe()}"
        if frame.kind == "text" and frame.expect_error and _is_json_object(frame.data):
            frame.expect_error = None  # random text that happens to be a JSON object
        kinds[frame.kind] = kinds.get(frame.kind, 0) + 1
        if frame.kind == "text":
            await ws.send_str(frame.data)
        elif frame.kind == "binary":
            await ws.send_bytes(frame.data)
        else:
            await ws.ping(frame.data)
        await ws.send_str(json.dumps(sync))
        answers = await until_ack(ws, sync["id"], where)
        assert len(answers) <= 1, f"{where}: {answers}"
        for answer in answers:
            assert answer.get("type") == "error", f"{where}: {answer}"
            assert isinstance(answer.get("reason"), str) and answer["reason"], f"{where}: {answer}"
        if frame.expect_error is True:
            assert answers, f"{where}: no error frame"
        if frame.expect_error is False:
            assert not answers, f"{where}: {answers}"
        assert not ws.closed, f"{where}: the socket closed ({ws.close_code})"
    assert set(kinds) == {"text", "binary", "ping"}, kinds
    # The sync message, resent after every garbage frame, is stored once.
    assert [r["channel_message_id"] for r in await inbound(app)] == [sync["id"]]
    # And a new valid message is acknowledged and stored once.
    fresh = {"type": "message", "id": "fresh-message-0002", "text": "a new question"}
    await ws.send_str(json.dumps(fresh))
    assert await until_ack(ws, fresh["id"], "fresh") == []
    stored = await inbound(app)
    assert sorted(r["channel_message_id"] for r in stored) == [fresh["id"], sync["id"]]
    assert await count(app.service.engine, "leads") == 1
    await ws.close()
    # The history at the next connection has each message once.
    again = await app.client.ws_connect(
        f"/webchat/demo/ws?visitor={VISITOR}", origin=same_origin(app)
    )
    history = await receive_json(again, "reconnect")
    mine = [m["id"] for m in history["messages"] if m["direction"] == "in"]
    assert mine == [sync["id"], fresh["id"]]
    await again.close()


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


async def test_protocol_violations_close_only_that_socket_and_store_nothing(app: AppHarness):
    """A frame over 64 KiB or a text frame of invalid UTF-8 closes that socket with the
    websocket close code for it (1009, 1007): never a server error, nothing stored,
    and the next connection works."""
    ws = await connect(app)
    await ws.send_str(json.dumps({"type": "message", "id": "big-frame1", "text": "x" * 70_000}))
    closed = await ws.receive(timeout=TIMEOUT)
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), closed
    assert ws.close_code == 1009
    ws = await connect(app)
    await ws._writer.send_frame(b'{"type":"message","id":"badutf8x1","text":"\xff\xfe"}', 0x1)
    closed = await ws.receive(timeout=TIMEOUT)
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING), closed
    assert ws.close_code == 1007
    await assert_nothing_stored(app, "protocol violations")
    ws = await connect(app)
    await ws.send_str(json.dumps({"type": "message", "id": "after-violations", "text": "hi"}))
    assert await until_ack(ws, "after-violations", "after violations") == []
    await ws.close()


# --- regressions ---------------------------------------------------------------------
# Each of these once failed: a 500 on an undecodable body, a socket killed by nested
# JSON, ids with a trailing newline, a signature check that was not fail-closed, and
# deliveries the database could not hold answered 503 (retried forever by a provider).


class KnownBug(AssertionError):
    """The failure a regression test guards against."""


async def test_compressed_bodies_are_415_whether_or_not_they_decode(app: AppHarness):
    """Signatures cover the bytes on the wire; no provider compresses webhooks."""
    plain = b'{"messages": [{"id": "m1", "from": "u1", "text": "hi"}]}'
    bodies = {
        "not compressed at all": b"this is not compressed at all",
        "valid gzip": gzip.compress(plain),
        "valid deflate": zlib.compress(plain),
    }
    for name, body in bodies.items():
        for encoding in ("gzip", "deflate"):
            headers = {"Content-Encoding": encoding, "X-Signature": sign(SECRET, plain)}
            response = await app.client.post("/webhooks/demo/signed", data=body, headers=headers)
            assert response.status == 415, f"{name} as {encoding}"
            await assert_json_error(response, name)
    await assert_nothing_stored(app, "compressed bodies")


async def test_deeply_nested_frame_gets_an_error_frame(app: AppHarness):
    ws = await connect(app)
    await ws.send_str("[" * 2000)
    message = await ws.receive(timeout=TIMEOUT)
    if message.type != WSMsgType.TEXT:
        raise KnownBug(f"{message.type!r}, close code {ws.close_code}")
    assert json.loads(message.data)["type"] == "error", message.data
    await ws.send_str(json.dumps({"type": "message", "id": "after-nested", "text": "hi"}))
    assert await until_ack(ws, "after-nested", "after nested") == []
    await ws.close()


async def test_non_utf8_signature_header_is_403(app: AppHarness):
    body = b'{"messages": []}'
    request = (
        b"POST /webhooks/demo/signed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"X-Signature: sha256=\xff\xfe\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    answer = await raw_exchange(app, request)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:300]
    if not answer.startswith(b"HTTP/1.1 403 "):
        raise KnownBug(answer[:300])


async def test_ids_with_a_trailing_newline_are_refused(app: AppHarness):
    target = "/webchat/demo/ws?visitor=visitor-abcdefgh%0A"
    try:
        status = await ws_refused(app, target)
    except pytest.fail.Exception:
        status = 101  # the handshake succeeded
    ws = await connect(app)
    await ws.send_str(json.dumps({"type": "message", "id": "trailing-nl-1\n", "text": "hi"}))
    answer = await receive_json(ws, "trailing newline id")
    await ws.close()
    if (status, answer["type"]) != (400, "error"):
        raise KnownBug(f"visitor: {status}, message id: {answer}")
    await assert_nothing_stored(app, "trailing newline ids")


WRONG_FIELD_TYPES = {
    "text is a number": b'{"messages": [{"id": "m1", "from": "u1", "text": 5}]}',
    "text is an object": b'{"messages": [{"id": "m1", "from": "u1", "text": {"a": 1}}]}',
    "name is an object": b'{"messages": [{"id": "m1", "from": "u1", "name": {"a": 1}}]}',
    "name is a list": b'{"messages": [{"id": "m1", "from": "u1", "name": ["Ana"]}]}',
}


async def test_signed_body_with_wrong_field_types_is_400(app: AppHarness):
    failures = []
    for name, body in WRONG_FIELD_TYPES.items():
        response = await post_signed(app, body)
        if response.status != 400:
            failures.append(f"{name}: {response.status} {await response.text()}")
    if failures:
        raise KnownBug(failures)
    await assert_nothing_stored(app, "wrong field types")


UNSTORABLE_STRINGS: dict[str, tuple[bytes, set[str]]] = {
    # body, the databases on which it is answered 503 today
    "lone surrogate in text": (
        b'{"messages": [{"id": "m1", "from": "u1", "text": "\\ud800"}]}',
        {"sqlite", "postgres"},
    ),
    "lone surrogate in sender": (
        b'{"messages": [{"id": "m2", "from": "\\udfff", "text": "hi"}]}',
        {"sqlite", "postgres"},
    ),
    "NUL in text": (
        b'{"messages": [{"id": "m3", "from": "u3", "text": "a\\u0000b"}]}',
        {"postgres"},
    ),
    "id over 255 chars": (
        b'{"messages": [{"id": "' + b"i" * 300 + b'", "from": "u4", "text": "hi"}]}',
        {"postgres"},
    ),
    "sender over 255 chars": (
        b'{"messages": [{"id": "m5", "from": "' + b"u" * 300 + b'", "text": "hi"}]}',
        {"postgres"},
    ),
    "status id is a number": (b'{"statuses": [{"id": 5, "status": "read"}]}', {"postgres"}),
}


async def test_signed_bodies_with_unstorable_strings_are_not_5xx(
    app: AppHarness, request: pytest.FixtureRequest
):
    """A delivery the database cannot hold is the sender's fault: a 4xx (or stored
    whole), never 503 'retry later'. Each is all-or-nothing today already."""
    database = request.node.callspec.params["database_url"]
    known = []
    for name, (body, failing_on) in UNSTORABLE_STRINGS.items():
        before = len(await inbound(app))
        response = await post_signed(app, body)
        after = len(await inbound(app))
        if response.status >= 400:
            assert after == before, f"{name}: {response.status} but stored"
        else:
            assert after <= before + 1, name
        if response.status >= 500:
            assert database in failing_on, f"{name}: a new 5xx on {database}"
            known.append(f"{name}: {response.status} {await response.text()}")
        elif response.status >= 400:
            await assert_json_error(response, name)
    if known:
        raise KnownBug(known)


@pytest.mark.parametrize(
    ("returned", "what"),
    [(None, "None"), ({"id": "m1"}, "a dict"), (["m1"], "a string in the list"), (42, "an int")],
)
async def test_a_plugin_parse_returning_no_list_of_events_is_400_not_500(
    app: AppHarness, monkeypatch: pytest.MonkeyPatch, returned: object, what: str
):
    adapter = app.adapter("demo", "signed")
    monkeypatch.setattr(adapter, "parse", lambda headers, body: returned)
    response = await post_signed(app, b'{"messages": []}')
    assert response.status == 400, f"{what}: {response.status} {await response.text()}"
    await assert_json_error(response, what)
    await assert_nothing_stored(app, what)


async def test_a_plugin_that_cannot_answer_a_stored_delivery_still_gets_a_200(
    app: AppHarness, monkeypatch: pytest.MonkeyPatch
):
    """Stored is stored: an answer the adapter fails to make must not ask for a retry."""
    adapter = app.adapter("demo", "signed")

    def broken_reply(events: object) -> object:
        raise RuntimeError("a plugin's bug")

    monkeypatch.setattr(adapter, "webhook_reply", broken_reply)
    body = b'{"messages": [{"id": "m1", "from": "u1", "text": "fine"}]}'
    response = await post_signed(app, body)
    assert response.status == 200, await response.text()
    assert [r["channel_message_id"] for r in await inbound(app)] == ["m1"]
