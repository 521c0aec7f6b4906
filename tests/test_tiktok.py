"""The TikTok Business Messaging adapter: its signature check, parser and sends against the fake
TikTok API, and end to end through the real webhook route and dispatcher.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from leadline.adapters.base import (
    AdapterContext,
    Attachment,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    OutboundEcho,
    OutboundMessage,
    PauseScope,
    PermanentSendError,
    RetryableSendError,
    SignatureInvalid,
    SignatureMissing,
    StatusUpdate,
    StatusWatermark,
)
from leadline.adapters.tiktok import TikTokAdapter, TikTokConfig
from leadline.runtime.sending import Outgoing
from tests.conftest import AppFactory, wait_for
from tests.fakes.serving import running_fake
from tests.fakes.tiktok_api import FakeTikTok, signature, webhook
from tests.helpers import fixture_json as fixture
from tests.helpers import rows

BUSINESS = "tt-biz-EXAMPLE-0001"
TOKEN = "tiktok-access-token-NOT-REAL"
SECRET = "tiktok_client_secret_NOT_REAL"  # the signature fixture's
CONVERSATION = "tt-conv-EXAMPLE-0001"


def adapter(api_base: str | None = None, now: float | None = None) -> TikTokAdapter:
    table: dict[str, Any] = {
        "business_id": BUSINESS,
        "access_token": TOKEN,
        "client_secret": SECRET,
    }
    if api_base:
        table["api_base"] = api_base
    clock = (lambda: now) if now is not None else time.time
    return TikTokAdapter(TikTokConfig.model_validate(table), AdapterContext("demo", "Demo"), clock)


def headers(body: bytes, at: float | None = None) -> dict[str, str]:
    return {"TikTok-Signature": signature(SECRET, body, time.time() if at is None else at)}


def content(**fields: Any) -> dict[str, Any]:
    return {
        "conversation_id": CONVERSATION,
        "message_id": "tt-msg-1",
        "timestamp": 1767225600000,
        "from": "example_user",
        "from_user": {"id": "tt-user-1"},
        "to_user": {"id": BUSINESS},
        **fields,
    }


# --- the signature -----------------------------------------------------------------------


def test_the_signature_fixture_verifies_on_its_exact_bytes_at_its_time() -> None:
    example = fixture("tiktok_signature_example.json")
    body = example["raw_body"].encode()
    stamp = int(example["headers"]["TikTok-Signature"].split(",")[0][2:])
    adapter(now=stamp + 10).verify(example["headers"], body)
    with pytest.raises(SignatureInvalid, match="does not match"):
        adapter(now=stamp).verify(example["headers"], json.dumps(json.loads(body)).encode())


@pytest.mark.parametrize(
    ("shift", "error", "reason"),
    [
        (301, SignatureInvalid, "5 minutes old"),  # replayed
        (-301, SignatureInvalid, "5 minutes old"),  # from the future
    ],
    ids=["replayed", "future"],
)
def test_a_signature_older_than_five_minutes_is_a_replay(
    shift: int, error: type[Exception], reason: str
) -> None:
    body = webhook("im_receive_msg", content(), BUSINESS)
    now = time.time()
    with pytest.raises(error, match=reason):
        adapter(now=now + shift).verify(headers(body, now), body)
    adapter(now=now + 299).verify(headers(body, now), body)


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (None, SignatureMissing),
        ("s=abc", SignatureInvalid),
        ("t=1,s=" + "0" * 64, SignatureInvalid),
    ],
    ids=["missing", "malformed", "wrong"],
)
def test_missing_malformed_and_wrong_signatures_are_refused(
    sent: str | None, error: type[Exception]
) -> None:
    body = webhook("im_receive_msg", content(), BUSINESS)
    with pytest.raises(error):
        adapter(now=1).verify({"TikTok-Signature": sent} if sent else {}, body)


# --- parsing -------------------------------------------------------------------------------


def test_the_text_fixture_is_a_message_of_the_conversation() -> None:
    body = json.dumps(fixture("tiktok_text.json")).encode()
    [event] = adapter().parse({}, body)
    assert isinstance(event, InboundMessage)
    assert (event.channel_message_id, event.channel_user_id) == (
        "tt-msg-EXAMPLE-0001",
        CONVERSATION,
    )
    assert (event.text, event.channel_username) == ("Hi, is this still in stock?", "example_user")
    assert event.account == BUSINESS and event.metadata["from_user_id"] == "tt-user-EXAMPLE-0001"
    assert event.sent_at == datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "value", "attachment"),
    [
        ("image", {"media_id": "v0m1"}, ("image", "v0m1")),
        ("share_post", {"item_id": "7201"}, ("share_post", None)),
        ("sticker", {"sticker_id": "s9"}, ("sticker", None)),
    ],
)
def test_images_shared_posts_and_stickers_keep_what_they_carry(
    kind: str, value: dict[str, str], attachment: tuple[str, str | None]
) -> None:
    body = webhook("im_receive_msg", content(type=kind, **{kind: value}), BUSINESS)
    [event] = adapter().parse({}, body)
    assert isinstance(event, InboundMessage)
    assert (event.attachments[0].kind, event.attachments[0].ref) == attachment


def test_an_unknown_type_is_kept_raw_and_echoes_and_reads_are_recognised() -> None:
    parse = adapter().parse
    [odd] = parse({}, webhook("im_receive_msg", content(type="video", video={"x": 1}), BUSINESS))
    assert isinstance(odd, InboundMessage) and odd.metadata["raw"]["video"] == {"x": 1}
    echo_body = webhook("im_send_msg", content(type="text", text={"body": "Hi!"}), BUSINESS)
    [echo] = parse({}, echo_body)
    assert isinstance(echo, OutboundEcho) and echo.text == "Hi!" and not echo.ours
    read = parse({}, webhook("im_mark_read_msg", content(message_id="tt-out-1"), BUSINESS))
    assert [type(e) for e in read] == [StatusUpdate, StatusWatermark]
    assert all(e.status is MessageStatus.READ for e in read)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"event": "im_receive_msg", "content": "not json"}', b'{"content": "{}"}'],
)
def test_unusable_envelopes_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        adapter().parse({}, body)


def test_unknown_events_and_unusable_contents_give_no_event() -> None:
    parse = adapter().parse
    assert parse({}, webhook("authorization_removed", {}, BUSINESS)) == []
    assert parse({}, webhook("im_receive_msg", {"conversation_id": CONVERSATION}, BUSINESS)) == []


# --- sending ---------------------------------------------------------------------------------


@pytest.fixture
async def tiktok() -> AsyncIterator[tuple[FakeTikTok, TikTokAdapter]]:
    fake = FakeTikTok(BUSINESS, TOKEN)
    async with running_fake(fake) as base:
        started = adapter(base)
        await started.start()
        yield fake, started
        await started.close()


def outgoing(text: str | None = "Yes, it is in stock.", **fields: Any) -> OutboundMessage:
    fields.setdefault("last_inbound_at", datetime.now(UTC) - timedelta(hours=1))
    return OutboundMessage(ref="5", channel_user_id=CONVERSATION, text=text, **fields)


async def test_text_is_sent_as_the_fixture_shows(tiktok: tuple[FakeTikTok, TikTokAdapter]) -> None:
    fake, sender = tiktok
    result = await sender.send(outgoing())
    [sent] = fake.sent
    assert sent.body == fixture("tiktok_send_text_request.json")
    assert result.channel_message_id == sent.message_id


async def test_images_go_by_media_id_and_a_reply_names_its_message(
    tiktok: tuple[FakeTikTok, TikTokAdapter],
) -> None:
    fake, sender = tiktok
    photo = Attachment(kind="image", ref="v0m1")
    result = await sender.send(outgoing("Here", attachments=[photo], reply_to="tt-msg-1"))
    text, image = fake.sent
    assert text.body["referenced_message_info"] == {"referenced_message_id": "tt-msg-1"}
    assert (
        image.body["image"] == {"media_id": "v0m1"} and "referenced_message_info" not in image.body
    )
    assert result.metadata["parts"] == [text.message_id, image.message_id]
    assert list(result.parts) == [text.message_id, image.message_id]
    with pytest.raises(PermanentSendError, match="media id"):
        await sender.send(outgoing(attachments=[Attachment(kind="image", url="https://x/y.png")]))


@pytest.mark.parametrize("last", [None, timedelta(hours=48)], ids=["never-wrote", "48-hours-ago"])
async def test_outside_48_hours_of_the_users_message_a_reply_fails_at_once(
    tiktok: tuple[FakeTikTok, TikTokAdapter], last: timedelta | None
) -> None:
    fake, sender = tiktok
    when = datetime.now(UTC) - last if last else None
    with pytest.raises(PermanentSendError, match="within 48 hours") as raised:
        await sender.send(outgoing(last_inbound_at=when))
    assert raised.value.code == "window_closed" and fake.sent == []


async def test_too_fast_pauses_the_channel_and_server_errors_are_retried(
    tiktok: tuple[FakeTikTok, TikTokAdapter],
) -> None:
    fake, sender = tiktok
    fake.fail_next("40064")
    with pytest.raises(RetryableSendError) as raised:
        await sender.send(outgoing())
    assert (raised.value.code, raised.value.scope) == ("40064", PauseScope.CHANNEL)
    for fault in ("500", "drop"):
        fake.fail_next(fault)
        with pytest.raises(RetryableSendError):
            await sender.send(outgoing())
    await sender.send(outgoing())
    assert len(fake.sent) == 1


async def test_a_bad_token_is_permanent_and_never_shown(
    tiktok: tuple[FakeTikTok, TikTokAdapter],
) -> None:
    fake, sender = tiktok
    fake.reject_next()
    with pytest.raises(PermanentSendError) as raised:
        await sender.send(outgoing())
    assert raised.value.code == "40105" and TOKEN not in str(raised.value)


# --- end to end -----------------------------------------------------------------------------


async def test_a_signed_delivery_is_stored_answered_and_the_quota_of_ten_holds(
    make_app: AppFactory,
) -> None:
    fake = FakeTikTok(BUSINESS, TOKEN)
    async with running_fake(fake) as base:
        toml = f"""
[brokers.demo]
name = "Demo Realty"
[brokers.demo.providers.tiktok]
business_id = "{BUSINESS}"
access_token = "${{TT_TOKEN}}"
client_secret = "${{TT_SECRET}}"
api_base = "{base}"
[brokers.demo.templates]
welcome = "Hi {{name}}!"
"""
        app = await make_app(toml, env={"TT_TOKEN": TOKEN, "TT_SECRET": SECRET})
        now = int(time.time())
        body = webhook(
            "im_receive_msg",
            content(timestamp=now * 1000, text={"body": "hola"}, type="text"),
            BUSINESS,
            now,
        )
        for _ in range(2):  # a redelivery stores nothing new
            response = await app.client.post(
                "/webhooks/demo/tiktok", data=body, headers=headers(body)
            )
            assert response.status == 200
        refused = await app.client.post(
            "/webhooks/demo/tiktok", data=body, headers=headers(body, now - 600)
        )
        assert refused.status == 403

        async def welcomed() -> bool:
            return [m.text for m in fake.sent] == ["Hi example_user!"]

        await wait_for(welcomed)
        [lead] = await rows(app.service.engine, "SELECT id FROM leads")
        for n in range(10):
            await app.service.queue(Outgoing("demo", lead["id"], text=f"more {n}"))

        async def settled() -> bool:
            found = await rows(
                app.service.engine, "SELECT status FROM chat_messages WHERE direction = 'out'"
            )
            return len(found) == 11 and all(r["status"] != "pending" for r in found)

        await wait_for(settled, timeout=20)
        found = await rows(
            app.service.engine,
            "SELECT status, error FROM chat_messages WHERE direction = 'out' ORDER BY id",
        )
        assert [r["status"] for r in found] == ["sent"] * 10 + ["failed"]
        assert found[-1]["error"].startswith("reply_quota: tiktok allows 10 messages")
        assert len(fake.sent) == 10
