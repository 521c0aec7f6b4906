"""A fake of the WhatsApp Cloud API part of Meta's Graph API, served on loopback.

It speaks the wire format of PROVIDERS.md §2-§3 and the `whatsapp_*` fixtures:

- `POST /<version>/<PHONE_NUMBER_ID>/messages` sends a message (answered
  `{messaging_product, contacts[{input, wa_id}], messages[{id}]}`) or, with
  `"status":"read"`, marks one as read (optionally with a typing indicator), answered
  `{"success": true}`;
- `GET /<version>/<MEDIA_ID>` answers `{messaging_product, url, mime_type, sha256,
  file_size, id}` with a `url` on the fake itself that expires (5 minutes by default);
- `GET /<version>/<PHONE_NUMBER_ID>` answers the number's details (`id`,
  `display_phone_number`, `verified_name`, `quality_rating`, …), as pywa's
  `get_business_phone_number` asks at start;
- a send may name its recipient by `to` (a phone number or wa_id) or, for a user who
  hides their number behind a username, by `recipient` (the business-scoped user id);
- `GET <url>` with the Bearer token answers the bytes, or 404 once the url expired.

Every call needs `Authorization: Bearer <the number's token>`; errors use the Graph
envelope `{"error":{message, type, code, error_data?{messaging_product, details},
fbtrace_id}}`. Usage:

    fake = FakeGraph()
    number = fake.add_number("106540352242922", "EAAG-example-token")
    number.fail_next("131056", to="+16505551234")
    async with running_fake(fake) as base_url:  # tests/fakes/serving.py
        ...  # POST f"{base_url}/v23.0/106540352242922/messages"

HTTP statuses: the fixtures carry none and PROVIDERS.md calls them unpublished. The fake
uses the "HTTP Status Code" column of Meta's error-code table as mirrored by third
parties: 401 for 190, 429 for 4, 500 for 131000, 400 for the rest (`status=` overrides).
What is deliberately simpler than Graph: bodies must be JSON (no form encoding), only
the message types text/image/video/audio/document/sticker/template are known, no rate is
enforced unless a fault is injected, no status webhook is ever sent, and media uploads
(`POST /<PHONE_NUMBER_ID>/media`) are not served.

The same fake also serves the Messenger Platform and Instagram messaging Send APIs:
`add_page` and `add_instagram_account` register the Pages and accounts of
tests/fakes/graph_pages.py, whose module docstring tells their routes. A call to
`/<ID>/messages` or `GET /<ID>` goes to a Page or account when the id is one of
theirs, `me`, or an id the fake does not hold asked with a Page's token; else to
WhatsApp as above. `GET /<version>/app` answers the app (`app_id`) to any known token.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.serving import drop_connection

TEXT_LIMIT = 4096  # characters of text.body
CAPTION_LIMIT = 1024
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
MESSAGE_TYPES = MEDIA_TYPES | {"text", "template"}
VERSION_PATTERN = re.compile(r"v(\d+)\.\d+")
# A business-scoped user id: a country code, a dot, up to 128 letters and digits
# ("US.13491208655302741918"; a parent BSUID has ".ENT." in the middle).
BSUID_PATTERN = re.compile(r"[A-Z]{2}\.(ENT\.)?[A-Za-z0-9]{1,128}")
DOWNLOAD_PATH = "/whatsapp_business/attachments/"  # as on lookaside.fbsbx.com
# error_subcode is "Deprecated. Not included in v16.0+ responses" (Meta's error-code page).
SUBCODE_LAST_VERSION = 15


@dataclass(frozen=True)
class ErrorSpec:
    """One documented Graph error: HTTP status, code, title (in `message`) and details."""

    status: int
    code: int
    title: str
    details: str | None  # None: no error_data at all (as in whatsapp_token_expired_error)
    subcode: int | None = None  # sent only before v16.0
    message: str | None = None  # the whole `message`, when it is not "(#code) title"


# The fault kinds of `fail_next`, keyed as the tests name them.
ERRORS: dict[str, ErrorSpec] = {
    # whatsapp_rate_limit_error.json (Verbatim)
    "130429": ErrorSpec(
        400, 130429, "Rate limit hit", "Cloud API message throughput has been reached.", 2494055
    ),
    # whatsapp_pair_rate_limit_error.json
    "131056": ErrorSpec(
        400,
        131056,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Too many messages sent from the sender phone number to the same recipient phone "
        "number in a short period of time.",
    ),
    "4": ErrorSpec(
        429, 4, "Application request limit reached", "The app has reached its API call rate limit."
    ),
    "80007": ErrorSpec(
        400,
        80007,
        "Rate limit issues",
        "The WhatsApp Business Account has reached its rate limit.",
    ),
    # details as in whatsapp_outside_24h_window_error.json (there a failed status webhook)
    "131047": ErrorSpec(
        400,
        131047,
        "Re-engagement message",
        "More than 24 hours have passed since the recipient last replied to the sender number.",
    ),
    "131026": ErrorSpec(
        400,
        131026,
        "Message Undeliverable",
        "Unable to deliver message. Reasons can include: the recipient phone number is not a "
        "WhatsApp phone number, or the recipient has not accepted the new Terms of Service.",
    ),
    "131050": ErrorSpec(
        400,
        131050,
        "Unable to deliver the message",
        "This recipient has chosen to stop receiving marketing messages on WhatsApp from "
        "your business.",
    ),
    # whatsapp_token_expired_error.json: no error_data
    "190": ErrorSpec(
        401,
        190,
        "Access token has expired",
        None,
        message="Error validating access token: Session has expired.",
    ),
    "500": ErrorSpec(
        500, 131000, "Something went wrong", "Message failed to send because of an unknown error."
    ),
}
INVALID_TOKEN = ErrorSpec(
    401,
    190,
    "Invalid OAuth access token",
    None,
    message="Invalid OAuth access token - Cannot parse access token",
)
FAULT_KINDS = frozenset(ERRORS) | {"drop", "slow"}
MEDIA_FAULT_KINDS = frozenset({"190", "500", "drop", "slow"})


class GraphError(Exception):
    """An error answer: the Graph envelope with `spec.status` as the HTTP status."""

    def __init__(self, spec: ErrorSpec, details: str | None = None, status: int | None = None):
        super().__init__(spec.title)
        self.spec = spec
        self.details = details if details is not None else spec.details
        self.status = status or spec.status


def _missing(name: str) -> GraphError:
    spec = ErrorSpec(400, 131008, "Required parameter is missing", None)
    return GraphError(spec, f"The parameter {name} is required.")


def _invalid(details: str) -> GraphError:
    return GraphError(ErrorSpec(400, 131009, "Parameter value is not valid", None), details)


def _no_object(object_id: str, verb: str) -> GraphError:
    # Graph's answer for an id that does not exist or the token may not see.
    message = (
        f"Unsupported {verb} request. Object with ID '{object_id}' does not exist, cannot be "
        "loaded due to missing permissions, or does not support this operation. Please read "
        "the Graph API documentation at https://developers.facebook.com/docs/graph-api"
    )
    return GraphError(ErrorSpec(400, 100, "", None, subcode=33, message=f"(#100) {message}"))


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as tests may see it: never the token, only whether one came."""

    http_method: str
    path: str
    phone_number_id: str | None  # the number addressed by /messages; None elsewhere
    body: Any  # the parsed JSON body; None without one
    had_token: bool
    page_id: str | None = None  # the Page or Instagram account addressed (graph_pages.py)


@dataclass(frozen=True)
class SentMessage:
    """A send the fake accepted."""

    phone_number_id: str
    to: str
    wa_id: str
    type: str
    body: dict[str, Any]  # the request body as sent
    wamid: str
    at: float = field(default_factory=time.monotonic)  # when the fake accepted it

    @property
    def text(self) -> str | None:
        text = self.body.get("text")
        return text.get("body") if isinstance(text, dict) else None


@dataclass(frozen=True)
class MarkRead:
    """An accepted `"status":"read"` call."""

    phone_number_id: str
    message_id: str
    typing_indicator: bool
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    kind: str
    remaining: int
    to: str | None = None  # wa_id (digits only) of the only recipient it applies to
    delay: float = 0.0
    status: int | None = None
    details: str | None = None


@dataclass(frozen=True)
class StoredMedia:
    media_id: str
    content: bytes
    mime_type: str

    @property
    def sha256(self) -> str:
        # The fixtures show it base64-encoded ("SfInY0...GUI="), not hex.
        return base64.b64encode(hashlib.sha256(self.content).digest()).decode()


@dataclass
class IssuedUrl:
    media_id: str
    expires_at: float  # time.monotonic()


def wa_id_of(to: str) -> str:
    """The WhatsApp id for a `to`: its digits ("+1 650-555-1234" -> "16505551234")."""
    return re.sub(r"\D", "", to)


def recipient_key(to: str) -> str:
    """How the fake tells recipients apart: a BSUID as is, a phone number by its digits."""
    return to if BSUID_PATTERN.fullmatch(to) else wa_id_of(to)


def _take(faults: list[Fault], wa_id: str | None) -> Fault | None:
    for fault in faults:
        if fault.to is not None and fault.to != wa_id:
            continue
        fault.remaining -= 1
        if fault.remaining <= 0:
            faults.remove(fault)
        return fault
    return None


class FakeNumber:
    """One business phone number: its token, what it sent, and its injected faults."""

    def __init__(self, phone_number_id: str, access_token: str) -> None:
        self.phone_number_id = phone_number_id
        self.access_token = access_token
        self.sent: list[SentMessage] = []
        self.read: list[MarkRead] = []
        self.faults: list[Fault] = []
        self.token_expired = False  # every call answers 190 "Session has expired"
        self.closed_windows: set[str] = set()  # wa_ids: free-form sends fail with 131047
        self.undeliverable: set[str] = set()  # wa_ids: every send fails with 131026
        self.latency = 0.0  # seconds every answer takes
        self.display_phone_number = "+1 555-010-0000"
        self.verified_name = "Example Realty"
        # Runs after a send is accepted and before its answer goes back: a test may
        # deliver the message's status webhook from here, as Meta sometimes does.
        self.before_answer: Callable[[SentMessage], Awaitable[None]] | None = None
        self._serials = itertools.count(1)

    def fail_next(
        self,
        kind: str,
        count: int = 1,
        *,
        to: str | None = None,
        delay: float = 1.0,
        status: int | None = None,
        details: str | None = None,
    ) -> None:
        """Make the next `count` `/messages` calls of this number fail as `kind`.

        Kinds: the error codes "130429", "131056", "4", "80007", "131047", "131026",
        "131050", "190", "500" (code 131000), each with its Graph envelope; "drop" (the
        connection is closed without an answer); "slow" (the normal answer after `delay`
        seconds). With `to`, only sends to that recipient (compared by digits; a
        mark-as-read has no recipient and is skipped). `status` and `details` override
        the HTTP status and `error_data.details`.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        wa_id = recipient_key(to) if to is not None else None
        self.faults.append(Fault(kind, count, wa_id, delay, status, details))

    def expire_token(self) -> None:
        """From now on every call with this number's token answers 190 (session expired)."""
        self.token_expired = True

    def _wamid(self, wa_id: str) -> str:
        # Shaped like Meta's: base64 of a small binary record holding the recipient.
        serial = f"{secrets.token_hex(8).upper()}{next(self._serials):04X}"
        raw = b"\x18\x0b" + wa_id.encode() + b"\x15\x02\x00\x11\x18\x14" + serial.encode()
        return "wamid." + base64.b64encode(raw + b"\x00").decode()


class FakeGraph:
    """The fake Graph API: numbers by phone_number_id, media, a request log, the app."""

    def __init__(self, *, media_url_ttl: float = 300.0) -> None:
        self.numbers: dict[str, FakeNumber] = {}
        self.media: dict[str, StoredMedia] = {}
        self.requests: list[RequestRecord] = []
        self.media_url_ttl = media_url_ttl
        self.media_faults: list[Fault] = []
        self._download_faults: list[Fault] = []
        self._urls: dict[str, IssuedUrl] = {}  # by the url's `hash`
        self.born_expired = 0  # the next this many media urls expire at once
        self.app_id = "1517776481860111"  # the app every token belongs to (`GET /app`)
        self.pages: dict[str, graph_pages.FakePage] = {}  # Pages and Instagram accounts
        self._page_routes = graph_pages.PageRoutes(self)

    # --- test API ----------------------------------------------------------------

    def add_number(self, phone_number_id: str, access_token: str) -> FakeNumber:
        number = FakeNumber(phone_number_id, access_token)
        self.numbers[phone_number_id] = number
        return number

    def add_page(
        self,
        page_id: str,
        access_token: str,
        *,
        name: str = "Example Realty",
        instagram_account_id: str | None = None,
    ) -> graph_pages.FakePage:
        """A Facebook Page (Messenger), maybe linked to an Instagram account."""
        page = graph_pages.FakePage(
            page_id, access_token, "messenger", name=name, instagram_account_id=instagram_account_id
        )
        return self._add_page(page)

    def add_instagram_account(
        self, account_id: str, access_token: str, *, username: str = "example.realty"
    ) -> graph_pages.FakePage:
        """An Instagram professional account: Instagram Login on graph.instagram.com, or the
        account a Page links to (see graph_pages.py on `instagram_recipients`)."""
        account = graph_pages.FakePage(
            account_id,
            access_token,
            "instagram",
            username=username,
            instagram_account_id=account_id,
        )
        return self._add_page(account)

    def _add_page(self, page: graph_pages.FakePage) -> graph_pages.FakePage:
        if page.page_id in self.pages or page.page_id in self.numbers or page.page_id == "me":
            raise ValueError(f"id {page.page_id!r} is already taken in this fake")
        self.pages[page.page_id] = page
        return page

    def add_media(self, media_id: str, content: bytes, mime_type: str) -> None:
        """Register media any number's token may fetch (as a webhook's `image.id`)."""
        self.media[media_id] = StoredMedia(media_id, content, mime_type)

    def expire_media_urls(self) -> None:
        """Every media url handed out so far now answers 404, as after its 5 minutes."""
        now = time.monotonic()
        for issued in self._urls.values():
            issued.expires_at = min(issued.expires_at, now)

    def fail_next_media(
        self, kind: str, count: int = 1, *, download: bool = False, delay: float = 1.0
    ) -> None:
        """Make the next `count` `GET /<MEDIA_ID>` calls (or downloads) fail as `kind`:
        "190", "500", "drop" or "slow"."""
        if kind not in MEDIA_FAULT_KINDS:
            raise ValueError(f"unknown media fault {kind!r}; expected {sorted(MEDIA_FAULT_KINDS)}")
        faults = self._download_faults if download else self.media_faults
        faults.append(Fault(kind, count, None, delay))

    def sent(self) -> list[SentMessage]:
        """Every accepted send of every number, in order."""
        return sorted((m for n in self.numbers.values() for m in n.sent), key=lambda m: m.at)

    def app(self) -> web.Application:
        app = web.Application()
        pages = self._page_routes
        app.router.add_post("/{version}/{phone_number_id}/messages", self._handle_messages)
        app.router.add_get("/{version}/{object_id}/subscribed_apps", pages.subscribed_apps)
        app.router.add_post("/{version}/{object_id}/subscribed_apps", pages.subscribed_apps)
        app.router.add_get(DOWNLOAD_PATH, self._handle_download)
        app.router.add_get("/{version}/app", pages.app_details)  # before /{media_id}
        app.router.add_get("/{version}/{media_id}", self._handle_media)
        return app

    def close(self) -> None:
        """Nothing waits on the fake; kept for `running_fake`'s shape."""

    # --- HTTP ----------------------------------------------------------------------

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        number_id = request.match_info["phone_number_id"]
        if self._page_routes.addresses(number_id, request):
            return await self._page_routes.messages(request)
        token = _bearer(request)
        body: Any = None
        bad_body: GraphError | None = None
        try:
            body = await _read_json(request)
        except GraphError as exc:
            bad_body = exc
        self.requests.append(
            RequestRecord(request.method, request.path, number_id, body, token is not None)
        )
        version = _version(request)
        try:
            number = self._authorize_number(number_id, token)
            if bad_body is not None:
                raise bad_body
            if number.latency:
                await asyncio.sleep(number.latency)
            to = (body.get("to") or body.get("recipient")) if isinstance(body, dict) else None
            wa_id = recipient_key(to) if isinstance(to, str) and "status" not in body else None
            fault = _take(number.faults, wa_id)
            if fault is not None:
                await _apply_fault(request, fault)
            answer = _messages(number, body)
            if number.before_answer is not None and "status" not in body:
                await number.before_answer(number.sent[-1])
            return web.json_response(answer)
        except GraphError as exc:
            return _error(exc, version)

    async def _handle_media(self, request: web.Request) -> web.StreamResponse:
        media_id = request.match_info["media_id"]
        if self._page_routes.addresses(media_id, request):
            return await self._page_routes.details(request, media_id)
        token = _bearer(request)
        self.requests.append(
            RequestRecord(request.method, request.path, None, None, token is not None)
        )
        version = _version(request)
        try:
            if media_id in self.numbers:
                return web.json_response(_number_details(self._authorize_number(media_id, token)))
            self._authorize_any(token)
            fault = _take(self.media_faults, None)
            if fault is not None:
                await _apply_fault(request, fault)
            stored = self.media.get(media_id)
            if stored is None:
                raise _no_object(media_id, "get")
        except GraphError as exc:
            return _error(exc, version)
        url_hash = secrets.token_urlsafe(16)
        ttl = self.media_url_ttl
        if self.born_expired > 0:  # as if the download came more than 5 minutes later
            self.born_expired, ttl = self.born_expired - 1, 0.0
        self._urls[url_hash] = IssuedUrl(media_id, time.monotonic() + ttl)
        expiry = int(time.time() + self.media_url_ttl)
        query = f"?mid={media_id}&ext={expiry}&hash={url_hash}"
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "url": f"{request.url.origin()}{DOWNLOAD_PATH}{query}",
                "mime_type": stored.mime_type,
                "sha256": stored.sha256,
                "file_size": str(len(stored.content)),  # a string, as in the fixture
                "id": stored.media_id,
            }
        )

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        # The path only: the query's hash is what makes the url usable.
        self.requests.append(
            RequestRecord(request.method, request.path, None, None, token is not None)
        )
        try:
            self._authorize_any(token)
            fault = _take(self._download_faults, None)
            if fault is not None:
                await _apply_fault(request, fault)
        except GraphError as exc:
            return _error(exc, None)
        issued = self._urls.get(request.query.get("hash", ""))
        if (
            issued is None
            or issued.media_id != request.query.get("mid")
            or time.monotonic() >= issued.expires_at
            or issued.media_id not in self.media
        ):
            return web.Response(status=404, text="Not Found")
        stored = self.media[issued.media_id]
        return web.Response(body=stored.content, content_type=stored.mime_type)

    # --- authorization ---------------------------------------------------------------

    def _authorize_number(self, number_id: str, token: str | None) -> FakeNumber:
        number = self.numbers.get(number_id)
        if number is not None and token == number.access_token:
            if number.token_expired:
                raise GraphError(ERRORS["190"])
            return number
        if number is None and any(token == n.access_token for n in self.numbers.values()):
            raise _no_object(number_id, "post")
        raise GraphError(INVALID_TOKEN)

    def _authorize_any(self, token: str | None) -> FakeNumber:
        for number in self.numbers.values():
            if token == number.access_token:
                if number.token_expired:
                    raise GraphError(ERRORS["190"])
                return number
        raise GraphError(INVALID_TOKEN)


# --- the /messages endpoint ------------------------------------------------------------


def _messages(number: FakeNumber, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("The request body must be a JSON object.")
    product = body.get("messaging_product")
    if product is None:
        raise _missing("messaging_product")
    if product != "whatsapp":
        raise _invalid("Param messaging_product must be 'whatsapp'.")
    if "status" in body:
        return _mark_read(number, body)
    return _send(number, body)


def _mark_read(number: FakeNumber, body: dict[str, Any]) -> dict[str, Any]:
    if body["status"] != "read":
        raise _invalid("Param status must be 'read'.")
    message_id = body.get("message_id")
    if message_id is None:
        raise _missing("message_id")
    if not isinstance(message_id, str) or not message_id.startswith("wamid."):
        raise _invalid("Param message_id must be a valid WhatsApp message id.")
    typing = body.get("typing_indicator")
    if typing is not None and (not isinstance(typing, dict) or typing.get("type") != "text"):
        raise _invalid("Param typing_indicator['type'] must be 'text'.")
    number.read.append(MarkRead(number.phone_number_id, message_id, typing is not None))
    return {"success": True}


def _number_details(number: FakeNumber) -> dict[str, Any]:
    return {
        "id": number.phone_number_id,
        "display_phone_number": number.display_phone_number,
        "verified_name": number.verified_name,
        "quality_rating": "GREEN",
        "code_verification_status": "VERIFIED",
        "platform_type": "CLOUD_API",
        "throughput": {"level": "STANDARD"},
    }


def _recipient(body: dict[str, Any]) -> str:
    """Who a send is for: `to` (a phone number), or `recipient` (a BSUID), never both."""
    to, bsuid = body.get("to"), body.get("recipient")
    if to not in (None, "") and bsuid not in (None, ""):
        raise _invalid("Provide either 'to' or 'recipient', not both.")
    if bsuid not in (None, ""):
        if not isinstance(bsuid, str) or not BSUID_PATTERN.fullmatch(bsuid):
            raise _invalid("Param recipient must be a business-scoped user ID.")
        return bsuid
    if to is None or to == "":
        raise _missing("to")
    if not isinstance(to, str) or not wa_id_of(to):
        raise _invalid("Param to must be a phone number.")
    return to


def _send(number: FakeNumber, body: dict[str, Any]) -> dict[str, Any]:
    to = _recipient(body)
    if body.get("recipient_type", "individual") not in ("individual", "group"):
        raise _invalid("Param recipient_type must be one of {individual, group}.")
    kind = body.get("type", "text")  # documented default
    if kind not in MESSAGE_TYPES:
        raise _invalid(f"Param type must be one of {{{', '.join(sorted(MESSAGE_TYPES))}}}.")
    obj = body.get(kind)
    if obj is None:
        raise _missing(kind)
    if not isinstance(obj, dict):
        raise _invalid(f"Param {kind} must be a JSON object.")
    if kind == "text":
        _check_text(obj)
    elif kind == "template":
        _check_template(obj)
    else:
        _check_media(kind, obj)
    context = body.get("context")
    if context is not None:
        message_id = context.get("message_id") if isinstance(context, dict) else None
        if not isinstance(message_id, str) or not message_id:
            raise _invalid("Param context['message_id'] must be a message id.")
    wa_id = recipient_key(to)
    if wa_id in number.undeliverable:
        raise GraphError(ERRORS["131026"])
    if wa_id in number.closed_windows and kind != "template":
        raise GraphError(ERRORS["131047"])
    wamid = number._wamid(wa_id)
    number.sent.append(SentMessage(number.phone_number_id, to, wa_id, kind, body, wamid))
    contact = {"input": to, "user_id": to} if to == wa_id and "recipient" in body else None
    return {
        "messaging_product": "whatsapp",
        "contacts": [contact or {"input": to, "wa_id": wa_id}],
        "messages": [{"id": wamid}],
    }


def _check_text(obj: dict[str, Any]) -> None:
    text = obj.get("body")
    if text is None or text == "":
        raise _missing("text['body']")
    if not isinstance(text, str):
        raise _invalid("Param text['body'] must be a string.")
    if len(text) > TEXT_LIMIT:
        raise _invalid(f"Param text['body'] must be at most {TEXT_LIMIT} characters long.")
    if "preview_url" in obj and not isinstance(obj["preview_url"], bool):
        raise _invalid("Param text['preview_url'] must be a boolean.")


def _check_media(kind: str, obj: dict[str, Any]) -> None:
    link, media_id = obj.get("link"), obj.get("id")
    if link is None and media_id is None:
        raise _missing(f"{kind}['link'] or {kind}['id']")
    if link is not None and media_id is not None:
        raise _invalid(f"Param {kind} must have either 'link' or 'id', not both.")
    if link is not None and (
        not isinstance(link, str) or not link.startswith(("http://", "https://"))
    ):
        raise _invalid(f"Param {kind}['link'] must be a valid URL.")
    if media_id is not None and (not isinstance(media_id, str) or not media_id):
        raise _invalid(f"Param {kind}['id'] must be a media id.")
    caption = obj.get("caption")
    if caption is not None and (not isinstance(caption, str) or len(caption) > CAPTION_LIMIT):
        raise _invalid(f"Param {kind}['caption'] must be at most {CAPTION_LIMIT} characters long.")


def _check_template(obj: dict[str, Any]) -> None:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise _missing("template['name']")
    language = obj.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    if not isinstance(code, str) or not code:
        raise _missing("template['language']['code']")
    components = obj.get("components")
    if components is not None and (
        not isinstance(components, list)
        or not all(isinstance(c, dict) and isinstance(c.get("type"), str) for c in components)
    ):
        raise _invalid("Param template['components'] must be a list of objects with a type.")


# --- helpers ---------------------------------------------------------------------------


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _version(request: web.Request) -> int | None:
    match = VERSION_PATTERN.fullmatch(request.match_info.get("version", ""))
    return int(match.group(1)) if match else None


async def _read_json(request: web.Request) -> Any:
    if not request.body_exists:
        return None
    try:
        return await request.json()
    except ValueError:
        spec = ErrorSpec(400, 100, "Invalid parameter", None)
        raise GraphError(spec, "The request body is not valid JSON.") from None


def _error(exc: GraphError, version: int | None, *, whatsapp: bool = True) -> web.Response:
    """The Graph error envelope. Messenger and Instagram (`whatsapp=False`) carry no
    `error_data` and keep `error_subcode` in every version."""
    spec = exc.spec
    error: dict[str, Any] = {
        "message": spec.message or f"(#{spec.code}) {spec.title}",
        "type": "OAuthException",
        "code": spec.code,
    }
    if exc.details is not None and whatsapp:
        error["error_data"] = {"messaging_product": "whatsapp", "details": exc.details}
    if spec.subcode is not None and (
        not whatsapp
        or spec.code == 100
        or (version is not None and version <= SUBCODE_LAST_VERSION)
    ):
        error["error_subcode"] = spec.subcode
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(16)
    return web.json_response({"error": error}, status=exc.status)


async def _apply_fault(
    request: web.Request, fault: Fault, errors: Mapping[str, ErrorSpec] = ERRORS
) -> None:
    """Sleep ("slow"), vanish ("drop") or raise the fault's GraphError from `errors`."""
    if fault.kind == "slow":
        await asyncio.sleep(fault.delay)
        return
    if fault.kind == "drop":
        drop_connection(request)
    raise GraphError(errors[fault.kind], fault.details, fault.status)


# Last: graph_pages builds on the primitives above (ErrorSpec, GraphError, Fault, ...), and
# FakeGraph only reaches it at run time, so either module may be imported first.
from tests.fakes import graph_pages  # noqa: E402
