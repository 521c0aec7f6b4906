"""Meta's Messenger Platform, which Messenger and Instagram Direct share.

Both take webhooks in one format (`parse`), signed and verified as WhatsApp's are
(`adapters/meta.py`), and send through the Graph Send API (`POST /{id}/messages`)
with plain aiohttp calls (`client`). `GraphMessagingAdapter` is everything they
share; `adapters/messenger` and `adapters/instagram` say only what differs: their
settings, where they send and what they may send.

Meta unsubscribes an app from a Page or account after an hour of failed webhook
deliveries: the subscription is checked at every start (a warning names the fix)
and by `leadline check --online`; `leadline webhooks subscribe` restores it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiohttp

from leadline.adapters import meta
from leadline.adapters.base import (
    Adapter,
    AdapterContext,
    AdapterError,
    Capabilities,
    InboundEvent,
    OutboundMessage,
    Profile,
    RateLimit,
    SendResult,
)
from leadline.adapters.graph_messaging.client import GraphClient, GraphError
from leadline.adapters.graph_messaging.errors import (
    network_error,
    profile_unavailable,
    send_error,
)
from leadline.adapters.graph_messaging.outbound import (
    MARGIN,
    PACED,
    WINDOW,
    Rules,
    media_type,
    plan,
)
from leadline.adapters.graph_messaging.parse import parse_body
from leadline.adapters.pacing import Pacer
from leadline.adapters.parts import PartSender, sent_in_parts
from leadline.config.providers import ProviderConfig

log = logging.getLogger(__name__)

SEND_BUDGET = 60.0  # all the calls of one message: well within the outbox lease (90 s)
SUBSCRIBED_FIELD = "messages"  # without it no message arrives


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one channel's calls go."""

    base_url: str  # https://graph.facebook.com or https://graph.instagram.com (or api_base)
    token: str
    node: str  # the id whose /messages sends (a Page, an Instagram account)
    subscriptions: str  # the id whose /subscribed_apps the webhooks depend on


def messaging_capabilities(per_second: float) -> Capabilities:
    """What Messenger and Instagram can do; they differ only in their rate."""
    return Capabilities(
        media_kinds=frozenset({"image", "audio", "voice", "video", "document"}),
        reply_to=True,
        typing_indicator=True,
        mark_read=True,
        webhooks=True,
        rate_limit=RateLimit(per_second, 1.0),  # for text; audio and video: 10/s (Pacer)
        messaging_window_seconds=24 * 3600,
        echoes=True,
        profiles=True,
    )


class GraphMessagingAdapter(meta.MetaWebhooks, Adapter):
    """The shared half of the Messenger and Instagram adapters (not a provider itself)."""

    object_kind: ClassVar[str] = ""  # the webhook body's `object`
    rules: ClassVar[Rules] = Rules()
    subscribed_fields: ClassVar[Sequence[str]] = ()
    profile_fields: ClassVar[str] = ""  # what `GET /<user id>` asks for (User Profile API)
    settings: meta.MetaAppConfig

    def __init__(self, config: ProviderConfig, context: AdapterContext) -> None:
        super().__init__(config, context)
        assert isinstance(config, meta.MetaAppConfig)
        self.settings = config
        self._client: GraphClient | None = None
        self._account: str | None = None
        self._parts = PartSender(SEND_BUDGET)
        self._media = Pacer(10, 1.0)  # audio and video: 10 per second

    # --- what a provider says ---------------------------------------------------------

    def endpoint(self) -> Endpoint:
        raise NotImplementedError

    async def identify(self, client: GraphClient) -> str:
        """Check the credentials against the API; returns the account id webhooks name."""
        raise NotImplementedError

    def read_profile(self, answer: Mapping[str, Any]) -> Profile:
        """A User Profile API answer as a Profile."""
        raise NotImplementedError

    async def our_app_id(self, client: GraphClient) -> str | None:
        """The app the token belongs to, to find it among the subscribed apps; None
        where the token can only see its own app's subscription."""
        return None

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def account_id(self) -> str | None:
        return self._account

    @property
    def client(self) -> GraphClient:
        if self._client is None:
            raise AdapterError(f"{self.name} adapter is not started")
        return self._client

    async def start(self) -> None:
        await self.close()
        broker = self.context.broker_id
        meta.warn_if_unsigned(self.settings, broker, self.name)
        endpoint = self.endpoint()
        self._client = GraphClient(endpoint.base_url, self.settings.api_version, endpoint.token)
        await self._client.start()
        try:
            self._account = await self.identify(self._client)
        except GraphError as exc:
            raise AdapterError(f"Meta refused the account or token: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdapterError(f"Graph API unreachable: {exc.__class__.__name__}") from None
        await self._report_subscription()

    async def _report_subscription(self) -> None:
        """A startup line when webhooks would not arrive; the channel runs either way."""
        broker = self.context.broker_id
        try:
            problem = await self.subscription_problem()
        except GraphError as exc:
            problem = f"the webhook subscription could not be checked ({exc})"
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = f"the webhook subscription could not be checked ({type(exc).__name__})"
        if problem:
            log.warning(
                "broker %s: %s: %s; run `leadline webhooks subscribe %s %s`",
                broker, self.name, problem, broker, self.name,
            )  # fmt: skip

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # --- inbound ------------------------------------------------------------------------

    def parse(self, headers: Mapping[str, str], body: bytes) -> list[InboundEvent]:
        delivery = parse_body(body, self.object_kind)
        if delivery.skipped:
            log.info(
                "broker %s: %s delivery: %d items held no chat event",
                self.context.broker_id, self.name, delivery.skipped,
            )  # fmt: skip
        return delivery.events

    # --- outbound -----------------------------------------------------------------------

    async def send(self, message: OutboundMessage) -> SendResult:
        bodies = plan(message, datetime.now(UTC), self.rules)
        key = f"{message.ref}:{len(bodies)}"
        sent = await self._parts.send(key, bodies, self._send_one)
        return sent_in_parts(sent)

    async def _send_one(self, body: Mapping[str, Any]) -> str:
        if media_type(body) in PACED:
            await self._media.wait()
        answer = await self._call(f"{self.endpoint().node}/messages", body)
        message_id = answer.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise send_error(GraphError(200, None, None, "the answer held no message_id"))
        return message_id

    async def _call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return await self.client.post(path, body)
        except GraphError as exc:
            raise send_error(exc) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise network_error(exc) from None

    async def send_typing(self, message: OutboundMessage) -> None:
        """A separate sender action (Meta refuses it together with content), only while
        the window is open: outside it the action itself is refused."""
        last = message.last_inbound_at
        if last is not None and datetime.now(UTC) < last + WINDOW - MARGIN:
            await self._sender_action(message.channel_user_id, "typing_on")

    async def mark_read(self, channel_user_id: str, channel_message_id: str) -> None:
        await self._sender_action(channel_user_id, "mark_seen")

    async def _sender_action(self, user: str, action: str) -> None:
        body = {"recipient": {"id": user}, "sender_action": action}
        await self._call(f"{self.endpoint().node}/messages", body)

    # --- who a chat user is ---------------------------------------------------------------

    async def profile(self, channel_user_id: str) -> Profile | None:
        try:
            answer = await self.client.get(channel_user_id, {"fields": self.profile_fields})
        except GraphError as exc:
            if profile_unavailable(exc):
                return None
            raise AdapterError(f"the profile could not be read: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AdapterError(f"Graph API unreachable: {exc.__class__.__name__}") from None
        found = self.read_profile(answer)
        return found if found.name or found.username else None

    # --- webhook subscription -------------------------------------------------------------

    async def subscription_problem(self) -> str | None:
        subscriptions = self.endpoint().subscriptions
        answer = await self.client.get(f"{subscriptions}/subscribed_apps")
        apps = [a for a in answer.get("data", []) if isinstance(a, dict)]
        app_id = await self.our_app_id(self.client)
        ours = [a for a in apps if app_id is None or str(a.get("id")) == app_id]
        if not ours:
            return f"{subscriptions} is not subscribed to this app's webhooks"
        fields = {f for a in ours for f in a.get("subscribed_fields", []) if isinstance(f, str)}
        if SUBSCRIBED_FIELD not in fields:
            return f"{subscriptions} is subscribed without the {SUBSCRIBED_FIELD!r} field"
        return None

    def fields_to_subscribe(self) -> Sequence[str]:
        """The webhook fields `subscribe` asks for on `Endpoint.subscriptions`."""
        return self.subscribed_fields

    async def subscribe(self) -> None:
        fields = ",".join(self.fields_to_subscribe())
        await self.client.post(
            f"{self.endpoint().subscriptions}/subscribed_apps", params={"subscribed_fields": fields}
        )


async def app_id_of(client: GraphClient) -> str | None:
    """The app a Page token belongs to (`GET /app`); None if Graph will not say."""
    try:
        answer = await client.get("app")
    except GraphError:
        return None
    app_id = answer.get("id")
    return str(app_id) if app_id else None
