"""Conformance kits for the built-in adapters: each adapter's config, its provider's own
sample deliveries (tests/helpers' provider fixtures), and the fakes of tests/fakes/
wrapped as the suite's `FakeApi` (`throttle_next`: the provider's rate-limit answer;
`reject_next`: its bad-token answer).

`KITS` maps each adapter name to a factory of its kit; tests/test_conformance.py runs
every check on every kit, and fails for a built-in adapter that has none.
`WITHOUT_KIT` names the built-ins the suite has nothing to check on, and why.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from leadline.adapters import meta
from leadline.adapters.conformance import Kit, Sample
from leadline.adapters.instagram import InstagramAdapter
from leadline.adapters.messenger import MessengerAdapter
from leadline.adapters.telegram import SECRET_HEADER, TelegramAdapter
from leadline.adapters.tiktok import TikTokAdapter
from leadline.adapters.whatsapp import WhatsAppAdapter
from tests.fakes.graph_api import FakeGraph, FakeNumber
from tests.fakes.graph_pages import FakePage
from tests.fakes.telegram_api import UNAUTHORIZED, FakeBot, FakeTelegram
from tests.fakes.tiktok_api import FakeTikTok
from tests.fakes.tiktok_api import signature as tiktok_signature
from tests.fakes.tiktok_api import webhook as tiktok_webhook
from tests.helpers import fixture_json, provider_fixture

KitFactory = Callable[[], Kit]

# Meta's ids as the fixtures name them: the sends go to the fixtures' own users.
WA_NUMBER = "106540352242922"
WA_USER = "16505551234"
PAGE = "102030405060708"
PSID = "1254459154682919"
IG_ACCOUNT = "17841400000000001"
IGSID = "1234567890123456"
TG_USER = "123456789"

# Every secret is distinct, so a leak names which one.
META_APP = {"app_secret": "conformance_app_secret_NOT_REAL", "verify_token": "verify-NOT-REAL-7"}
WA_TOKEN = "EAAGconformanceWhatsAppTokenNOTREAL1"
PAGE_TOKEN = "EAAGconformancePageTokenNOTREAL2"
IG_TOKEN = "IGQWconformanceTokenNOTREAL3"
TG_TOKEN = "123456789:AAconformance-token_NOT_REAL4"
TG_SECRET = "conformance_webhook_secret-NOT_REAL5"
TT_BUSINESS = "tt-biz-EXAMPLE-0001"
TT_TOKEN = "tiktok-conformance-token-NOT-REAL6"
TT_SECRET = "tiktok-conformance-secret-NOT-REAL7"
TG_RETRY_AFTER = 7  # not the fake's default (3): the kit proves the adapter passes it on


def recent() -> datetime:
    """A lead's last message a minute ago: inside every provider's messaging window."""
    return datetime.now(UTC) - timedelta(minutes=1)


def fixture_bytes(name: str) -> bytes:
    return provider_fixture(name).read_bytes()


def sample(name: str, messages: int = 0, statuses: int = 0) -> Sample:
    """A provider fixture as the provider sends it (its bytes as stored)."""
    return Sample(name, fixture_bytes(name), messages=messages, statuses=statuses)


def batch(name: str, fixtures: list[str], messages: int, statuses: int) -> Sample:
    """One Messenger Platform delivery holding the `messaging` items of several fixtures,
    as Meta batches them (one entry, many items)."""
    payload = fixture_json(fixtures[0])
    entry = payload["entry"][0]
    for other in fixtures[1:]:
        entry["messaging"] += fixture_json(other)["entry"][0]["messaging"]
    return Sample(name, json.dumps(payload).encode(), messages=messages, statuses=statuses)


def meta_sign(body: bytes, at: float) -> Mapping[str, str]:
    # Meta's signature carries no time: `at` does not enter it.
    return {meta.SIGNATURE_HEADER: meta.sign(META_APP["app_secret"], body)}


# --- the fakes as the suite's FakeApi ---------------------------------------------------


@dataclass
class MetaApi:
    """The fake Graph API serving one WhatsApp number, Page or Instagram account."""

    graph: FakeGraph
    target: FakeNumber | FakePage
    throttle_code: str  # WhatsApp: 130429 (throughput); Messenger, Instagram: 613

    def app(self) -> web.Application:
        return self.graph.app()

    def throttle_next(self) -> None:
        self.target.fail_next(self.throttle_code)

    def reject_next(self) -> None:
        self.target.fail_next("190")  # the token is invalid or expired


class TelegramApi:
    """The fake Bot API with the kit's bot. The fake has no one-off 401 (only `revoke`,
    for good), so a middleware answers the next send as Telegram answers a bad token."""

    def __init__(self) -> None:
        self.telegram = FakeTelegram()
        self.bot: FakeBot = self.telegram.add_bot(TG_TOKEN, "conformance_bot")
        self._reject = False

    def app(self) -> web.Application:
        app = self.telegram.app()
        app.middlewares.append(self._rejecting)
        return app

    def throttle_next(self) -> None:
        self.bot.fail_next("sendMessage", "429", retry_after=TG_RETRY_AFTER)

    def reject_next(self) -> None:
        self._reject = True

    @web.middleware
    async def _rejecting(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if self._reject and request.match_info.get("method", "").lower() == "sendmessage":
            self._reject = False
            body = {"ok": False, "error_code": 401, "description": UNAUTHORIZED}
            return web.json_response(body, status=401)
        return await handler(request)


def whatsapp_api() -> MetaApi:
    graph = FakeGraph()
    return MetaApi(graph, graph.add_number(WA_NUMBER, WA_TOKEN), "130429")


def messenger_api() -> MetaApi:
    graph = FakeGraph()
    return MetaApi(graph, graph.add_page(PAGE, PAGE_TOKEN), "613")


def instagram_api() -> MetaApi:
    graph = FakeGraph()  # graph.instagram.com: the Instagram Login form
    return MetaApi(graph, graph.add_instagram_account(IG_ACCOUNT, IG_TOKEN), "613")


# --- the kits --------------------------------------------------------------------------------


def whatsapp_kit() -> Kit:
    return Kit(
        adapter=WhatsAppAdapter,
        config={"phone_number_id": WA_NUMBER, "access_token": WA_TOKEN, **META_APP},
        secrets=[WA_TOKEN, *META_APP.values()],
        samples=[
            sample("whatsapp_text.json", messages=1),
            sample("whatsapp_image.json", messages=1),
            sample("whatsapp_interactive_button_reply.json", messages=1),
            sample("whatsapp_interactive_list_reply.json", messages=1),
            # Three messages of two users and a status, in two changes of one entry.
            sample("whatsapp_multi_messages.json", messages=3, statuses=1),
            sample("whatsapp_text_unicode.raw_body.json", messages=1),
            sample("whatsapp_status_failed.json", statuses=1),
        ],
        # One message's life, as the fixtures hold it: sent, delivered, read.
        status_samples=[
            sample("whatsapp_status_sent.json", statuses=1),
            sample("whatsapp_status_delivered.json", statuses=1),
            sample("whatsapp_status_read.json", statuses=1),
        ],
        recipient=WA_USER,
        sign=meta_sign,
        fake_api=whatsapp_api,
        throttle_delay=None,  # Meta's 130429 says no delay
        outbound={"last_inbound_at": recent()},
    )


def messenger_kit() -> Kit:
    return Kit(
        adapter=MessengerAdapter,
        config={"page_id": PAGE, "page_access_token": PAGE_TOKEN, **META_APP},
        secrets=[PAGE_TOKEN, *META_APP.values()],
        samples=[
            sample("messenger_text.json", messages=1),
            sample("messenger_attachment.json", messages=1),
            sample("messenger_postback.json", messages=1),
            sample("messenger_echo.json"),  # an OutboundEcho: neither a message nor a status
            # A delivery names its mids: one status each (its watermark is not a StatusUpdate).
            batch(
                "messenger batch: text, attachment, postback, delivery",
                [
                    "messenger_text.json",
                    "messenger_attachment.json",
                    "messenger_postback.json",
                    "messenger_delivery.json",
                ],
                messages=3,
                statuses=1,
            ),
        ],
        # Meta's order for one message: delivered, then read (a read has only a watermark).
        status_samples=[
            sample("messenger_delivery.json", statuses=1),
            sample("messenger_read.json"),
        ],
        recipient=PSID,
        sign=meta_sign,
        fake_api=messenger_api,
        throttle_delay=None,  # Meta's 613 says no delay
        outbound={"last_inbound_at": recent()},
    )


def instagram_seen() -> Sample:
    """`messaging_seen` (PROVIDERS.md §5: `read{mid}`) for the message instagram_echo.json
    shows the account sending; there is no fixture of it."""
    echo = fixture_json("instagram_echo.json")
    entry = copy.deepcopy(echo["entry"][0])
    sent = entry["messaging"][0]
    entry["messaging"] = [
        {
            "sender": {"id": IGSID},
            "recipient": {"id": IG_ACCOUNT},
            "timestamp": sent["timestamp"] + 60_000,
            "read": {"mid": sent["message"]["mid"]},
        }
    ]
    body = json.dumps({"object": "instagram", "entry": [entry]}).encode()
    return Sample("instagram messaging_seen", body, statuses=1)


def instagram_kit() -> Kit:
    return Kit(
        adapter=InstagramAdapter,
        config={"ig_account_id": IG_ACCOUNT, "access_token": IG_TOKEN, **META_APP},
        secrets=[IG_TOKEN, *META_APP.values()],
        samples=[
            sample("instagram_text.json", messages=1),
            sample("instagram_image.json", messages=1),
            sample("instagram_story_reply.json", messages=1),
            sample("instagram_echo.json"),  # an OutboundEcho
            batch(
                "instagram batch: text, image, story reply, echo",
                [
                    "instagram_text.json",
                    "instagram_image.json",
                    "instagram_story_reply.json",
                    "instagram_echo.json",
                ],
                messages=3,
                statuses=0,
            ),
        ],
        # Instagram reports only `read` (no delivery): one stage, in order trivially.
        status_samples=[instagram_seen()],
        recipient=IGSID,
        sign=meta_sign,
        fake_api=instagram_api,
        throttle_delay=None,
        outbound={"last_inbound_at": recent()},
    )


def telegram_kit() -> Kit:
    """Telegram in webhook mode. A webhook request carries exactly one Update (the Bot
    API never batches them), so there is no batch sample; Telegram reports no statuses."""
    return Kit(
        adapter=TelegramAdapter,
        config={"bot_token": TG_TOKEN, "mode": "webhook", "webhook_secret": TG_SECRET},
        secrets=[TG_TOKEN, TG_SECRET],
        samples=[
            sample("telegram_text.json", messages=1),
            sample("telegram_command.json", messages=1),
            sample("telegram_photo.json", messages=1),
            sample("telegram_callback_query.json", messages=1),  # the button's data as text
            sample("telegram_edited.json"),  # an InboundEdit, not a new message
        ],
        recipient=TG_USER,
        sign=lambda body, at: {SECRET_HEADER: TG_SECRET},
        # The secret token is a shared password, not a signature: it covers no body.
        signs_body=False,
        fake_api=TelegramApi,
        throttle_delay=TG_RETRY_AFTER,  # Telegram's 429 gives `retry_after`
        reads=bot_api_reads,
    )


def bot_api_reads(http_method: str, path: str) -> bool:
    """The Bot API takes every method by POST: its getX methods only read, but getUpdates
    confirms updates (and ends another poller's long poll)."""
    method = path.rsplit("/", 1)[-1].lower()
    return method.startswith("get") and method != "getupdates"


def tiktok_kit() -> Kit:
    """TikTok: one event per webhook (PROVIDERS.md §6 [U]), so no batch sample; a read is
    its only status. The signature carries a time: a stale one is a replay."""
    return Kit(
        adapter=TikTokAdapter,
        config={"business_id": TT_BUSINESS, "access_token": TT_TOKEN, "client_secret": TT_SECRET},
        secrets=[TT_TOKEN, TT_SECRET],
        samples=[
            Sample("tiktok_text.json", json.dumps(fixture_json("tiktok_text.json")).encode(), 1),
            Sample("echo", tiktok_webhook("im_send_msg", tiktok_content("tt-out-1"), TT_BUSINESS)),
        ],
        status_samples=[
            Sample(
                "read",
                tiktok_webhook("im_mark_read_msg", tiktok_content("tt-out-1"), TT_BUSINESS),
                statuses=1,
            )
        ],
        recipient="tt-conv-EXAMPLE-0001",
        sign=lambda body, at: {"TikTok-Signature": tiktok_signature(TT_SECRET, body, at)},
        fake_api=lambda: FakeTikTok(TT_BUSINESS, TT_TOKEN),
        replay_window=300,
        throttle_delay=None,  # TikTok's 40064 gives no delay
        outbound={"last_inbound_at": recent()},
    )


def tiktok_content(message_id: str) -> dict[str, Any]:
    return {
        "conversation_id": "tt-conv-EXAMPLE-0001",
        "message_id": message_id,
        "timestamp": 1767225600000,
        "type": "text",
        "text": {"body": "Yes, it is in stock."},
    }


KITS: dict[str, KitFactory] = {
    "whatsapp": whatsapp_kit,
    "messenger": messenger_kit,
    "instagram": instagram_kit,
    "telegram": telegram_kit,
    "tiktok": tiktok_kit,
}

# Built-ins the suite has nothing to check on. test_conformance.py proves each takes no
# webhooks, so one that starts taking them needs a kit.
WITHOUT_KIT: dict[str, str] = {
    "webchat": (
        "no webhooks and no provider API: the visitor's browser talks to Leadline's own "
        "websocket (tests/test_webchat_socket.py) and the config holds no secret"
    ),
}
