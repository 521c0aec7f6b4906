"""The Messenger Platform and Instagram messaging part of the fake Graph API.

`FakeGraph` (tests/fakes/graph_api.py) serves these routes beside its WhatsApp ones; this
module holds the Pages and Instagram accounts behind them. It speaks the wire format of
PROVIDERS.md §2, §4 and §5 and the `messenger_*` and `instagram_*` fixtures:

- `POST /<version>/<ID>/messages` (or `/me/messages`) sends a message, answered
  `{recipient_id, message_id}`, or a sender action (typing_on, typing_off, mark_seen),
  answered `{recipient_id}`;
- `GET /<version>/<ID>` answers a Page's `{id, name, instagram_business_account?}` or an
  Instagram account's `{id, username, user_id}` (the `fields` query is ignored);
- `GET /<version>/<USER ID>?fields=...` (User Profile API) answers a chat user's profile,
  the fields asked for that it holds and `id` (`page.add_profile`), or error 2018218 "No
  profile available for this user." for a user added without one; `page.hold_profile`
  keeps one user's reads unanswered until the test lets them go;
- `GET|POST /<version>/<ID>/subscribed_apps` reads or sets the app's webhook fields;
- `GET /<version>/app` answers `{id, name}` of the app any known token belongs to.

The same routes serve graph.facebook.com (Pages, and Instagram accounts linked to one)
and graph.instagram.com (Instagram Login): use one `FakeGraph` per host. Usage:

    fake = FakeGraph()
    page = fake.add_page("102030405060708", "EAAG-example", name="Example Realty")
    page.fail_next("613", to="1254459154682919")
    ig = fake.add_instagram_account("17841400000000001", "IGQW-example")
    async with running_fake(fake) as base_url:  # tests/fakes/serving.py
        ...  # POST f"{base_url}/v23.0/102030405060708/messages"

Messenger API for Instagram (Page-linked) sends go to the Page's id with the Page's
token; Graph tells Instagram users from Messenger users by the recipient id, so the fake
needs telling: ids in `page.instagram_recipients` are Instagram users, and such a send
or sender action is handled by the linked account (`fake.add_instagram_account` with the
Page's `instagram_account_id`): Instagram's rules, its faults, windows, `sent`, `actions`,
`latency` and `before_answer`. Authorization stays the Page's.

The token comes as `Authorization: Bearer <token>` or as the `access_token` query
parameter (Graph takes both; the header wins when both come). Errors use the Graph
envelope `{"error":{message, type, code, error_subcode?, fbtrace_id}}` without WhatsApp's
`error_data`. HTTP statuses are unpublished (PROVIDERS.md §2): as graph_api.py, the fake
answers 401 for 190, 429 for 4, 500 for code 2 and 400 for the rest (`status=` overrides).
What is deliberately simpler than Graph: `/messages` bodies must be JSON (no form
encoding), only text, image/audio/video/file attachments (one, or up to 30/10 images),
quick replies and metadata are known, webhook field names are not checked against
Meta's lists, no rate is enforced unless a fault is injected, sender actions ignore the
messaging window, no webhook (echo, delivery, read) is ever sent, and attachment uploads
(`POST /<ID>/message_attachments`) are not served.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from aiohttp import web

from tests.fakes.graph_api import (
    ERRORS,
    INVALID_TOKEN,
    ErrorSpec,
    Fault,
    GraphError,
    RequestRecord,
    _apply_fault,
    _bearer,
    _error,
    _no_object,
    _read_json,
    _take,
    _version,
)

if TYPE_CHECKING:
    from tests.fakes.graph_api import FakeGraph

PageKind = Literal["messenger", "instagram"]
APP_NAME = "Leadline Test App"
SENDER_ACTIONS = frozenset({"typing_on", "typing_off", "mark_seen"})
MESSAGING_TYPES = frozenset({"RESPONSE", "UPDATE", "MESSAGE_TAG"})
TAGS = frozenset({"HUMAN_AGENT"})
# "From 2026-04-27, the tags CONFIRMED_EVENT_UPDATE, ACCOUNT_UPDATE and
# POST_PURCHASE_UPDATE return error 100" (PROVIDERS.md §4).
DEPRECATED_TAGS = frozenset({"CONFIRMED_EVENT_UPDATE", "ACCOUNT_UPDATE", "POST_PURCHASE_UPDATE"})
ATTACHMENT_TYPES = frozenset({"image", "audio", "video", "file"})
MESSAGE_KEYS = frozenset({"text", "attachment", "attachments", "metadata", "quick_replies"})
METADATA_LIMIT = 1000  # characters of message.metadata
QUICK_REPLIES_LIMIT = 13
FIELD_NAME = re.compile(r"[a-z][a-z_]*")
DEFAULT_FIELDS: dict[PageKind, tuple[str, ...]] = {
    "messenger": (
        "messages",
        "messaging_postbacks",
        "message_echoes",
        "message_deliveries",
        "message_reads",
        "message_reactions",
    ),
    "instagram": ("messages", "messaging_seen", "message_reactions", "messaging_postbacks"),
}


@dataclass(frozen=True)
class SendRules:
    """What differs between a Messenger Page and an Instagram account (§4, §5)."""

    text_chars: int | None  # characters of message.text
    text_bytes: int | None  # UTF-8 bytes of message.text
    max_images: int  # items of message.attachments
    messaging_type_required: bool


RULES: dict[PageKind, SendRules] = {
    "messenger": SendRules(
        text_chars=2000, text_bytes=None, max_images=30, messaging_type_required=True
    ),
    # The exact field shape on graph.instagram.com is [U]: messaging_type is optional.
    "instagram": SendRules(
        text_chars=None, text_bytes=1000, max_images=10, messaging_type_required=False
    ),
}

OUTSIDE_WINDOW = (
    "This message is sent outside of allowed window. Learn more about the new policy here: "
    "https://developers.facebook.com/docs/messenger-platform/policy-overview"
)
# The fault kinds of `FakePage.fail_next`, keyed as the tests name them.
PAGE_ERRORS: dict[str, ErrorSpec] = {
    # messenger_rate_limit_error.json (Observed)
    "613": ErrorSpec(400, 613, "Calls to this api have exceeded the rate limit.", None),
    "4": ErrorSpec(429, 4, "Application request limit reached", None),
    # messenger_outside_window_error.json (Observed)
    "10_2018278": ErrorSpec(400, 10, OUTSIDE_WINDOW, None, subcode=2018278),
    # Constructed: the send-messages page lists 1545041 "Messaging window closed" as a code.
    "1545041": ErrorSpec(400, 1545041, "Messaging window closed", None),
    # Observed in developers' reports with subcode 1545041: the same number as above, so
    # a client must not read subcode 1545041 alone as "window closed".
    "551": ErrorSpec(400, 551, "This person isn't available right now.", None, subcode=1545041),
    "100": ErrorSpec(400, 100, "Invalid parameter", None),
    "190": ERRORS["190"],  # "Error validating access token: Session has expired."
    "500": ErrorSpec(
        500,
        2,
        "",
        None,
        message="An unexpected error has occurred. Please retry your request later.",
    ),
    # The User Profile API page: "the API will return the error code 2018218 along with
    # the message 'No profile available for this user.'" (accounts made with a phone).
    "2018218": ErrorSpec(400, 2018218, "", None, message="No profile available for this user."),
}
FAULT_KINDS = frozenset(PAGE_ERRORS) | {"drop", "slow"}


def _param(text: str) -> GraphError:
    """A bad parameter: code 100, "(#100) <text>"."""
    return GraphError(ErrorSpec(400, 100, text, None))


@dataclass(frozen=True)
class SentPageMessage:
    """A send the fake accepted."""

    recipient: str  # recipient.id: a PSID or an IGSID
    body: dict[str, Any]  # the request body as sent
    mid: str  # the message_id answered
    messaging_type: str | None
    tag: str | None
    at: float = field(default_factory=time.monotonic)  # when the fake accepted it

    @property
    def text(self) -> str | None:
        text = self.body["message"].get("text")
        return text if isinstance(text, str) else None

    @property
    def attachment_type(self) -> str | None:
        """`message.attachment.type`; None for text and for `message.attachments`."""
        attachment = self.body["message"].get("attachment")
        return attachment.get("type") if isinstance(attachment, dict) else None


@dataclass(frozen=True)
class SenderAction:
    """An accepted `sender_action` call."""

    recipient: str
    action: str  # typing_on, typing_off or mark_seen
    at: float = field(default_factory=time.monotonic)


class FakePage:
    """A Facebook Page (kind "messenger") or an Instagram professional account (kind
    "instagram"): its token, what it sent, its webhook subscription, its faults."""

    def __init__(
        self,
        page_id: str,
        access_token: str,
        kind: PageKind,
        *,
        name: str | None = None,
        username: str | None = None,
        instagram_account_id: str | None = None,
    ) -> None:
        self.page_id = page_id  # the id in URLs
        self.access_token = access_token
        self.kind: PageKind = kind
        self.name = name
        self.username = username
        # A Page: the linked Instagram account, if any. An account: its own id.
        self.instagram_account_id = instagram_account_id
        self.sent: list[SentPageMessage] = []
        self.actions: list[SenderAction] = []
        self.subscribed_fields: list[str] = list(DEFAULT_FIELDS[kind])
        self.faults: list[Fault] = []
        self.token_expired = False  # every call answers 190 "Session has expired"
        # Recipients outside the standard 24 h window: only a HUMAN_AGENT tag goes through,
        # and not for those also past its 7 days (human_agent_expired).
        self.closed_windows: set[str] = set()
        self.human_agent_expired: set[str] = set()
        # A Page only: recipient ids that are Instagram users of the linked account.
        self.instagram_recipients: set[str] = set()
        self.latency = 0.0  # seconds every answer takes
        # Chat users' profiles by PSID or IGSID; None: the user has none to give (2018218).
        self.profiles: dict[str, dict[str, Any] | None] = {}
        self.profile_faults: list[Fault] = []
        self.profile_holds: dict[str, asyncio.Event] = {}  # see hold_profile
        # Runs after a send is accepted and before its answer goes back: a test may
        # deliver the echo or delivery webhook from here.
        self.before_answer: Callable[[SentPageMessage], Awaitable[None]] | None = None
        self._serials = itertools.count(1)

    @property
    def rules(self) -> SendRules:
        return RULES[self.kind]

    def fail_next(
        self,
        kind: str,
        count: int = 1,
        *,
        to: str | None = None,
        delay: float = 1.0,
        status: int | None = None,
    ) -> None:
        """Make the next `count` `/messages` calls (sends and sender actions) fail as `kind`.

        Kinds: "613", "4", "10_2018278", "1545041", "551", "100", "190", "500" (code 2),
        each with its Graph envelope; "drop" (the connection is closed without an answer);
        "slow" (the normal answer after `delay` seconds). With `to`, only calls for that
        recipient id. `status` overrides the HTTP status.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        self.faults.append(Fault(kind, count, to, delay, status))

    def add_profile(self, user_id: str, **fields: Any) -> None:
        """A chat user's profile (Messenger: first_name, last_name; Instagram: name,
        username); with no fields, a user with no profile to give."""
        self.profiles[user_id] = {"id": user_id, **fields} if fields else None

    def fail_next_profile(self, kind: str, count: int = 1, *, delay: float = 1.0) -> None:
        """Make the next `count` profile reads fail as `kind` (the kinds of fail_next)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        self.profile_faults.append(Fault(kind, count, delay=delay))

    def hold_profile(self, user_id: str) -> asyncio.Event:
        """Keep reads of this user's profile unanswered until the returned event is set;
        other users' profiles answer as usual."""
        held = self.profile_holds[user_id] = asyncio.Event()
        return held

    def expire_token(self) -> None:
        """From now on every call with this token answers 190 (session expired)."""
        self.token_expired = True

    def unsubscribe(self) -> None:
        """Drop the app's webhook subscription, as Meta does after 1 h of failed deliveries."""
        self.subscribed_fields = []

    def _mid(self) -> str:
        if self.kind == "messenger":  # "m_" and url-safe text, as in the webhooks
            return "m_" + secrets.token_urlsafe(48)
        # Shaped like the fixture's: base64 of "ig_item:1:IGMessage:<account>:<serial>".
        serial = f"{secrets.randbits(96):029d}{next(self._serials):010d}"
        raw = f"ig_item:1:IGMessage:{self.page_id}:{serial}"
        return base64.b64encode(raw.encode()).decode().rstrip("=")

    def _details(self) -> dict[str, Any]:
        if self.kind == "instagram":
            return {"id": self.page_id, "username": self.username, "user_id": self.page_id}
        details: dict[str, Any] = {"id": self.page_id, "name": self.name}
        if self.instagram_account_id is not None:
            details["instagram_business_account"] = {"id": self.instagram_account_id}
        return details


def request_token(request: web.Request) -> str | None:
    """The token of a call: the Bearer header, else the `access_token` query parameter."""
    return _bearer(request) or request.query.get("access_token") or None


class PageRoutes:
    """The HTTP handlers of the Pages and Instagram accounts of one `FakeGraph`."""

    def __init__(self, graph: FakeGraph) -> None:
        self.graph = graph

    def addresses(self, object_id: str, request: web.Request) -> bool:
        """Whether `/<object_id>...` is for a Page or account rather than for WhatsApp:
        `me`, a Page's id, or an id the fake does not hold asked with a Page's token."""
        graph = self.graph
        if object_id == "me" or object_id in graph.pages:
            return True
        if object_id in graph.numbers or object_id in graph.media:
            return False
        token = request_token(request)
        return any(page.access_token == token for page in graph.pages.values())

    # --- handlers ----------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        object_id = request.match_info["phone_number_id"]
        token = request_token(request)
        body: Any = None
        bad_body: GraphError | None = None
        try:
            body = await _read_json(request)
        except GraphError as exc:
            bad_body = exc
        self._log(request, object_id, token, body)
        try:
            page = self._authorize(object_id, token, "post")
            if bad_body is not None:
                raise bad_body
            recipient = _recipient_id(body)
            target = self._target(page, recipient)
            if target.latency:
                await asyncio.sleep(target.latency)
            fault = _take(target.faults, recipient)
            if fault is not None:
                await _apply_fault(request, fault, PAGE_ERRORS)
            answer, sent = _messages(target, body)
            if sent is not None and target.before_answer is not None:
                await target.before_answer(sent)
            return web.json_response(answer)
        except GraphError as exc:
            return _error(exc, _version(request), whatsapp=False)

    async def details(self, request: web.Request, object_id: str) -> web.StreamResponse:
        token = request_token(request)
        self._log(request, object_id, token, None)
        owners = self._profile_owners(object_id, token)
        if owners is not None:
            return await self._profile(request, *owners, object_id)
        try:
            page = self._authorize(object_id, token, "get")
            if page.latency:
                await asyncio.sleep(page.latency)
            return web.json_response(page._details())
        except GraphError as exc:
            return _error(exc, _version(request), whatsapp=False)

    async def subscribed_apps(self, request: web.Request) -> web.StreamResponse:
        object_id = request.match_info["object_id"]
        token = request_token(request)
        body: Any = None
        bad_body: GraphError | None = None
        try:
            body = await _read_body(request)
        except GraphError as exc:
            bad_body = exc
        self._log(request, object_id, token, body)
        try:
            page = self._authorize(object_id, token, request.method.lower())
            if bad_body is not None:
                raise bad_body
            if page.latency:
                await asyncio.sleep(page.latency)
            if request.method == "GET":
                return web.json_response(self._subscriptions(page))
            value = request.query.get("subscribed_fields")
            if value is None and isinstance(body, dict):
                value = body.get("subscribed_fields")
            page.subscribed_fields = _subscribed_fields(value)
            return web.json_response({"success": True})
        except GraphError as exc:
            return _error(exc, _version(request), whatsapp=False)

    async def app_details(self, request: web.Request) -> web.StreamResponse:
        token = request_token(request)
        self._log(request, None, token, None)
        graph = self.graph
        holders = [*graph.pages.values(), *graph.numbers.values()]
        known = [h for h in holders if token is not None and h.access_token == token]
        if not known:
            return _error(GraphError(INVALID_TOKEN), _version(request), whatsapp=False)
        if all(h.token_expired for h in known):
            return _error(GraphError(ERRORS["190"]), _version(request), whatsapp=False)
        return web.json_response({"id": graph.app_id, "name": APP_NAME})

    async def _profile(
        self, request: web.Request, caller: FakePage, holder: FakePage, user: str
    ) -> web.StreamResponse:
        try:
            if caller.token_expired:
                raise GraphError(PAGE_ERRORS["190"])
            fault = _take(holder.profile_faults, None)
            if fault is not None:
                await _apply_fault(request, fault, PAGE_ERRORS)
            if user in holder.profile_holds:
                await holder.profile_holds[user].wait()
            profile = holder.profiles[user]
            if profile is None:
                raise GraphError(PAGE_ERRORS["2018218"])
            asked = request.query.get("fields", "").split(",")
            return web.json_response({k: v for k, v in profile.items() if k in asked or k == "id"})
        except GraphError as exc:
            return _error(exc, _version(request), whatsapp=False)

    # --- authorization and routing --------------------------------------------------------

    def _profile_owners(self, user: str, token: str | None) -> tuple[FakePage, FakePage] | None:
        """The Page or account whose token asks, and the one that holds the user's
        profile: itself, or for a Page its linked Instagram account's users."""
        for page in self.graph.pages.values():
            if token is None or page.access_token != token:
                continue
            linked = self.graph.pages.get(page.instagram_account_id or "")
            for holder in (page, linked):
                if holder is not None and user in holder.profiles:
                    return page, holder
        return None

    def _authorize(self, object_id: str, token: str | None, verb: str) -> FakePage:
        """The Page or account `object_id` names (`me`: the token's own), if the token is
        its own. An unknown token is 190 "Invalid OAuth access token"; a known one on
        another object is 100/33 "Object with ID ... does not exist"."""
        graph = self.graph
        owners = [p for p in graph.pages.values() if token is not None and p.access_token == token]
        numbers = [
            n for n in graph.numbers.values() if token is not None and n.access_token == token
        ]
        if not owners and not numbers:
            raise GraphError(INVALID_TOKEN)
        page = owners[0] if object_id == "me" and owners else graph.pages.get(object_id)
        if page is not None and page.access_token == token:
            if page.token_expired:
                raise GraphError(PAGE_ERRORS["190"])
            return page
        if all(holder.token_expired for holder in [*owners, *numbers]):
            raise GraphError(PAGE_ERRORS["190"])
        raise _no_object(object_id, verb)

    def _target(self, page: FakePage, recipient: str | None) -> FakePage:
        """Who handles a `/messages` call to `page`: the linked Instagram account for its
        `instagram_recipients` (Messenger API for Instagram), else the page itself."""
        if page.kind != "messenger" or recipient not in page.instagram_recipients:
            return page
        account = self.graph.pages.get(page.instagram_account_id or "")
        if account is None or account.kind != "instagram":
            raise LookupError(
                f"page {page.page_id} sends to Instagram user {recipient}, but its "
                f"instagram_account_id {page.instagram_account_id!r} is not an account of "
                "this fake (add_instagram_account)"
            )
        return account

    def _subscriptions(self, page: FakePage) -> dict[str, Any]:
        if not page.subscribed_fields:
            return {"data": []}
        app = {"id": self.graph.app_id, "name": APP_NAME}
        return {"data": [{**app, "subscribed_fields": list(page.subscribed_fields)}]}

    def _log(
        self, request: web.Request, object_id: str | None, token: str | None, body: Any
    ) -> None:
        if object_id == "me":  # the log names the Page or account the token belongs to
            owner = next((p for p in self.graph.pages.values() if p.access_token == token), None)
            object_id = owner.page_id if owner is not None else object_id
        if isinstance(body, dict) and "access_token" in body:  # never a token in the log
            body = {k: v for k, v in body.items() if k != "access_token"}
        record = RequestRecord(
            request.method, request.path, None, body, token is not None, page_id=object_id
        )
        self.graph.requests.append(record)


# --- the /messages endpoint ----------------------------------------------------------------


def _recipient_id(body: Any) -> str | None:
    recipient = body.get("recipient") if isinstance(body, dict) else None
    rid = recipient.get("id") if isinstance(recipient, dict) else None
    return rid if isinstance(rid, str) and rid else None


def _messages(page: FakePage, body: Any) -> tuple[dict[str, Any], SentPageMessage | None]:
    if not isinstance(body, dict):
        raise _param("The request body must be a JSON object")
    if "recipient" not in body:
        raise _param("The parameter recipient is required")
    recipient = _recipient_id(body)
    if recipient is None:
        raise _param("Param recipient[id] must be a non-empty string")
    if "message" in body and "sender_action" in body:
        raise _param("Cannot send both message and state at the same time.")
    if "sender_action" in body:
        action = body["sender_action"]
        if action not in SENDER_ACTIONS:
            raise _param(f"Param sender_action must be one of {_one_of(SENDER_ACTIONS)}")
        page.actions.append(SenderAction(recipient, action))
        return {"recipient_id": recipient}, None
    if "message" not in body:
        raise _param("Must send either message or state")
    return _send(page, recipient, body)


def _send(
    page: FakePage, recipient: str, body: dict[str, Any]
) -> tuple[dict[str, Any], SentPageMessage]:
    rules = page.rules
    message = body["message"]
    if not isinstance(message, dict):
        raise _param("Param message must be a JSON object")
    unknown = sorted(set(message) - MESSAGE_KEYS)
    if unknown:
        raise _param(f"Param message has unknown fields: {', '.join(unknown)}")
    contents = [key for key in ("text", "attachment", "attachments") if key in message]
    if not contents:
        raise _param("Message cannot be empty, must provide valid attachment or text")
    if len(contents) > 1:
        raise _param("Param message must have only one of text, attachment or attachments")
    if contents == ["text"]:
        _check_text(message["text"], rules)
    elif contents == ["attachment"]:
        _check_attachment(message["attachment"], "message[attachment]", ATTACHMENT_TYPES)
    else:
        _check_attachments(message["attachments"], rules.max_images)
    metadata = message.get("metadata")
    if metadata is not None and (not isinstance(metadata, str) or len(metadata) > METADATA_LIMIT):
        raise _param(
            f"Param message[metadata] must be a string of at most {METADATA_LIMIT} characters"
        )
    replies = message.get("quick_replies")
    if replies is not None and (
        not isinstance(replies, list)
        or not 0 < len(replies) <= QUICK_REPLIES_LIMIT
        or not all(isinstance(reply, dict) for reply in replies)
    ):
        raise _param(
            f"Param message[quick_replies] must be a list of 1 to {QUICK_REPLIES_LIMIT} objects"
        )
    reply_to = body.get("reply_to")
    if reply_to is not None:
        mid = reply_to.get("mid") if isinstance(reply_to, dict) else None
        if not isinstance(mid, str) or not mid:
            raise _param("Param reply_to[mid] must be a message id")
    messaging_type, tag = _check_policy(body, rules)
    refusal = _window_refusal(page, recipient, messaging_type)
    if refusal is not None:
        raise GraphError(refusal)
    sent = SentPageMessage(recipient, body, page._mid(), messaging_type, tag)
    page.sent.append(sent)
    return {"recipient_id": recipient, "message_id": sent.mid}, sent


def _check_text(text: Any, rules: SendRules) -> None:
    if not isinstance(text, str):
        raise _param("Param message[text] must be a string")
    if not text:
        raise _param("Param message[text] must be a non-empty UTF-8 encoded string")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:  # a lone surrogate ("\ud83d") in the JSON
        raise _param("Param message[text] must be a non-empty UTF-8 encoded string") from None
    if rules.text_chars is not None and len(text) > rules.text_chars:
        raise _param(
            f"Length of param message[text] must be less than or equal to {rules.text_chars}"
        )
    if rules.text_bytes is not None and size > rules.text_bytes:
        raise _param(
            f"Length of param message[text] must be less than or equal to {rules.text_bytes} "
            f"bytes in UTF-8 (it is {size})"
        )


def _check_attachment(obj: Any, where: str, types: frozenset[str]) -> None:
    if not isinstance(obj, dict):
        raise _param(f"Param {where} must be a JSON object")
    if obj.get("type") not in types:
        raise _param(f"Param {where}[type] must be one of {_one_of(types)}")
    payload = obj.get("payload")
    if not isinstance(payload, dict):
        raise _param(f"The parameter {where}[payload] is required")
    url, attachment_id = payload.get("url"), payload.get("attachment_id")
    if (url is None) == (attachment_id is None):
        raise _param(f"Param {where}[payload] must have either url or attachment_id")
    if url is not None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise _param(f"Param {where}[payload][url] must be a valid http(s) URL")
    if attachment_id is not None and (not isinstance(attachment_id, str) or not attachment_id):
        raise _param(f"Param {where}[payload][attachment_id] must be an attachment id")
    reusable = payload.get("is_reusable")
    if reusable is not None and not isinstance(reusable, bool):
        raise _param(f"Param {where}[payload][is_reusable] must be a boolean")


def _check_attachments(items: Any, limit: int) -> None:
    if not isinstance(items, list) or not 0 < len(items) <= limit:
        raise _param(f"Param message[attachments] must be a list of 1 to {limit} images")
    for index, item in enumerate(items):
        _check_attachment(item, f"message[attachments][{index}]", frozenset({"image"}))


def _check_policy(body: dict[str, Any], rules: SendRules) -> tuple[str | None, str | None]:
    messaging_type, tag = body.get("messaging_type"), body.get("tag")
    if messaging_type is None:
        if rules.messaging_type_required:
            raise _param("The parameter messaging_type is required")
    elif messaging_type not in MESSAGING_TYPES:
        raise _param(f"Param messaging_type must be one of {_one_of(MESSAGING_TYPES)}")
    if messaging_type != "MESSAGE_TAG":
        if tag is not None:
            raise _param("Param tag is only allowed with messaging_type MESSAGE_TAG")
        return messaging_type, None
    if tag is None:
        raise _param("The parameter tag is required when messaging_type is MESSAGE_TAG")
    if tag in DEPRECATED_TAGS:
        raise _param(f"Param tag {tag} is no longer supported (deprecated on 2026-04-27)")
    if tag not in TAGS:
        raise _param(f"Param tag must be one of {_one_of(TAGS)}")
    return messaging_type, tag


def _window_refusal(page: FakePage, recipient: str, messaging_type: str | None) -> ErrorSpec | None:
    """The error a send into a closed window gets, or None when it may go."""
    if recipient not in page.closed_windows:
        return None
    if messaging_type != "MESSAGE_TAG":
        return PAGE_ERRORS["10_2018278"]  # what developers observe (messenger_outside_window)
    # A HUMAN_AGENT tag (the only one accepted) reaches a closed window for 7 days. Past
    # them the fake answers 1545041, the send-messages page's "Messaging window closed";
    # Graph may as well answer 10/2018278 or subcode 2534022 (PROVIDERS.md §4). This is the
    # one place that choice is made.
    if recipient in page.human_agent_expired:
        return PAGE_ERRORS["1545041"]
    return None


# --- /subscribed_apps ----------------------------------------------------------------------


async def _read_body(request: web.Request) -> Any:
    """A JSON body, or a form as a dict (subscribed_fields may come either way)."""
    if not request.body_exists:
        return None
    if request.content_type == "application/json":
        return await _read_json(request)
    return dict(await request.post())


def _subscribed_fields(value: Any) -> list[str]:
    """`subscribed_fields` as Graph takes it: "a,b,c" or a JSON list of names."""
    if isinstance(value, str):
        names = [name.strip() for name in value.split(",")]
    elif isinstance(value, list) and all(isinstance(name, str) for name in value):
        names = [name.strip() for name in value]
    elif value is None:
        names = []
    else:
        raise _param("Param subscribed_fields must be a list of webhook fields")
    if names in ([], [""]):
        raise _param("The parameter subscribed_fields is required")
    for index, name in enumerate(names):
        if not FIELD_NAME.fullmatch(name):
            raise _param(f"Param subscribed_fields[{index}] must be a webhook field name")
    return list(dict.fromkeys(names))


def _one_of(values: frozenset[str]) -> str:
    return "{" + ", ".join(sorted(values)) + "}"
