"""A fake Telegram Bot API server on loopback, so the REAL aiogram `Bot` can be tested end to end.

It speaks the documented wire format: `POST|GET /bot<token>/<method>` with parameters
in a query string, urlencoded form, multipart form or JSON body, answered with
`{"ok":true,"result":...}` or `{"ok":false,"error_code":N,"description":...,
"parameters":{...}}` and the matching HTTP status; files come from
`GET /file/bot<token>/<file_path>`. State lives per bot, keyed by token:

    fake = FakeTelegram()
    bot = fake.add_bot("111:AAA", "demo_bot")
    bot.push_update(bot.text_update(123456789, "Hello"))
    async with running_fake(fake) as base_url:  # tests/fakes/serving.py
        ...  # Bot("111:AAA", session=AiohttpSession(api=TelegramAPIServer.from_base(base_url)))

Use one `FakeTelegram` per test: its long-poll futures belong to the test's event loop.
What is deliberately simpler than Telegram: any chat id is accepted (no "chat not
found"), `parse_mode` markup is kept as sent rather than turned into entities,
`allowed_updates` is recorded but does not filter pushed updates, and no
webhook is ever delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import mimetypes
import re
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.serving import drop_connection

UNAUTHORIZED = "Unauthorized"
NOT_FOUND = "Not Found"
WEBHOOK_ACTIVE = (
    "Conflict: can't use getUpdates method while webhook is active; "
    "use deleteWebhook to delete the webhook first"
)
TERMINATED_BY_OTHER = (
    "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running"
)
BLOCKED = "Forbidden: bot was blocked by the user"
MIGRATED = "Bad Request: group chat was upgraded to a supergroup chat"
HTTPS_REQUIRED = "An HTTPS URL must be provided for webhook"
FAULT_KINDS = frozenset({"429", "500", "502", "502-html", "409", "drop", "slow"})
# What nginx in front of the Bot API answers when the backend is down: not JSON at all.
NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
# aiogram accepts any `<digits>:<no spaces>`; a "/" would also break the URL.
TOKEN_PATTERN = re.compile(r"\d+:[^\s/]+")

# Form and query values arrive as strings (aiogram sends a str as is and JSON-dumps
# everything else); Telegram types them per parameter, and so does the fake.
INT_PARAMS = frozenset(
    {
        "offset",
        "limit",
        "timeout",
        "message_id",
        "message_thread_id",
        "max_connections",
        "cache_time",
        "duration",
        "width",
        "height",
    }
)
BOOL_PARAMS = frozenset(
    {
        "drop_pending_updates",
        "disable_notification",
        "protect_content",
        "allow_paid_broadcast",
        "show_alert",
        "has_spoiler",
        "supports_streaming",
        "disable_content_type_detection",
        "show_caption_above_media",
    }
)
JSON_PARAMS = frozenset(
    {
        "allowed_updates",
        "reply_parameters",
        "reply_markup",
        "entities",
        "caption_entities",
        "link_preview_options",
    }
)
MEDIA_FIELDS = {
    "sendphoto": "photo",
    "sendvideo": "video",
    "sendaudio": "audio",
    "senddocument": "document",
    "sendvoice": "voice",
}


class ApiError(Exception):
    """An error answer: `{"ok":false,...}` with `status` as both HTTP status and error_code."""

    def __init__(self, status: int, description: str, **parameters: int) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters


@dataclass(frozen=True)
class Upload:
    """A file sent as a multipart part (aiogram's `BufferedInputFile`, `FSInputFile`)."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request, as tests may see it: the path never holds the token."""

    http_method: str
    path: str
    method: str
    params: dict[str, Any]
    content_type: str
    bot: str | None  # the bot's username; None for an unknown token


@dataclass(frozen=True)
class SentCall:
    """A send-type call the fake accepted (sendX, sendChatAction, answerCallbackQuery)."""

    method: str
    params: dict[str, Any]
    result: Any
    at: float = field(default_factory=time.monotonic)  # when the fake accepted it


@dataclass(frozen=True)
class StoredFile:
    file_id: str
    file_unique_id: str
    file_path: str
    content: bytes


@dataclass
class Fault:
    method: str  # lower-case method name, or "*" for any
    kind: str
    remaining: int
    retry_after: int
    description: str | None
    chat_id: int | str | None = None  # only calls to this chat; None for any
    delay: float = 0.0  # "slow": seconds before the (normal) answer


@dataclass
class Webhook:
    url: str
    secret_token: str | None
    allowed_updates: list[str] | None
    max_connections: int
    # The most recent failed delivery, as getWebhookInfo reports it (`fail_delivery`).
    last_error_date: int | None = None
    last_error_message: str | None = None


def _unique_id(file_id: str) -> str:
    # Telegram's file_unique_id is short and stable for one file; a digest is both.
    return "AQAD" + hashlib.sha256(file_id.encode()).hexdigest()[:12]


def _utf16_len(text: str) -> int:
    # Entity offsets and lengths count UTF-16 code units, not code points.
    return len(text.encode("utf-16-le")) // 2


def _now() -> int:
    return int(time.time())


class FakeBot:
    """One bot's state on the fake server; tests drive it directly."""

    def __init__(self, token: str, username: str, first_name: str) -> None:
        self.token = token
        self.username = username
        self.first_name = first_name
        self.id = int(token.split(":", 1)[0])  # the token's prefix is the bot's user id
        self.pending_updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self.sent: list[SentCall] = []
        self.blocked_chats: set[int | str] = set()
        self.migrated_chats: dict[int, int] = {}
        self.files: dict[str, StoredFile] = {}
        self.webhook: Webhook | None = None
        self.allowed_updates: list[str] | None = None  # persists between getUpdates, as in Telegram
        self.revoked = False
        self.faults: list[Fault] = []
        self.latency = 0.0  # seconds every answer takes (a slow API)
        self._update_ids = itertools.count(100000001)
        self._message_ids = itertools.count(1)  # shared by incoming and sent messages
        self._serials = itertools.count(1)  # file ids, file paths, callback ids
        self._users: dict[int, dict[str, Any]] = {}  # seen senders, to fill private chats
        self._waiters: set[asyncio.Future[None]] = set()
        self._poll: asyncio.Future[None] | None = None  # resolved when another poller takes over
        self.conflicts = 0  # getUpdates answered 409 because another one arrived
        self._closed = False

    # --- test API ----------------------------------------------------------------

    def push_update(self, update: dict[str, Any]) -> int:
        """Queue an update (its update_id is assigned here) and wake a waiting long poll."""
        update_id = next(self._update_ids)
        self.pending_updates.append({**update, "update_id": update_id})
        self._wake()
        return update_id

    def revoke(self) -> None:
        """From now on every call with this token answers 401, as after /revoke in BotFather."""
        self.revoked = True

    def fail_delivery(self, message: str, at: float | None = None) -> None:
        """Record a failed webhook delivery (at `at`, Unix time; default now), as
        getWebhookInfo's last_error_date and last_error_message then report it."""
        if self.webhook is None:
            raise ValueError("no webhook is set for this bot")
        self.webhook.last_error_date = int(time.time() if at is None else at)
        self.webhook.last_error_message = message

    def fail_next(
        self,
        method: str,
        kind: str,
        count: int = 1,
        *,
        retry_after: int = 3,
        description: str | None = None,
        chat_id: int | str | None = None,
        delay: float = 0.0,
    ) -> None:
        """Make the next `count` calls of `method` ("*" for any) fail as `kind`.

        Kinds: "429" (with retry_after), "500", "502" (JSON), "502-html" (nginx's HTML
        page), "409", "drop" (the connection is closed without an answer), "slow" (the
        normal answer after `delay` seconds). With `chat_id`, only calls to that chat.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        fault = Fault(method.lower(), kind, count, retry_after, description, chat_id, delay)
        self.faults.append(fault)

    def add_file(self, file_id: str, content: bytes, file_path: str | None = None) -> str:
        """Register a downloadable file for getFile; returns its file_path."""
        path = file_path or f"documents/file_{next(self._serials)}"
        self.files[file_id] = StoredFile(file_id, _unique_id(file_id), path, content)
        return path

    @property
    def is_polling(self) -> bool:
        """Whether a getUpdates long poll is waiting right now."""
        return self._poll is not None and not self._poll.done()

    def user(self) -> dict[str, Any]:
        """The bot's own `User`, as getMe returns it and as `from` of its messages."""
        return {
            "id": self.id,
            "is_bot": True,
            "first_name": self.first_name,
            "username": self.username,
        }

    # --- update builders (shaped like the fixtures) --------------------------------

    def text_update(
        self,
        chat_id: int,
        text: str,
        *,
        username: str | None = "ada_example",
        first_name: str = "Ada",
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """An update holding a text `message`; a leading /command gets its bot_command entity."""
        message = self._incoming(chat_id, username, first_name, user_id)
        message["text"] = text
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [
                {"offset": 0, "length": _utf16_len(command), "type": "bot_command"}
            ]
        return {"message": message}

    def photo_update(
        self,
        chat_id: int,
        caption: str | None = None,
        *,
        content: bytes | None = None,
        username: str | None = "ada_example",
        first_name: str = "Ada",
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """An update holding a `message.photo[]` in three sizes, largest last.

        With `content`, the largest size is registered, so getFile and the download work.
        """
        message = self._incoming(chat_id, username, first_name, user_id)
        base = f"AgACAgIAAxkBAAM{self.id}Photo{next(self._serials)}"
        sizes = [(90, 67, "s"), (320, 240, "m"), (1280, 960, "")]
        message["photo"] = [
            {
                "file_id": base + suffix,
                "file_unique_id": _unique_id(base + suffix),
                "file_size": width * height // 4,
                "width": width,
                "height": height,
            }
            for width, height, suffix in sizes
        ]
        if content is not None:
            self.add_file(base, content, f"photos/file_{next(self._serials)}.jpg")
            message["photo"][-1]["file_size"] = len(content)
        if caption is not None:
            message["caption"] = caption
        return {"message": message}

    def callback_update(
        self,
        chat_id: int,
        data: str,
        *,
        message_text: str = "Which option do you want?",
        username: str | None = "ada_example",
        first_name: str = "Ada",
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """An update holding a `callback_query` pressed on a bot message with that button."""
        user = self._sender(chat_id, username, first_name, user_id)
        bot_message = self._message(chat_id, self.user())
        bot_message["text"] = message_text
        bot_message["reply_markup"] = {"inline_keyboard": [[{"text": data, "callback_data": data}]]}
        return {
            "callback_query": {
                "id": f"{self.id}{next(self._serials):08d}",
                "from": user,
                "message": bot_message,
                "chat_instance": str(-zlib.crc32(f"{self.id}:{chat_id}".encode())),
                "data": data,
            }
        }

    def edited_update(
        self,
        chat_id: int,
        message_id: int,
        text: str,
        *,
        username: str | None = "ada_example",
        first_name: str = "Ada",
        user_id: int | None = None,
    ) -> dict[str, Any]:
        """An update holding an `edited_message`: the same message_id with new text."""
        user = self._sender(chat_id, username, first_name, user_id)
        now = _now()
        message = {
            "message_id": message_id,
            "from": user,
            "chat": self._chat(chat_id),
            "date": now - 60,  # the original send; Telegram keeps it on edits
            "edit_date": now,
            "text": text,
        }
        return {"edited_message": message}

    # --- internals used by the server ----------------------------------------------

    def _sender(
        self, chat_id: int, username: str | None, first_name: str, user_id: int | None
    ) -> dict[str, Any]:
        # In a private chat the chat id is the user's id; in groups a test may pick one.
        uid = user_id if user_id is not None else (chat_id if chat_id > 0 else 123456789)
        user: dict[str, Any] = {"id": uid, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        user["language_code"] = "en"
        self._users[uid] = user
        return user

    def _incoming(
        self, chat_id: int, username: str | None, first_name: str, user_id: int | None
    ) -> dict[str, Any]:
        return self._message(chat_id, self._sender(chat_id, username, first_name, user_id))

    def _message(self, chat_id: int | str, sender: dict[str, Any]) -> dict[str, Any]:
        return {
            "message_id": next(self._message_ids),
            "from": sender,
            "chat": self._chat(chat_id),
            "date": _now(),
        }

    def _chat(self, chat_id: int | str) -> dict[str, Any]:
        if isinstance(chat_id, str):  # "@channelusername"
            name = chat_id.lstrip("@")
            channel_id = -1000000000000 - zlib.crc32(name.encode())
            return {"id": channel_id, "title": name, "username": name, "type": "channel"}
        if chat_id > 0:
            user = self._users.get(chat_id, {})
            names = {k: user[k] for k in ("first_name", "last_name", "username") if k in user}
            return {"id": chat_id, **names, "type": "private"}
        kind = "supergroup" if str(chat_id).startswith("-100") else "group"
        return {"id": chat_id, "title": f"Group {chat_id}", "type": kind}

    def _next_serial(self) -> int:
        return next(self._serials)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _take_fault(self, method: str, params: dict[str, Any]) -> Fault | None:
        for fault in self.faults:
            if fault.chat_id is not None and params.get("chat_id") != fault.chat_id:
                continue
            if fault.method in (method.lower(), "*"):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _check_chat(self, chat_id: int | str) -> None:
        if chat_id in self.blocked_chats:
            raise ApiError(403, BLOCKED)
        if isinstance(chat_id, int) and chat_id in self.migrated_chats:
            raise ApiError(400, MIGRATED, migrate_to_chat_id=self.migrated_chats[chat_id])

    def _confirm(self, offset: int) -> None:
        if offset > 0:
            self.pending_updates = [u for u in self.pending_updates if u["update_id"] >= offset]
        elif offset < 0:  # the last -offset updates; every earlier one is forgotten
            self.pending_updates = self.pending_updates[offset:]

    def _begin_poll(self) -> asyncio.Future[None]:
        # Telegram answers 409 to the EARLIER request when a second one arrives.
        if self._poll is not None and not self._poll.done():
            self._poll.set_result(None)
        self._poll = asyncio.get_running_loop().create_future()
        return self._poll

    def _end_poll(self, poll: asyncio.Future[None]) -> None:
        if self._poll is poll:
            self._poll = None

    async def _wait_for_update(self, poll: asyncio.Future[None], timeout: float) -> None:
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(arrived)
        try:
            await asyncio.wait(
                {arrived, poll}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._waiters.discard(arrived)
            arrived.cancel()

    def _close(self) -> None:
        self._closed = True
        self._wake()


Handler = Callable[[FakeBot, str, dict[str, Any]], Awaitable[Any]]


class FakeTelegram:
    """The fake Bot API: bots by token, a request log, and the aiohttp application."""

    def __init__(self) -> None:
        self.bots: dict[str, FakeBot] = {}
        self.requests: list[RequestRecord] = []
        handlers: dict[str, Handler] = {
            "getMe": self._get_me,
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
            "sendChatAction": self._send_chat_action,
            "answerCallbackQuery": self._answer_callback_query,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "getFile": self._get_file,
        }
        handlers.update({name: self._send_media for name in MEDIA_FIELDS})
        # Telegram matches method names case-insensitively.
        self._handlers = {name.lower(): handler for name, handler in handlers.items()}

    def add_bot(self, token: str, username: str, first_name: str | None = None) -> FakeBot:
        if not TOKEN_PATTERN.fullmatch(token):
            raise ValueError("a bot token looks like <digits>:<text>")
        bot = FakeBot(token, username, first_name or username)
        self.bots[token] = bot
        return bot

    def calls(self, method: str) -> list[RequestRecord]:
        """Every logged request of one API method (case-insensitive), in order."""
        return [r for r in self.requests if r.method.lower() == method.lower()]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)  # Telegram's upload limit
        app.router.add_route("GET", "/bot{token}/{method}", self._handle_method)
        app.router.add_route("POST", "/bot{token}/{method}", self._handle_method)
        app.router.add_get("/file/bot{token}/{file_path:.+}", self._handle_file)
        return app

    def close(self) -> None:
        """Release every waiting long poll (with []), so the server can stop at once."""
        for bot in self.bots.values():
            bot._close()

    # --- HTTP ----------------------------------------------------------------------

    async def _handle_method(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        bot = self.bots.get(request.match_info["token"])
        params: dict[str, Any] = {}
        bad_params: ApiError | None = None
        try:
            params = await _read_params(request)
        except ApiError as exc:
            bad_params = exc
        self.requests.append(
            RequestRecord(
                request.method,
                f"/bot<token>/{method}",
                method,
                params,
                request.content_type if request.body_exists else "",
                bot.username if bot else None,
            )
        )
        if bot is None or bot.revoked:
            return _error(ApiError(401, UNAUTHORIZED))
        if bad_params is not None:
            return _error(bad_params)
        if bot.latency:
            await asyncio.sleep(bot.latency)
        fault = bot._take_fault(method, params)
        if fault is not None and fault.kind == "slow":
            await asyncio.sleep(fault.delay)
        elif fault is not None:
            return _fault_response(request, fault)
        handler = self._handlers.get(method.lower())
        if handler is None:
            return _error(ApiError(404, NOT_FOUND))
        try:
            result = await handler(bot, method, params)
        except ApiError as exc:
            return _error(exc)
        return _ok(result)

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        file_path = request.match_info["file_path"]
        bot = self.bots.get(request.match_info["token"])
        self.requests.append(
            RequestRecord(
                request.method,
                f"/file/bot<token>/{file_path}",
                "file",
                {},
                "",
                bot.username if bot else None,
            )
        )
        if bot is None or bot.revoked:
            return _error(ApiError(401, UNAUTHORIZED))
        stored = next((f for f in bot.files.values() if f.file_path == file_path), None)
        if stored is None:
            return _error(ApiError(404, NOT_FOUND))
        return web.Response(body=stored.content, content_type="application/octet-stream")

    # --- methods -------------------------------------------------------------------

    async def _get_me(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        return {
            **bot.user(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _get_updates(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        if bot.webhook is not None:
            raise ApiError(409, WEBHOOK_ACTIVE)
        limit = min(max(params.get("limit", 100), 1), 100)
        timeout = min(max(params.get("timeout", 0), 0), 50)
        if "allowed_updates" in params:
            bot.allowed_updates = params["allowed_updates"]
        bot._confirm(params.get("offset", 0))
        poll = bot._begin_poll()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not bot.pending_updates and not bot._closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await bot._wait_for_update(poll, remaining)
                if poll.done():
                    bot.conflicts += 1
                    raise ApiError(409, TERMINATED_BY_OTHER)
        finally:
            bot._end_poll(poll)
        return bot.pending_updates[:limit]

    async def _send_message(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        chat_id = _require(params, "chat_id")
        text = params.get("text")
        if not text:
            raise ApiError(400, "Bad Request: message text is empty")
        bot._check_chat(chat_id)
        message = bot._message(chat_id, bot.user())
        message["text"] = text
        _copy(params, message, "entities", "link_preview_options")
        return _record(bot, method, params, _with_markup(message, params))

    async def _send_media(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        chat_id = _require(params, "chat_id")
        kind = MEDIA_FIELDS[method.lower()]
        media = _require(params, kind)
        bot._check_chat(chat_id)
        message = bot._message(chat_id, bot.user())
        message[kind] = _media_object(bot, kind, media, params)
        _copy(params, message, "caption", "caption_entities")
        return _record(bot, method, params, _with_markup(message, params))

    async def _send_chat_action(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        chat_id = _require(params, "chat_id")
        _require(params, "action")
        bot._check_chat(chat_id)
        return _record(bot, method, params, True)

    async def _answer_callback_query(
        self, bot: FakeBot, method: str, params: dict[str, Any]
    ) -> Any:
        _require(params, "callback_query_id")
        return _record(bot, method, params, True)

    async def _set_webhook(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        url = params.get("url", "")
        if params.get("drop_pending_updates"):
            bot.pending_updates.clear()
        if not url:  # an empty url removes the webhook, as documented
            bot.webhook = None
            return True
        if not url.startswith("https://"):
            raise ApiError(400, f"Bad Request: bad webhook: {HTTPS_REQUIRED}")
        bot.webhook = Webhook(
            url=url,
            secret_token=params.get("secret_token"),
            allowed_updates=params.get("allowed_updates"),
            max_connections=params.get("max_connections", 40),
        )
        if bot.webhook.allowed_updates is not None:
            bot.allowed_updates = bot.webhook.allowed_updates
        return True

    async def _delete_webhook(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        if params.get("drop_pending_updates"):
            bot.pending_updates.clear()
        bot.webhook = None
        return True

    async def _get_webhook_info(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        info: dict[str, Any] = {
            "url": bot.webhook.url if bot.webhook else "",
            "has_custom_certificate": False,
            "pending_update_count": len(bot.pending_updates),
        }
        if bot.webhook is not None:
            info["max_connections"] = bot.webhook.max_connections
            if bot.webhook.allowed_updates is not None:
                info["allowed_updates"] = bot.webhook.allowed_updates
            if bot.webhook.last_error_date is not None:
                info["last_error_date"] = bot.webhook.last_error_date
                info["last_error_message"] = bot.webhook.last_error_message
        return info

    async def _get_file(self, bot: FakeBot, method: str, params: dict[str, Any]) -> Any:
        stored = bot.files.get(_require(params, "file_id"))
        if stored is None:
            raise ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(stored.content),
            "file_path": stored.file_path,
        }


# --- helpers for the handlers ----------------------------------------------------------


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(exc: ApiError) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": exc.status, "description": exc.description}
    if exc.parameters:
        body["parameters"] = exc.parameters
    return web.json_response(body, status=exc.status)


def _fault_response(request: web.Request, fault: Fault) -> web.StreamResponse:
    if fault.kind == "drop":
        drop_connection(request)
    if fault.kind == "502-html":
        return web.Response(status=502, text=NGINX_502, content_type="text/html")
    if fault.kind == "429":
        description = f"Too Many Requests: retry after {fault.retry_after}"
        return _error(ApiError(429, description, retry_after=fault.retry_after))
    defaults = {"500": "Internal Server Error", "502": "Bad Gateway", "409": TERMINATED_BY_OTHER}
    return _error(ApiError(int(fault.kind), fault.description or defaults[fault.kind]))


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string, then the body (JSON, urlencoded or multipart), typed per parameter."""
    raw: dict[str, Any] = dict(request.query)
    uploads: dict[str, Upload] = {}
    if request.method == "POST" and request.body_exists:
        if request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON object") from None
            if not isinstance(body, dict):
                raise ApiError(400, "Bad Request: JSON object expected")
            raw.update(body)
        else:
            for name, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    ctype = value.content_type or "application/octet-stream"
                    uploads[name] = Upload(value.filename, ctype, value.file.read())
                else:
                    raw[name] = value
    params = {name: _typed(name, value) for name, value in raw.items()}
    return _attach(params, uploads)


def _typed(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if name == "chat_id":  # an integer, or a "@channelusername"
        return int(value) if value.lstrip("-").isdigit() else value
    try:
        if name in INT_PARAMS:
            return int(value)
        if name in JSON_PARAMS:
            return json.loads(value)
    except ValueError:
        raise ApiError(400, f"Bad Request: can't parse {name}") from None
    if name in BOOL_PARAMS:
        return value.lower() in ("true", "1")
    return value


def _attach(params: dict[str, Any], uploads: dict[str, Upload]) -> dict[str, Any]:
    # aiogram names file parts at random and points at them with "attach://<name>";
    # a part may also carry the parameter's own name.
    resolved = dict(params)
    for name, value in params.items():
        if isinstance(value, str) and value.startswith("attach://"):
            part = value.removeprefix("attach://")
            if part not in uploads:
                raise ApiError(400, f"Bad Request: file {part} not found in the request")
            resolved[name] = uploads[part]
    for name, upload in uploads.items():
        if name in MEDIA_FIELDS.values() and name not in resolved:
            resolved[name] = upload
    return resolved


def _require(params: dict[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise ApiError(400, f"Bad Request: {name} is empty")
    return value


def _copy(params: dict[str, Any], message: dict[str, Any], *names: str) -> None:
    for name in names:
        if params.get(name) is not None:
            message[name] = params[name]


def _with_markup(message: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    # Only an inline keyboard is attached to the sent message; reply keyboards are not.
    markup = params.get("reply_markup")
    if isinstance(markup, dict) and "inline_keyboard" in markup:
        message["reply_markup"] = markup
    return message


def _record(bot: FakeBot, method: str, params: dict[str, Any], result: Any) -> Any:
    bot.sent.append(SentCall(method, params, result))
    return result


def _media_object(bot: FakeBot, kind: str, media: Any, params: dict[str, Any]) -> Any:
    """The `photo`/`video`/... field of the sent message.

    A file_id is kept; a URL or an upload gets a fresh id (an upload is also stored,
    so getFile can serve it back).
    """
    size = None
    if isinstance(media, Upload):
        file_id = f"BQACAgIAAxkBAAM{bot.id}{kind.title()}{bot._next_serial()}"
        bot.add_file(file_id, media.data, f"{kind}s/{media.filename}")
        size = len(media.data)
    elif isinstance(media, str) and media.startswith(("http://", "https://")):
        file_id = f"BQACAgIAAxkBAAM{bot.id}{kind.title()}{bot._next_serial()}"
    else:
        file_id = str(media)
        stored = bot.files.get(file_id)
        size = len(stored.content) if stored else None
    obj: dict[str, Any] = {"file_id": file_id, "file_unique_id": _unique_id(file_id)}
    if size is not None:
        obj["file_size"] = size
    if kind == "photo":
        return [{**obj, "width": 1280, "height": 960}]
    if kind == "video":
        obj.update(width=params.get("width", 640), height=params.get("height", 480))
    if kind in ("video", "audio", "voice"):
        obj["duration"] = params.get("duration", 1)
    if kind == "document" and isinstance(media, Upload):
        # aiogram labels every part application/octet-stream; Telegram goes by the name.
        guessed = mimetypes.guess_type(media.filename)[0]
        obj.update(file_name=media.filename, mime_type=guessed or media.content_type)
    return obj
