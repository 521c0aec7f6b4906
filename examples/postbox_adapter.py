"""Postbox: a complete example provider for Leadline, with its conformance kit.

Postbox is an imaginary chat API, shaped like real ones. This one file is the whole
adapter: drop it into a plugins folder (`LEADLINE_PLUGINS_DIR`) and `postbox` is a
provider brokers.toml can enable; `examples/postbox-package/` installs the same file as
a distribution. It uses only the adapter contract (`leadline.adapters.base`), the
payload helpers (`leadline.adapters.payload`) and `ProviderConfig`: never the runtime
or storage. docs/adapters.md walks through it.

The Postbox wire protocol:

- Webhooks are JSON, signed in `Postbox-Signature: t=<unix seconds>,v1=<hex>`, where
  v1 = HMAC-SHA256(signing secret, "<t>.<raw body>"). A signature more than 5 minutes
  away from our clock is a replay. A delivery is a batch for one Postbox account:

      {"account": "acct_1001", "events": [
        {"type": "message", "id": "msg_1", "from": {"id": "usr_42", "name": "Ana"},
         "text": "Hi", "sent_at": 1767225600, "reply_to": "out_7",
         "attachments": [{"type": "image", "url": "https://files.postbox.example/1.jpg"}]},
        {"type": "status", "message_id": "out_7", "status": "read", "at": 1767225601}]}

  `status` is sent, delivered, read or failed (with `error`); other event types exist
  (typing, ...) and are skipped.
- Sends: `POST {api_base}/v1/messages` with `Authorization: Bearer <api token>` and
  {"account", "to", "text", "reply_to", "attachments", "client_ref"}, answered 201
  {"id": "out_..."}. Postbox keeps one message per `client_ref`, so a retried send is
  never delivered twice. A throttled account gets 429 with `Retry-After` (seconds), a
  bad token 401, a send that can never go 4xx {"error": {"code", "message"}}.
- `GET {api_base}/v1/accounts/{account}` answers 200 to the account's own token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web
from pydantic import Field, SecretStr, field_validator

from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    AdapterError,
    Attachment,
    Capabilities,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    OutboundMessage,
    PauseScope,
    PermanentSendError,
    RateLimit,
    RetryableSendError,
    SendError,
    SendResult,
    SignatureInvalid,
    SignatureMissing,
    StatusUpdate,
)
from leadline.adapters.payload import decode_json, finite, ident, obj, put, text, utc_from_unix
from leadline.config.providers import ProviderConfig

if TYPE_CHECKING:
    from leadline.adapters.conformance import Kit, Sample

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Postbox-Signature"
REPLAY_WINDOW = 300  # seconds a signature is good for, either side of our clock
DEFAULT_API = "https://api.postbox.example"
SEND_TIMEOUT = 30.0  # seconds: well below the outbox lease (LEADLINE_SEND_LEASE_SECONDS)
TOKEN_PAUSE = 300.0  # a refused token does not fix itself soon: hold the channel back
MEDIA_KINDS = frozenset({"image", "video", "audio", "document"})
STATUSES = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
}


class PostboxConfig(ProviderConfig):
    """`[brokers.X.providers.postbox]`; write the secrets as `${NAME}` there."""

    account_id: str = Field(pattern=r"^acct_[A-Za-z0-9]{1,64}$")
    api_token: SecretStr
    signing_secret: SecretStr

    @field_validator("api_token", "signing_secret")
    @classmethod
    def _not_empty(cls, value: SecretStr) -> SecretStr:
        # Fail closed: an empty signing secret would make every forger's HMAC easy.
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The hex HMAC Postbox computes over "<timestamp>.<raw body>"."""
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, at: float) -> str:
    """The `Postbox-Signature` header Postbox sends for `body` at Unix time `at`."""
    timestamp = int(at)
    return f"t={timestamp},v1={signature(secret, body, timestamp)}"


class PostboxAdapter(Adapter):
    name = "postbox"
    config_model = PostboxConfig
    capabilities = Capabilities(
        media_kinds=MEDIA_KINDS,
        reply_to=True,
        webhooks=True,
        rate_limit=RateLimit(20, 1.0),  # per account, Postbox's documented limit
        per_chat_rate_limit=RateLimit(1, 1.0),
    )

    def __init__(self, config: ProviderConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, PostboxConfig)
        self.settings = config
        self._session: aiohttp.ClientSession | None = None
        self._api = str(config.api_base or DEFAULT_API).rstrip("/")

    @property
    def account_id(self) -> str:
        """Postbox sends every account of one app to one URL: events carry the account."""
        return self.settings.account_id

    # --- lifecycle -------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise AdapterError("postbox adapter is not started")
        return self._session

    async def start(self) -> None:
        await self.close()
        token = self.settings.api_token.get_secret_value()
        # The token rides in a header of the pooled session: never in a URL or a log line.
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT),
        )
        await self._check_account()
        log.info("broker %s: postbox account %s ready", self.context.broker_id, self.account_id)

    async def _check_account(self) -> None:
        """A refused token or an unknown account takes this channel down, with why."""
        url = f"{self._api}/v1/accounts/{self.account_id}"
        try:
            async with self.session.get(url) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdapterError(f"Postbox unreachable: {exc.__class__.__name__}") from None
        if status == 401:
            raise AdapterError("Postbox refused the API token")
        if status != 200:
            raise AdapterError(f"Postbox answered {status} for account {self.account_id}")

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # --- inbound -----------------------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        header = headers.get(SIGNATURE_HEADER)
        if not header:
            raise SignatureMissing(f"{SIGNATURE_HEADER} header missing")
        timestamp, given = _signature_parts(header)
        expected = signature(self.settings.signing_secret.get_secret_value(), body, timestamp)
        # Constant time; header bytes that are not UTF-8 arrive as surrogate escapes.
        if not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape")):
            raise SignatureInvalid(f"{SIGNATURE_HEADER} does not match the body")
        # Checked after the HMAC: an authentic but stale request means a replay, or a clock
        # that is off, and the reason says so.
        if abs(time.time() - timestamp) > REPLAY_WINDOW:
            raise SignatureInvalid(f"{SIGNATURE_HEADER} is over {REPLAY_WINDOW} s off our clock")

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[InboundEvent]:
        delivery = obj(decode_json(body)) or {}
        items, account = delivery.get("events"), ident(delivery.get("account"))
        if not isinstance(items, list) or account is None:
            raise MalformedPayload("not a Postbox delivery: no account or no events list")
        events = [e for e in (_event(item, account) for item in items) if e is not None]
        if len(events) < len(items):
            log.info(
                "broker %s: postbox delivery: %d events skipped (other types, or no usable id)",
                self.context.broker_id,
                len(items) - len(events),
            )
        return events

    # --- outbound ----------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        body = _send_body(self.account_id, message)
        try:
            async with self.session.post(f"{self._api}/v1/messages", json=body) as response:
                status, retry_after = response.status, response.headers.get("Retry-After")
                answer = await _json(response)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # Never str(exc): aiohttp's texts quote URLs, and a URL might hold anything.
            raise RetryableSendError(f"Postbox unreachable: {exc.__class__.__name__}") from None
        if status not in (200, 201):
            raise _send_error(status, answer, retry_after)
        message_id = ident(answer.get("id"))
        if message_id is None:
            # It may have gone: a retry is safe, Postbox keeps one message per client_ref.
            raise RetryableSendError("Postbox accepted the send but gave no message id")
        return SendResult(message_id)


# --- parsing ---------------------------------------------------------------------------------


def _signature_parts(header: str) -> tuple[int, str]:
    """`t=<seconds>,v1=<hex>` as (seconds, hex); SignatureInvalid for any other shape."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    timestamp, given = fields.get("t", ""), fields.get("v1", "")
    # ASCII digits only, and few: int() refuses other digits and very long numbers.
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12 and given):
        raise SignatureInvalid(f"{SIGNATURE_HEADER} is not t=<seconds>,v1=<signature>")
    return int(timestamp), given


def _event(item: Any, account: str) -> InboundEvent | None:
    """One event, or None for a type we do not know (Postbox adds types) or an unusable
    one: one bad item must not make Postbox retry the whole batch forever."""
    event = obj(item)
    if event is None:
        return None
    kind = event.get("type")
    if kind == "message":
        return _message(event, account)
    if kind == "status":
        return _status(event, account)
    return None


def _message(event: Mapping[str, Any], account: str) -> InboundMessage | None:
    sender = obj(event.get("from")) or {}
    message_id, user = ident(event.get("id")), ident(sender.get("id"))
    if message_id is None or user is None:
        return None
    return InboundMessage(
        channel_message_id=message_id,
        channel_user_id=user,
        text=text(event.get("text")),
        user_display_name=text(sender.get("name")),
        attachments=_attachments(event.get("attachments")),
        sent_at=_time(event.get("sent_at")),
        reply_to=ident(event.get("reply_to")),
        account=account,
    )


def _attachments(value: Any) -> tuple[Attachment, ...]:
    items = value if isinstance(value, list) else []
    found = (obj(item) for item in items)
    return tuple(
        Attachment(kind=text(a.get("type")) or "document", url=text(a.get("url")))
        for a in found
        if a is not None and text(a.get("url"))
    )


def _status(event: Mapping[str, Any], account: str) -> StatusUpdate | None:
    message_id = ident(event.get("message_id"))
    status = STATUSES.get(text(event.get("status")) or "")
    if message_id is None or status is None:
        return None
    error = text(event.get("error")) if status == MessageStatus.FAILED else None
    return StatusUpdate(message_id, status, at=_time(event.get("at")), error=error, account=account)


def _time(value: Any) -> datetime | None:
    seconds = finite(value)
    return utc_from_unix(seconds) if seconds is not None else None


# --- sending ---------------------------------------------------------------------------------


def _send_body(account: str, message: OutboundMessage) -> dict[str, Any]:
    media = [
        {"type": a.kind, "url": a.url}
        for a in message.attachments
        if a.kind in MEDIA_KINDS and a.url
    ]
    if not message.text and not media:
        raise PermanentSendError("nothing to send: no text and no media by URL", code="empty")
    # The runtime's ref is the same on every retry of this message: Postbox deduplicates by it.
    body: dict[str, Any] = {
        "account": account,
        "to": message.channel_user_id,
        "client_ref": message.ref,
    }
    put(body, "text", message.text)
    put(body, "reply_to", message.reply_to)
    put(body, "attachments", media or None)
    return body


async def _json(response: aiohttp.ClientResponse) -> Mapping[str, Any]:
    """The answer's JSON object, or {} (an HTML error page from a proxy, say)."""
    try:
        return obj(await response.json(content_type=None)) or {}
    except (ValueError, aiohttp.ClientPayloadError):
        return {}


def _send_error(status: int, answer: Mapping[str, Any], retry_after: str | None) -> SendError:
    """A refused send as the dispatcher needs it: retry (and how long to wait), or give up."""
    if status == 429:
        # Postbox throttles the account, not one chat: every chat of this channel waits.
        return RetryableSendError(
            "Postbox throttled the account",
            code="429",
            retry_after=_seconds(retry_after),
            scope=PauseScope.CHANNEL,
        )
    if status == 401:
        return RetryableSendError(
            "Postbox refused the API token",
            code="401",
            retry_after=TOKEN_PAUSE,
            scope=PauseScope.CHANNEL,
        )
    if status >= 500:
        return RetryableSendError(f"Postbox answered {status}", code=str(status))
    error = obj(answer.get("error")) or {}
    code = text(error.get("code")) or str(status)
    return PermanentSendError(f"{code}: {text(error.get('message')) or 'refused'}", code=code)


def _seconds(value: str | None) -> float | None:
    """`Retry-After` in seconds, as Postbox sends it; None for anything else (an HTTP date,
    which Postbox never sends): the runtime's own backoff then applies."""
    value = (value or "").strip()
    return float(value) if value.isascii() and value.isdigit() and len(value) <= 6 else None


# --- the conformance kit and its fake Postbox API --------------------------------------------
# Test doubles: nothing below runs under `leadline run`. `leadline adapters check postbox`
# and tests/test_example_adapter.py run the suite with them.

KIT_ACCOUNT = "acct_conformance1"
KIT_TOKEN = "pbx_conformance_token_NOT_REAL_1"  # noqa: S105 (the fake's, not a real one)
KIT_SECRET = "whsec_conformance_NOT_REAL_2"  # noqa: S105
KIT_USER = "usr_42"
THROTTLE_SECONDS = 2  # the fake's Retry-After


class FakePostbox:
    """The Postbox API, faked on loopback for tests: one account, sends kept in `sent`.
    `throttle_next` and `reject_next` make the next send answer 429 or 401."""

    def __init__(self, account: str = KIT_ACCOUNT, token: str = KIT_TOKEN) -> None:
        self.account = account
        self.token = token
        self.sent: list[dict[str, Any]] = []  # accepted send bodies, each with its "id"
        self._trouble: list[int] = []  # HTTP statuses the next sends answer

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/accounts/{account}", self._account)
        app.router.add_post("/v1/messages", self._send)
        return app

    def throttle_next(self) -> None:
        self._trouble.append(429)

    def reject_next(self) -> None:
        self._trouble.append(401)

    def close(self) -> None:
        """Nothing to release (tests.fakes.serving.running_fake calls it)."""

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, f"Bearer {self.token}".encode())

    async def _account(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _problem(401, "unauthorized", "invalid API token")
        if request.match_info["account"] != self.account:
            return _problem(404, "not_found", "no such account")
        return web.json_response({"id": self.account})

    async def _send(self, request: web.Request) -> web.Response:
        trouble = self._trouble.pop(0) if self._trouble else None
        if trouble == 401 or not self._authorized(request):
            return _problem(401, "unauthorized", "invalid API token")
        if trouble == 429:
            headers = {"Retry-After": str(THROTTLE_SECONDS)}
            return _problem(429, "rate_limited", "too many messages", headers)
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "invalid_json", "the body is not JSON")
        if not isinstance(body, dict) or body.get("account") != self.account or not body.get("to"):
            return _problem(422, "invalid_request", "account and to are required")
        for earlier in self.sent:  # one message per client_ref
            if earlier.get("client_ref") == body.get("client_ref"):
                return web.json_response({"id": earlier["id"]})
        self.sent.append({**body, "id": f"out_{len(self.sent) + 1}"})
        return web.json_response({"id": self.sent[-1]["id"]}, status=201)


def _problem(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.json_response(body, status=status, headers=headers)


def delivery(*events: Mapping[str, Any], account: str = KIT_ACCOUNT) -> bytes:
    """A webhook body as Postbox sends it."""
    return json.dumps({"account": account, "events": list(events)}).encode()


def text_event(message_id: str, words: str, user: str = KIT_USER) -> dict[str, Any]:
    sender = {"id": user, "name": "Ana"}
    return {
        "type": "message",
        "id": message_id,
        "from": sender,
        "text": words,
        "sent_at": 1767225600,
    }


def status_event(message_id: str, status: str, at: int = 1767225600) -> dict[str, Any]:
    return {"type": "status", "message_id": message_id, "status": status, "at": at}


def conformance_kit() -> Kit:
    """What the conformance suite needs to check this adapter (docs/adapters.md)."""
    from leadline.adapters.conformance import Kit, Sample

    photo = {
        **text_event("msg_2", "This one?"),
        "reply_to": "out_1",
        "attachments": [{"type": "image", "url": "https://files.postbox.example/p/1.jpg"}],
    }
    typing = {"type": "typing", "from": {"id": KIT_USER}}  # a type we skip

    def one(name: str, *events: Mapping[str, Any], messages: int = 0, statuses: int = 0) -> Sample:
        return Sample(name, delivery(*events), messages=messages, statuses=statuses)

    samples: Sequence[Sample] = [
        one("a text", text_event("msg_1", "Is the flat on Elm Street free?"), messages=1),
        one(
            "a batch",
            *(text_event("msg_1", "Hi"), photo, typing),
            *(status_event("out_1", "delivered"), status_event("out_1", "read")),
            messages=2,
            statuses=2,
        ),
    ]
    lifecycle = [("sent", 0), ("delivered", 3), ("read", 40)]
    return Kit(
        adapter=PostboxAdapter,
        config={"account_id": KIT_ACCOUNT, "api_token": KIT_TOKEN, "signing_secret": KIT_SECRET},
        secrets=[KIT_TOKEN, KIT_SECRET],
        samples=samples,
        status_samples=[
            one(status, status_event("out_1", status, 1767225600 + delay), statuses=1)
            for status, delay in lifecycle
        ],
        recipient=KIT_USER,
        sign=lambda body, at: {SIGNATURE_HEADER: sign(KIT_SECRET, body, at)},
        fake_api=FakePostbox,
        replay_window=REPLAY_WINDOW,
        throttle_delay=THROTTLE_SECONDS,
    )
