"""WhatsApp Cloud API: webhooks parsed here (all of a batch), sends through pywa_async.

pywa reads only the first entry and the first message of a webhook and refuses
payloads without `contacts[].user_id` (STACK.md), so inbound bodies are parsed by
`parse`, which walks everything. Outbound calls go through pywa's async client on
its own httpx client, pointed at `api_base` when one is set.

The access token rides in the Authorization header only: no URL, log line or error
text here holds it. Meta's media URLs hold a signed hash: never logged either.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import httpx
from pywa.errors import WhatsAppError
from pywa_async import WhatsApp
from pywa_async.types.sent_update import SentMessage

from leadline.adapters import meta
from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    AdapterError,
    Attachment,
    Capabilities,
    InboundEvent,
    OutboundMessage,
    RateLimit,
    SendResult,
)
from leadline.adapters.parts import PartSender, sent_in_parts
from leadline.adapters.whatsapp.config import WhatsAppConfig
from leadline.adapters.whatsapp.errors import describe, network_error, send_error
from leadline.adapters.whatsapp.outbound import (
    MEDIA_KINDS,
    MediaStep,
    Step,
    TemplateStep,
    TextStep,
    plan,
    progress_key,
    window_open,
)
from leadline.adapters.whatsapp.parse import parse_body
from leadline.config.providers import ProviderConfig

log = logging.getLogger(__name__)

SEND_TIMEOUT = 30.0  # seconds per Cloud API call
# All the calls of one message together: well within the outbox lease (90 s by default),
# so a slow multi-part send is never taken by a second sender meanwhile.
SEND_BUDGET = 60.0


class WhatsAppAdapter(meta.MetaWebhooks, Adapter):
    name = "whatsapp"
    config_model = WhatsAppConfig
    capabilities = Capabilities(
        media_kinds=frozenset(MEDIA_KINDS),
        reply_to=True,
        typing_indicator=True,
        mark_read=True,
        webhooks=True,
        rate_limit=RateLimit(80, 1.0),  # per business number (Meta's default throughput)
        per_chat_rate_limit=RateLimit(1, 6.0),  # Meta's pair rate limit
        messaging_window_seconds=24 * 3600,
        templates=True,
    )

    def __init__(self, config: ProviderConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, WhatsAppConfig)
        self.settings = config
        self._client: WhatsApp | None = None
        self._http: httpx.AsyncClient | None = None
        self._parts = PartSender(SEND_BUDGET)

    @property
    def account_id(self) -> str:
        return self.settings.phone_number_id

    # --- lifecycle -------------------------------------------------------------------

    @property
    def client(self) -> WhatsApp:
        if self._client is None:
            raise AdapterError("whatsapp adapter is not started")
        return self._client

    async def start(self) -> None:
        await self.close()
        broker = self.context.broker_id
        meta.warn_if_unsigned(self.settings, broker, self.name)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(SEND_TIMEOUT, connect=10.0))
        self._client = WhatsApp(
            phone_id=self.settings.phone_number_id,
            token=self.settings.access_token.get_secret_value(),
            session=self._http,
            api_version=self.settings.api_version,
            filter_updates=False,
            validate_updates=False,
        )
        if self.settings.api_base is not None:
            # pywa sets the Graph base URL on the client it is given; a local fake or
            # a proxy replaces it.
            base = str(self.settings.api_base).rstrip("/")
            self._http.base_url = httpx.URL(f"{base}/v{self.settings.api_version}")
        try:
            number = await self.client.get_business_phone_number()
        except WhatsAppError as exc:
            raise AdapterError(f"WhatsApp refused the number or token: {describe(exc)}") from None
        except httpx.HTTPError as exc:
            raise AdapterError(f"WhatsApp unreachable: {exc.__class__.__name__}") from None
        log.info(
            "broker %s: whatsapp number %s (%s) ready",
            broker,
            number.display_phone_number,
            number.verified_name,
        )

    async def close(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.aclose()

    # --- inbound -----------------------------------------------------------------------

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[InboundEvent]:
        """Every event of the delivery, each tagged with the business number it came
        to: the runtime stores it under the broker that owns that number."""
        delivery = parse_body(body)
        if delivery.skipped:
            log.info(
                "broker %s: whatsapp delivery: %d items held no chat event",
                self.context.broker_id,
                delivery.skipped,
            )
        return [
            dataclasses.replace(item.event, account=item.phone_number_id)
            for item in (*delivery.routed, *delivery.notices)
        ]

    # --- outbound ----------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        steps = plan(message, datetime.now(UTC), self.settings.window_template)
        user = message.channel_user_id
        sent = await self._parts.send(
            progress_key(message, steps), steps, lambda step: self._call(user, step)
        )
        return sent_in_parts(sent, _sent_metadata(steps))

    async def _call(self, user: str, step: Step) -> str:
        """One Cloud API call; returns the message id WhatsApp gave."""
        to = _recipient(user)
        try:
            if isinstance(step, TextStep):
                sent = await self.client.send_message(
                    to, step.body, reply_to_message_id=step.reply_to
                )
            elif isinstance(step, MediaStep):
                sent = await self._send_media(to, step)
            else:
                sent = await self._send_template(to, step)
        except WhatsAppError as exc:
            raise send_error(exc) from None
        except httpx.HTTPError as exc:
            raise network_error(exc) from None
        return sent.id

    async def _send_media(self, to: str, step: MediaStep) -> SentMessage:
        media = step.link or step.media_id
        reply = step.reply_to
        client = self.client
        match step.kind:
            case "image":
                return await client.send_image(to, media, step.caption, reply_to_message_id=reply)
            case "video":
                return await client.send_video(to, media, step.caption, reply_to_message_id=reply)
            case "document":
                name = step.file_name or None
                return await client.send_document(
                    to, media, name, step.caption, reply_to_message_id=reply
                )
            case "audio":
                return await client.send_audio(to, media, reply_to_message_id=reply)
            case _:
                return await client.send_sticker(to, media, reply_to_message_id=reply)

    async def _send_template(self, to: str, step: TemplateStep) -> SentMessage:
        from pywa.types.templates import BodyText, TemplateLanguage

        template = step.template
        params = [BodyText.params(*template.parameters)] if template.parameters else None
        return await self.client.send_template(
            to,
            template.name,
            TemplateLanguage(template.language),
            params,
            reply_to_message_id=step.reply_to,
        )

    async def send_typing(self, message: OutboundMessage) -> None:
        """WhatsApp shows typing on the user's latest message (and marks it read); it
        ends when the reply arrives or after 25 s."""
        if message.last_inbound_id and window_open(message.last_inbound_at, datetime.now(UTC)):
            await self.client.indicate_typing(message.last_inbound_id)

    async def mark_read(self, channel_user_id: str, channel_message_id: str) -> None:
        await self.client.mark_message_as_read(channel_message_id)

    # --- media -------------------------------------------------------------------------

    async def download_media(self, attachment: Attachment) -> bytes:
        """The file behind an inbound media id. Its URL expires 5 minutes after it is
        issued, so it is resolved now, and once more if it expired on the way."""
        if not attachment.ref:
            raise AdapterError("attachment has no WhatsApp media id")
        for attempt in (1, 2):
            try:
                url = await self.client.get_media_url(attachment.ref)
                return await self.client.get_media_bytes(url.url)
            except WhatsAppError as exc:
                raise AdapterError(f"media download failed: {describe(exc)}") from None
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if status == 404 and attempt == 1:
                    continue  # the URL expired between the two calls: a new one
                # Never the exception's text: it quotes the signed media URL.
                why = "the media URL expired twice" if status == 404 else f"HTTP {status}"
                raise AdapterError(f"media download failed: {why}") from None
            except httpx.HTTPError as exc:
                raise AdapterError(f"media download failed: {exc.__class__.__name__}") from None
        raise AssertionError("unreachable: the second attempt returns or raises")


def _recipient(channel_user_id: str) -> str:
    """A wa_id goes with its "+": Meta prepends the business number's country code to a
    `to` without one. A BSUID (a user who hides their number) goes as it is."""
    return f"+{channel_user_id}" if channel_user_id.isdigit() else channel_user_id


def _sent_metadata(steps: Sequence[Step]) -> dict[str, object]:
    """What the stored row should remember besides the parts' ids: the template a closed
    window turned it into."""
    metadata: dict[str, object] = {}
    first = steps[0]
    if isinstance(first, TemplateStep) and first.fallback:
        metadata["sent_as_template"] = first.template.name
    return metadata
