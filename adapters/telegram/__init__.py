"""Telegram bots on aiogram 3: our own long-polling loop per bot, or webhooks.

aiogram's `Dispatcher.start_polling` is not used (STACK.md): one bad token or a
429 there stops every bot. Here each broker's bot polls on its own, the offset
advances only after the runtime has committed the updates, and every error
pauses only this bot for as long as it must.

The bot token is part of every Bot API URL: it never appears in a URL we serve,
and aiogram's file URLs are never logged.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import io
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    AdapterError,
    Attachment,
    Capabilities,
    HttpReply,
    InboundEvent,
    Inbox,
    MalformedPayload,
    OutboundMessage,
    PauseScope,
    PermanentSendError,
    RateLimit,
    RecipientMoved,
    RequestRejected,
    RetryableSendError,
    SendResult,
)
from leadline.adapters.telegram.parse import ParsedUpdate, parse_body, parse_update
from leadline.config.providers import ProviderConfig

if TYPE_CHECKING:
    from aiogram import Bot
    from aiogram.types import Message, ReplyParameters

log = logging.getLogger(__name__)


def _errors() -> ModuleType:
    """aiogram takes seconds to import (its types): only processes with a Telegram
    channel pay for it, when the channel starts, not `leadline check`."""
    import aiogram.exceptions

    return aiogram.exceptions


SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"  # noqa: S105 (a header name)
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]
RECENT_ERROR = timedelta(hours=1)
TOKEN_PATTERN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{1,200}")
SECRET_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,256}")
MEDIA_METHODS = {
    "image": "send_photo",
    "video": "send_video",
    "audio": "send_audio",
    "voice": "send_voice",
    "document": "send_document",
}
FIRST_BACKOFF, LAST_BACKOFF = 1.0, 60.0
REVOKED_BACKOFF = 300.0  # a rejected token is retried rarely: it will not fix itself soon
SEND_TIMEOUT = 30  # seconds; the outbox lease (LEADLINE_SEND_LEASE_SECONDS) must be longer


class TelegramConfig(ProviderConfig):
    bot_token: SecretStr
    mode: Literal["polling", "webhook"] = "polling"
    webhook_secret: SecretStr | None = Field(default=None, validate_default=True)
    poll_timeout: int = Field(default=30, ge=1, le=50)

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        if not TOKEN_PATTERN.fullmatch(value.get_secret_value()):
            raise ValueError("must look like 123456789:AAE... (the token BotFather gave)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _secret_for_webhooks(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is None:
            if info.data.get("mode") == "webhook":
                raise ValueError('required when mode = "webhook"')
            return None
        if not SECRET_PATTERN.fullmatch(value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value


class TelegramAdapter(Adapter):
    name = "telegram"
    config_model = TelegramConfig
    capabilities = Capabilities(
        media_kinds=frozenset(MEDIA_METHODS),
        reply_to=True,
        typing_indicator=True,
        webhooks=True,
        polling=True,
        rate_limit=RateLimit(30, 1.0),
        per_chat_rate_limit=RateLimit(1, 1.0),
        per_group_rate_limit=RateLimit(20, 60.0),
    )

    def __init__(self, config: ProviderConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, TelegramConfig)
        self.settings = config
        self._bot: Bot | None = None
        self._jitter = random.Random()  # noqa: S311 (spreading retries, not a secret)

    # --- lifecycle -------------------------------------------------------------

    @property
    def bot(self) -> Bot:
        if self._bot is None:
            raise AdapterError("telegram adapter is not started")
        return self._bot

    async def start(self) -> None:
        from aiogram import Bot
        from aiogram.client.session.aiohttp import AiohttpSession
        from aiogram.client.telegram import TelegramAPIServer

        await self.close()
        api_base = str(self.settings.api_base).rstrip("/") if self.settings.api_base else None
        session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else None
        self._bot = Bot(self.settings.bot_token.get_secret_value(), session=session)
        me = await self.bot.get_me()
        log.info("broker %s: telegram bot @%s ready", self.context.broker_id, me.username)

    async def go_live(self) -> None:
        """`leadline run` only: in webhook mode, the webhook is set to this process at every
        start (a polling bot deletes a webhook only when getUpdates meets one)."""
        if self.settings.mode == "webhook":
            await self.set_webhook(self.webhook_url())

    async def close(self) -> None:
        bot, self._bot = self._bot, None
        if bot is not None:
            await bot.session.close()

    def webhook_url(self) -> str:
        if not self.context.public_url:
            raise AdapterError('mode = "webhook" needs LEADLINE_PUBLIC_URL, the https base')
        return f"{self.context.public_url}/webhooks/{self.context.broker_id}/telegram"

    # --- inbound: webhooks -------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        expected = self.settings.webhook_secret
        if self.settings.mode != "webhook" or expected is None:
            raise RequestRejected("this bot receives by polling, not webhooks", status=404)
        given = headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(
            given.encode("utf-8", "surrogateescape"), expected.get_secret_value().encode()
        ):
            raise RequestRejected(f"{SECRET_HEADER} missing or wrong", status=401)

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[InboundEvent]:
        return parse_body(body).events

    def webhook_reply(self, events: Sequence[InboundEvent]) -> HttpReply:
        """Answer a button press in the webhook's own response (one method call fits)."""
        for event in events:
            query_id = _callback_query_id(event)
            if query_id is not None:
                body = {"method": "answerCallbackQuery", "callback_query_id": query_id}
                return HttpReply(200, json.dumps(body), "application/json")
        return HttpReply(200, "")

    # --- inbound: long polling ---------------------------------------------------

    @property
    def polls(self) -> bool:
        return self.settings.mode == "polling"

    async def poll(self, inbox: Inbox) -> None:
        """Long-poll until cancelled. The offset confirms updates to Telegram, so it
        moves only past updates the runtime has committed."""
        tg = _errors()
        offset: int | None = None
        backoff = FIRST_BACKOFF
        while True:
            try:
                updates = await self.bot.get_updates(
                    offset=offset,
                    timeout=self.settings.poll_timeout,
                    allowed_updates=ALLOWED_UPDATES,
                    request_timeout=self.settings.poll_timeout + 15,
                )
                if updates:
                    offset = await self._hand_over(updates, inbox)
                inbox.set_health(True)
                backoff = FIRST_BACKOFF
            except tg.TelegramRetryAfter as exc:
                inbox.set_health(True, None)
                await asyncio.sleep(exc.retry_after)  # exactly what Telegram asked
            except tg.TelegramUnauthorizedError:
                inbox.set_health(False, "Telegram rejected the bot token (401); check it")
                await asyncio.sleep(REVOKED_BACKOFF)
            except tg.TelegramConflictError as exc:
                await self._on_conflict(exc, inbox)
                backoff = await self._pause(backoff)
            except (
                tg.TelegramNetworkError,
                tg.TelegramServerError,
                tg.ClientDecodeError,  # an HTML error page from a proxy in front of the API
                TimeoutError,
            ) as exc:
                inbox.set_health(False, f"Telegram unreachable: {exc.__class__.__name__}")
                backoff = await self._pause(backoff)
            except Exception:
                # Not stored (the database, most likely): the same updates come again.
                log.exception("broker %s: telegram updates not stored", self.context.broker_id)
                backoff = await self._pause(backoff)

    async def _hand_over(self, updates: Sequence[Any], inbox: Inbox) -> int:
        parsed = [self._parse_polled(update) for update in updates]
        events = [event for item in parsed if item for event in item.events]
        await inbox.receive(events)
        for item in parsed:
            if item and item.callback_query_id:
                await self._answer_callback(item.callback_query_id)
        return max(update.update_id for update in updates) + 1

    def _parse_polled(self, update: Any) -> ParsedUpdate | None:
        raw = update.model_dump(mode="json", by_alias=True, exclude_none=True)
        try:
            return parse_update(raw)
        except MalformedPayload as exc:
            log.warning("broker %s: telegram update skipped: %s", self.context.broker_id, exc)
            return None

    async def _answer_callback(self, query_id: str) -> None:
        try:
            await self.bot.answer_callback_query(query_id)
        except _errors().TelegramAPIError as exc:
            # Too late or already answered: the button press itself is stored.
            log.info("broker %s: callback not answered: %s", self.context.broker_id, exc)

    async def _on_conflict(self, exc: Exception, inbox: Inbox) -> None:
        broker = self.context.broker_id
        if "webhook" in str(exc).lower():
            inbox.set_health(False, "a webhook is set for this bot; deleting it (mode = polling)")
            log.warning(
                "broker %s: a webhook is set for this bot, but brokers.toml says "
                'mode = "polling": deleting the webhook',
                broker,
            )
            await self.delete_webhook()
        else:
            inbox.set_health(False, "another process polls this bot token")
            log.error(
                "broker %s: another process is polling this bot (409); stop it, "
                "or give each process its own bot",
                broker,
            )

    async def _pause(self, backoff: float) -> float:
        await asyncio.sleep(backoff * self._jitter.uniform(0.5, 1.0))
        return min(LAST_BACKOFF, backoff * 2)

    # --- outbound ------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        chat_id = _chat_id(message.channel_user_id)
        reply = _reply_parameters(message.reply_to)
        text = html.escape(message.text) if message.text else None
        tg = _errors()
        try:
            sent = await self._send(chat_id, text, message.attachments, reply)
        except tg.TelegramRetryAfter as exc:
            raise RetryableSendError(exc.message, code="429", retry_after=exc.retry_after) from None
        except tg.TelegramMigrateToChat as exc:
            raise RecipientMoved(
                exc.message, new_channel_user_id=str(exc.migrate_to_chat_id), code="400"
            ) from None
        except tg.TelegramForbiddenError as exc:
            raise PermanentSendError(exc.message, code="403") from None
        except tg.TelegramBadRequest as exc:
            raise PermanentSendError(exc.message, code="400") from None
        except tg.TelegramUnauthorizedError:
            # The whole bot is refused, not this chat: hold back all of its sends.
            raise RetryableSendError(
                "bot token rejected", code="401", retry_after=60, scope=PauseScope.CHANNEL
            ) from None
        except (
            tg.TelegramServerError,
            tg.TelegramNetworkError,
            tg.ClientDecodeError,
            TimeoutError,
        ) as exc:
            raise RetryableSendError(_scrubbed(exc), code="5xx") from None
        return SendResult(channel_message_id=f"{sent.chat.id}:{sent.message_id}")

    async def _send(
        self,
        chat_id: int | str,
        text: str | None,
        attachments: Sequence[Attachment],
        reply: ReplyParameters | None,
    ) -> Message:
        media = [a for a in attachments if a.kind in MEDIA_METHODS and (a.url or a.ref)]
        if not media:
            if not text:
                raise PermanentSendError("nothing to send: no text and no media", code="empty")
            return await self.bot.send_message(
                chat_id,
                text,
                parse_mode="HTML",
                reply_parameters=reply,
                request_timeout=SEND_TIMEOUT,
            )
        last: Message | None = None
        for index, item in enumerate(media):
            method = getattr(self.bot, MEDIA_METHODS[item.kind])
            caption = text if index == 0 else None
            last = await method(
                chat_id,
                item.url or item.ref,
                caption=caption,
                parse_mode="HTML",
                reply_parameters=reply if index == 0 else None,
                request_timeout=SEND_TIMEOUT,
            )
        assert last is not None
        return last

    def recipient_limits(self, channel_user_id: str) -> Sequence[RateLimit]:
        limits = super().recipient_limits(channel_user_id)
        group = self.capabilities.per_group_rate_limit
        # Group and channel chats have negative ids or an @name; users have positive ids.
        if group is not None and not channel_user_id.isdigit():
            return (*limits, group)
        return limits

    async def send_typing(self, message: OutboundMessage) -> None:
        await self.bot.send_chat_action(
            _chat_id(message.channel_user_id), "typing", request_timeout=SEND_TIMEOUT
        )

    # --- webhook management and media -------------------------------------------------

    async def set_webhook(self, url: str) -> None:
        secret = self.settings.webhook_secret
        await self.bot.set_webhook(
            url,
            secret_token=secret.get_secret_value() if secret else None,
            allowed_updates=ALLOWED_UPDATES,
        )

    async def delete_webhook(self) -> None:
        await self.bot.delete_webhook()

    async def webhook_info(self) -> Mapping[str, Any]:
        info = await self.bot.get_webhook_info()
        return info.model_dump(mode="json", exclude_none=True)

    async def subscription_problem(self) -> str | None:
        """Asks getWebhookInfo only: a check changes nothing at Telegram."""
        info = await self.bot.get_webhook_info()
        if self.settings.mode != "webhook":
            if not info.url:
                return None  # long polling: Telegram hands updates to getUpdates
            return (
                f"a webhook is set for this bot ({info.url}): Telegram delivers updates "
                'there, and `leadline run` deletes it to poll (mode = "polling")'
            )
        problems: list[str] = []
        here = info.url == self.webhook_url()
        if not here:
            problems.append(f"Telegram delivers updates to {info.url or 'no webhook'}, not here")
        withheld = [kind for kind in ALLOWED_UPDATES if kind not in (info.allowed_updates or [])]
        if info.allowed_updates is not None and withheld:
            whose = "this" if here else "that"
            problems.append(
                f"Telegram withholds {', '.join(withheld)} updates from {whose} webhook"
            )
        failed = info.last_error_date
        # Telegram keeps its last error after later successes: it matters only while
        # updates pile up behind it.
        if here and failed is not None and info.pending_update_count and _recent(failed):
            problems.append(
                f"Telegram could not deliver here at {failed:%Y-%m-%d %H:%M} UTC "
                f"({info.last_error_message or 'no reason given'}); "
                f"{info.pending_update_count} updates wait"
            )
        return "; ".join(problems) or None

    async def subscribe(self) -> None:
        if self.settings.mode != "webhook":
            raise AdapterError('this bot polls (mode = "polling"): it has no webhook')
        await self.set_webhook(self.webhook_url())

    async def download_media(self, attachment: Attachment) -> bytes:
        """Fetch a file by its Telegram file id. The file URL holds the token: it is
        built and used inside aiogram and never logged or returned."""
        if not attachment.ref:
            raise AdapterError("attachment has no Telegram file id")
        file = await self.bot.get_file(attachment.ref)
        if not file.file_path:
            raise AdapterError("Telegram returned no file path")
        buffer = io.BytesIO()
        try:
            await self.bot.download_file(file.file_path, destination=buffer)
        except aiohttp.ClientResponseError as exc:
            # aiohttp's text holds the file URL, and the URL holds the token.
            raise AdapterError(f"file download failed with HTTP {exc.status}") from None
        return buffer.getvalue()


def _chat_id(channel_user_id: str) -> int | str:
    return int(channel_user_id) if re.fullmatch(r"-?[0-9]+", channel_user_id) else channel_user_id


def _reply_parameters(reply_to: str | None) -> ReplyParameters | None:
    """Our message keys are "chat:message"; Telegram wants the message id alone."""
    from aiogram.types import ReplyParameters

    if not reply_to:
        return None
    message_id = reply_to.rsplit(":", 1)[-1]
    if not message_id.isdigit():
        return None
    return ReplyParameters(message_id=int(message_id), allow_sending_without_reply=True)


def _scrubbed(exc: BaseException) -> str:
    """An error's text without any URL (Bot API URLs hold the token)."""
    return re.sub(r"https?://\S+", "<url>", str(exc)) or exc.__class__.__name__


def _callback_query_id(event: InboundEvent) -> str | None:
    metadata = getattr(event, "metadata", None) or {}
    if not metadata.get("callback_query"):
        return None
    message_id = getattr(event, "channel_message_id", "")
    query_id = message_id.removeprefix("cb:")
    return query_id if re.fullmatch(r"[A-Za-z0-9_-]{1,128}", query_id) else None


def _recent(moment: datetime) -> bool:
    return datetime.now(UTC) - moment < RECENT_ERROR
