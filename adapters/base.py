"""The adapter contract: the only module a provider implementation needs to know.

An adapter speaks one provider's wire protocol and returns normalized values;
the runtime decides what to store and when. Adapters never import the runtime
or the storage layer. One adapter instance serves one broker's channel on one
provider and owns that channel's pooled HTTP session between `start` and
`close`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Protocol

from leadline.config.providers import ProviderConfig

# Re-exported: an adapter needs to know only this module.
from leadline.config.vocabulary import Direction as Direction
from leadline.config.vocabulary import MessageStatus as MessageStatus
from leadline.config.vocabulary import status_advances as status_advances

# --- normalized values -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attachment:
    """A media item. `ref` is the provider's own handle (file id, media id, URL)."""

    kind: str  # image, video, audio, voice, document, sticker, location, contact, ...
    ref: str | None = None
    url: str | None = None
    mime_type: str | None = None
    file_name: str | None = None
    caption: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {
            "kind": self.kind,
            "ref": self.ref,
            "url": self.url,
            "mime_type": self.mime_type,
            "file_name": self.file_name,
            "caption": self.caption,
        }
        cleaned: dict[str, Any] = {k: v for k, v in data.items() if v is not None}
        if self.extra:
            cleaned["extra"] = dict(self.extra)
        return cleaned

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Attachment:
        names = ("ref", "url", "mime_type", "file_name", "caption")
        return cls(
            kind=str(data.get("kind", "file")),
            extra=dict(data.get("extra") or {}),
            **{n: data.get(n) for n in names},
        )


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a chat user sent to the broker."""

    channel_message_id: str
    channel_user_id: str
    text: str | None = None
    channel_username: str | None = None
    user_display_name: str | None = None
    attachments: Sequence[Attachment] = ()
    sent_at: datetime | None = None
    reply_to: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # The provider-side account it arrived on (see `Adapter.account_id`); None: the URL's.
    account: str | None = None
    # False: stored, never answered by the rules (a reaction; an event while another
    # app owns the conversation, Meta's `standby`).
    answer: bool = True


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """The provider reports what happened to a message we sent."""

    channel_message_id: str
    status: MessageStatus
    channel_user_id: str | None = None
    at: datetime | None = None
    error: str | None = None
    account: str | None = None


@dataclass(frozen=True, slots=True)
class InboundEdit:
    """A chat user changed a message they sent: the stored original is updated,
    and the earlier text is kept in its metadata. An edit is not a new message."""

    channel_message_id: str
    channel_user_id: str
    text: str | None = None
    attachments: Sequence[Attachment] = ()
    edited_at: datetime | None = None
    channel_username: str | None = None
    user_display_name: str | None = None
    account: str | None = None
    deleted: bool = False  # the user unsent it: the stored text goes to its edit history


@dataclass(frozen=True, slots=True)
class StatusWatermark:
    """Every message sent to `channel_user_id` up to `up_to` has reached `status`
    (Messenger's delivery and read watermarks)."""

    channel_user_id: str
    status: MessageStatus
    up_to: datetime
    account: str | None = None


@dataclass(frozen=True, slots=True)
class OutboundEcho:
    """A message the broker's own account sent, reported back by the provider (Meta's
    echoes). One sent from elsewhere (a human in the provider's inbox) is stored as an
    outbound message; one of Leadline's own sends (`ours`) is not stored again. An
    echo is never answered."""

    channel_message_id: str
    channel_user_id: str  # whom it was sent to
    text: str | None = None
    attachments: Sequence[Attachment] = ()
    sent_at: datetime | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    ours: bool = False
    account: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderNotice:
    """Something the provider reports about the channel, not about one message (WhatsApp's
    top-level `errors[]`). The runtime logs it and keeps it in `provider_notices`; `key`
    is unique per notice, so a redelivery of the same delivery stores nothing new."""

    key: str
    code: str | None = None
    title: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    account: str | None = None


InboundEvent = (
    InboundMessage | InboundEdit | StatusUpdate | StatusWatermark | OutboundEcho | ProviderNotice
)


@dataclass(frozen=True, slots=True)
class TemplateRef:
    """A message template the provider has approved (WhatsApp), sent by name.

    `parameters` fill the template's body variables ({{1}}, {{2}}, ...) in order.
    """

    name: str
    language: str
    parameters: Sequence[str] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "language": self.language, "parameters": list(self.parameters)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TemplateRef:
        parameters = data.get("parameters") or ()
        return cls(str(data["name"]), str(data["language"]), tuple(str(p) for p in parameters))


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message to send. `ref` is the runtime's stable id for it: it is the same
    on every retry, so providers that can deduplicate may use it."""

    ref: str
    channel_user_id: str
    text: str | None = None
    attachments: Sequence[Attachment] = ()
    reply_to: str | None = None
    # When the chat user last wrote on this channel (None: never). A provider's
    # messaging window counts from it: outside it, free-form messages are refused.
    last_inbound_at: datetime | None = None
    # The provider's id of the chat user's latest message on this channel (None: never
    # wrote): where a provider's typing indicator or read receipt must point.
    last_inbound_id: str | None = None
    # An approved template instead of free-form text (providers with `templates`).
    template: TemplateRef | None = None
    # Written by a human agent: Meta lets it go for 7 days with the HUMAN_AGENT tag.
    human_agent: bool = False


@dataclass(frozen=True, slots=True)
class SendResult:
    """What a send gave. A message that went as several provider calls (a long text cut
    in parts, media after the text) names every part's id in `parts`, in the order they
    went, the last being `channel_message_id`: an echo or a status report of any part
    then finds the message, and no echo of ours is stored as someone else's."""

    channel_message_id: str
    status: MessageStatus = MessageStatus.SENT
    metadata: Mapping[str, Any] = field(default_factory=dict)
    parts: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` messages per `per_seconds`."""

    count: float
    per_seconds: float = 1.0


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an adapter declares about its provider."""

    media_kinds: frozenset[str] = frozenset()
    reply_to: bool = False
    typing_indicator: bool = False
    mark_read: bool = False
    webhooks: bool = False
    polling: bool = False
    rate_limit: RateLimit | None = None
    per_chat_rate_limit: RateLimit | None = None
    per_group_rate_limit: RateLimit | None = None
    messaging_window_seconds: int | None = None
    templates: bool = False  # sends approved templates (OutboundMessage.template)
    # The provider reports the account's sends back (OutboundEcho): a send's own id
    # replaces an echo of it that was stored first.
    echoes: bool = False
    # At most this many messages after each message of the user (TikTok: 10); the
    # dispatcher counts and fails the next one at once.
    reply_quota: int | None = None
    # Webhooks carry no user names, but `Adapter.profile` can ask (Messenger, Instagram).
    profiles: bool = False


@dataclass(frozen=True, slots=True)
class Profile:
    """A chat user as the provider's profile shows them."""

    name: str | None = None
    username: str | None = None


@dataclass(frozen=True, slots=True)
class HttpReply:
    """What the runtime answers an HTTP request with, after the adapter decided."""

    status: int = 200
    body: str = ""
    content_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class ConversationEntry:
    """One stored message as a channel shows it back to a user (web chat history)."""

    ref: str
    direction: str  # "in" or "out"
    text: str | None
    attachments: Sequence[Mapping[str, Any]]
    status: MessageStatus
    created_at: datetime


# --- errors ------------------------------------------------------------------


class AdapterError(Exception):
    """Base of everything an adapter raises on purpose."""


class SendError(AdapterError):
    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class PauseScope(enum.StrEnum):
    """What a throttling answer holds back for its retry_after."""

    RECIPIENT = "recipient"  # this chat only: its later messages wait behind this one
    CHANNEL = "channel"  # every chat of this broker on this provider (the bot, the number)


class RetryableSendError(SendError):
    """Try again later: 429, 5xx, timeouts, connection errors.

    `retry_after` is the provider's own delay, honoured exactly; `scope` says
    whether it concerns the chat or the whole channel.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retry_after: float | None = None,
        scope: PauseScope = PauseScope.RECIPIENT,
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        self.scope = scope


class PermanentSendError(SendError):
    """Never retry: blocked by the user, bad request, outside the messaging window."""


class RecipientMoved(SendError):
    """The chat lives on under another id (a Telegram group became a supergroup):
    re-key the recipient and send again."""

    def __init__(self, message: str, *, new_channel_user_id: str, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.new_channel_user_id = new_channel_user_id


class RequestRejected(AdapterError):
    """An inbound request the adapter refuses; `status` is the HTTP answer (4xx)."""

    status: int = 400

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status is not None:
            self.status = status


class SignatureMissing(RequestRejected):
    status = 401


class SignatureInvalid(RequestRejected):
    status = 403


class MalformedPayload(RequestRejected):
    status = 400


class EventRejected(RequestRejected):
    """The runtime refuses to store an event (an id that is no id, a wrong type)."""

    status = 400


# --- what the runtime offers adapters -----------------------------------------


class Inbox(Protocol):
    """The runtime's side of push channels (long polling, websockets).

    `receive` returns only after the events are committed, so an adapter may
    acknowledge to its provider or client once it returns.
    """

    async def receive(self, events: Sequence[InboundEvent]) -> None: ...

    async def conversation(
        self, channel_user_id: str, limit: int = 200
    ) -> list[ConversationEntry]: ...

    def set_health(self, up: bool, reason: str | None = None) -> None:
        """Report the channel up, or down with why, for `/healthz`; pollers call it."""

    def senders(self) -> int:
        """How many processes send on this channel now, this one included (several
        on one database). A channel whose sends reach only this process's own
        connections (the web chat) catches up with the others' sends when it is more
        than one."""


@dataclass(frozen=True, slots=True)
class AdapterContext:
    broker_id: str
    broker_name: str
    public_url: str | None = None


@dataclass(frozen=True, slots=True)
class PublicRoute:
    """An extra HTTP route an adapter serves at `/{adapter name}/{broker_id}{suffix}`."""

    method: str
    suffix: str
    handler_name: str


# --- the contract ---------------------------------------------------------------


class Adapter:
    """Base class of every provider adapter.

    Subclasses set `name`, `config_model` and `capabilities`, and override what
    their provider supports; everything not overridden answers "not supported".
    """

    name: ClassVar[str] = ""
    config_model: ClassVar[type[ProviderConfig]] = ProviderConfig
    capabilities: ClassVar[Capabilities] = Capabilities()
    public_routes: ClassVar[Sequence[PublicRoute]] = ()

    def __init__(self, config: ProviderConfig, context: AdapterContext) -> None:
        self.config = config
        self.context = context

    @property
    def account_id(self) -> str | None:
        """The provider-side account this channel is (a WhatsApp phone number id, a Page
        id), where one webhook URL can carry several accounts' events (one Meta app
        serving many brokers). Events whose `account` names another broker's channel
        are stored under that broker, provided its own `verify` accepts the request;
        None: the URL alone routes."""
        return None

    # lifecycle
    async def start(self) -> None:
        """Open sessions and check credentials, only looking: nothing may change at the
        provider here (`leadline check --online` starts channels too). Raise to mark the
        channel down."""

    async def go_live(self) -> None:
        """After `start`, in `leadline run` only: tell the provider to deliver to this
        process where it must be told at every start (Telegram's setWebhook in webhook
        mode). Raise to mark the channel down. `leadline check --online` never calls it;
        most adapters leave it as it is."""

    async def close(self) -> None:
        """Release everything `start` opened. Must be safe to call twice."""

    # inbound
    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Check the request's authenticity on the raw bytes; raise SignatureMissing
        or SignatureInvalid. Fails closed: the default refuses everything.

        `headers` are the request's, looked up whatever the case of their names
        (aiohttp's CIMultiDict), as in `parse`."""
        raise SignatureMissing(f"{self.name} does not accept webhooks")

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[InboundEvent]:
        """Turn a verified body into events; raise MalformedPayload on garbage."""
        raise MalformedPayload(f"{self.name} does not accept webhooks")

    def handshake(self, query: Mapping[str, str]) -> HttpReply:
        """Answer the provider's GET verification request."""
        raise RequestRejected(f"{self.name} has no webhook handshake", status=405)

    def webhook_reply(self, events: Sequence[InboundEvent]) -> HttpReply:
        """The body of the 200 that acknowledges a stored delivery."""
        return HttpReply(200, "ok")

    @property
    def polls(self) -> bool:
        """Whether this channel receives by long polling (the runtime then runs `poll`)."""
        return False

    async def poll(self, inbox: Inbox) -> None:
        """Long-poll until cancelled, handing updates to `inbox` (polling adapters)."""
        raise NotImplementedError(f"{self.name} does not poll")

    # outbound
    async def send(self, message: OutboundMessage) -> SendResult:
        raise PermanentSendError(f"{self.name} cannot send messages", code="unsupported")

    def recipient_limits(self, channel_user_id: str) -> Sequence[RateLimit]:
        """The limits on sends to one chat; a provider may limit groups harder."""
        limit = self.capabilities.per_chat_rate_limit
        return (limit,) if limit is not None else ()

    async def send_typing(self, message: OutboundMessage) -> None:
        """Show a typing indicator before `message` goes; a no-op where the provider has
        none. The runtime sends the message whether or not this fails."""

    async def mark_read(self, channel_user_id: str, channel_message_id: str) -> None:
        """Mark an inbound message read; a no-op where the provider has none."""

    # who a chat user is
    async def profile(self, channel_user_id: str) -> Profile | None:
        """The chat user's name as the provider shows it, for providers whose webhooks
        carry none (`capabilities.profiles`). None when the provider has no profile to
        give (not shared, no consent); raise AdapterError when it could not be asked
        now (unreachable, throttled), so the runtime asks again later."""
        return None

    # webhook management
    async def set_webhook(self, url: str) -> None:
        raise NotImplementedError(f"{self.name} has no webhook management")

    async def delete_webhook(self) -> None:
        raise NotImplementedError(f"{self.name} has no webhook management")

    async def webhook_info(self) -> Mapping[str, Any]:
        raise NotImplementedError(f"{self.name} has no webhook management")

    async def subscription_problem(self) -> str | None:
        """Why the provider would not deliver this channel's webhooks here (Meta
        unsubscribes a Page after an hour of failed deliveries; a Telegram webhook set
        elsewhere); None when all is well or the provider cannot tell."""
        return None

    async def subscribe(self) -> None:
        """Have the provider deliver this channel's webhooks here again."""
        raise NotImplementedError(f"{self.name} has no webhook subscription")

    # media
    async def download_media(self, attachment: Attachment) -> bytes:
        raise NotImplementedError(f"{self.name} cannot download media")
