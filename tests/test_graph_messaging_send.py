"""The Messenger and Instagram adapters' outbound side against the fake Graph API on loopback.

Request bodies are compared with the `messenger_send_*` / `instagram_send_*` fixtures;
what the fake accepted (`FakePage.sent`, `.actions`) is the evidence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from leadline.adapters.base import (
    AdapterContext,
    AdapterError,
    Attachment,
    OutboundMessage,
    PauseScope,
    PermanentSendError,
    RetryableSendError,
)
from leadline.adapters.graph_messaging import GraphMessagingAdapter
from leadline.adapters.instagram import InstagramAdapter, InstagramConfig
from leadline.adapters.messenger import MessengerAdapter, MessengerConfig
from tests.fakes.graph_api import FakeGraph
from tests.fakes.graph_pages import FakePage
from tests.fakes.serving import running_fake
from tests.helpers import fixture_json as fixture
from tests.helpers import shape

PAGE = "102030405060708"
PAGE_TOKEN = "EAAGpageTokenNOTREAL"
IG = "17841400000000001"
IG_TOKEN = "IGQWtokenNOTREAL123"
PSID = "1254459154682919"
IGSID = "1234567890123456"
META = {"app_secret": "app-secret-not-real", "verify_token": "verify-me"}


def recent() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


def message(user: str = PSID, text: str | None = "Hello, world!", **fields: Any) -> OutboundMessage:
    fields.setdefault("last_inbound_at", recent())
    return OutboundMessage(ref="7", channel_user_id=user, text=text, **fields)


@pytest.fixture
def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def page(fake: FakeGraph) -> FakePage:
    return fake.add_page(PAGE, PAGE_TOKEN)


@pytest.fixture
async def base_url(fake: FakeGraph, page: FakePage) -> AsyncIterator[str]:
    async with running_fake(fake) as url:
        yield url


async def started(adapter: GraphMessagingAdapter) -> GraphMessagingAdapter:
    await adapter.start()
    return adapter


def messenger(base_url: str) -> MessengerAdapter:
    config = MessengerConfig.model_validate(
        {"page_id": PAGE, "page_access_token": PAGE_TOKEN, "api_base": base_url, **META}
    )
    return MessengerAdapter(config, AdapterContext("demo", "Demo Realty"))


def instagram(base_url: str, **form: str) -> InstagramAdapter:
    fields = form or {"ig_account_id": IG, "access_token": IG_TOKEN}
    config = InstagramConfig.model_validate({**fields, "api_base": base_url, **META})
    return InstagramAdapter(config, AdapterContext("demo", "Demo Realty"))


@pytest.fixture
async def adapter(base_url: str) -> AsyncIterator[GraphMessagingAdapter]:
    adapter = await started(messenger(base_url))
    yield adapter
    await adapter.close()


# --- Messenger -------------------------------------------------------------------------------


async def test_text_is_shaped_as_the_fixture_and_tagged_as_ours(
    page: FakePage, adapter: GraphMessagingAdapter
) -> None:
    result = await adapter.send(message())
    [sent] = page.sent
    expected = fixture("messenger_send_request.json")
    assert sent.body["recipient"] == expected["recipient"]
    assert sent.body["messaging_type"] == "RESPONSE" and sent.text == "Hello, world!"
    assert sent.body["message"]["metadata"] == "leadline:7"  # its echo is known as ours
    assert shape({**sent.body, "message": {"text": ""}}) == shape(expected)
    assert result.channel_message_id == sent.mid


async def test_reply_to_and_media_by_url_go_as_the_fixtures_show(
    page: FakePage, adapter: GraphMessagingAdapter
) -> None:
    photo = Attachment(kind="image", url="https://cdn.example.com/images/part-123.jpg")
    await adapter.send(
        message(text="Replying", reply_to="m_ExampleMidText0001", attachments=[photo])
    )
    text, image = page.sent
    assert text.body["reply_to"] == fixture("messenger_send_reply_to_request.json")["reply_to"]
    assert "reply_to" not in image.body
    expected = fixture("messenger_send_attachment_url_request.json")
    assert image.body["message"]["attachment"] == expected["message"]["attachment"]


async def test_a_long_text_is_cut_into_parts_of_2000_characters(
    page: FakePage, adapter: GraphMessagingAdapter
) -> None:
    text = " ".join(f"palabra{i}" for i in range(700))  # about 6,000 characters
    result = await adapter.send(message(text=text))
    assert len(page.sent) == 4 and all(len(m.text or "") <= 2000 for m in page.sent)
    assert " ".join(m.text or "" for m in page.sent).split() == text.split()
    assert result.metadata["parts"] == [m.mid for m in page.sent]
    assert list(result.parts) == [m.mid for m in page.sent]  # kept in chat_message_parts


async def test_outside_24_hours_only_a_human_agents_reply_goes_tagged_within_7_days(
    fake: FakeGraph, page: FakePage, adapter: GraphMessagingAdapter
) -> None:
    two_days = datetime.now(UTC) - timedelta(days=2)
    before = len(fake.requests)
    with pytest.raises(PermanentSendError, match="window is closed") as closed:
        await adapter.send(message(last_inbound_at=two_days))
    assert closed.value.code == "window_closed" and len(fake.requests) == before
    await adapter.send(message(text="Hi, this is Sam", last_inbound_at=two_days, human_agent=True))
    [sent] = page.sent
    expected = fixture("messenger_send_human_agent_tag_request.json")
    assert (sent.messaging_type, sent.tag) == ("MESSAGE_TAG", "HUMAN_AGENT")
    assert shape({**sent.body, "message": {}}) == shape({**expected, "message": {}})
    eight_days = datetime.now(UTC) - timedelta(days=8)
    with pytest.raises(PermanentSendError, match="within 7 days"):
        await adapter.send(message(last_inbound_at=eight_days, human_agent=True))


@pytest.mark.parametrize("kind", ["10_2018278", "1545041"])
async def test_outside_window_answers_are_permanent(
    page: FakePage, adapter: GraphMessagingAdapter, kind: str
) -> None:
    page.fail_next(kind)
    with pytest.raises(PermanentSendError) as raised:
        await adapter.send(message())
    assert raised.value.code == "window_closed"


@pytest.mark.parametrize(("kind", "wait"), [("613", 10.0), ("4", 60.0)])
async def test_rate_limits_pause_the_page(
    page: FakePage, adapter: GraphMessagingAdapter, kind: str, wait: float
) -> None:
    page.fail_next(kind)
    with pytest.raises(RetryableSendError) as raised:
        await adapter.send(message())
    assert (raised.value.code, raised.value.retry_after) == (kind, wait)
    assert raised.value.scope == PauseScope.CHANNEL


@pytest.mark.parametrize("kind", ["500", "drop"])
async def test_server_errors_and_dropped_connections_are_retried(
    page: FakePage, adapter: GraphMessagingAdapter, kind: str
) -> None:
    page.fail_next(kind)
    with pytest.raises(RetryableSendError):
        await adapter.send(message())
    await adapter.send(message())
    assert len(page.sent) == 1


@pytest.mark.parametrize("kind", ["551", "100", "190"])
async def test_unavailable_bad_request_and_token_errors_are_permanent(
    page: FakePage, adapter: GraphMessagingAdapter, kind: str
) -> None:
    page.fail_next(kind)
    with pytest.raises(PermanentSendError) as raised:
        await adapter.send(message())
    assert PAGE_TOKEN not in str(raised.value)


async def test_typing_and_mark_seen_are_separate_sender_actions(
    page: FakePage, adapter: GraphMessagingAdapter
) -> None:
    await adapter.send_typing(message())
    await adapter.send_typing(message(last_inbound_at=datetime.now(UTC) - timedelta(days=2)))
    await adapter.mark_read(PSID, "m_ExampleMidText0001")
    assert [(a.recipient, a.action) for a in page.actions] == [
        (PSID, "typing_on"),
        (PSID, "mark_seen"),
    ]


async def test_audio_and_video_are_paced_at_10_per_second(
    page: FakePage, adapter: GraphMessagingAdapter
) -> None:
    clip = Attachment(kind="video", url="https://cdn.example.com/tour.mp4")
    begun = time.monotonic()
    await adapter.send(message(text=None, attachments=[clip] * 12))
    assert len(page.sent) == 12
    assert time.monotonic() - begun >= 0.9  # the 11th waited for the first to age out


async def test_start_checks_the_token_and_an_unsubscribed_page_is_warned_about(
    base_url: str, page: FakePage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    page.unsubscribe()
    adapter = await started(messenger(base_url))
    assert await adapter.subscription_problem() is not None
    assert "leadline webhooks subscribe demo messenger" in caplog.text
    await adapter.subscribe()
    assert await adapter.subscription_problem() is None
    assert "messages" in page.subscribed_fields
    await adapter.close()
    page.expire_token()
    with pytest.raises(AdapterError, match="Session has expired") as raised:
        await started(messenger(base_url))
    assert PAGE_TOKEN not in str(raised.value)


# --- Instagram --------------------------------------------------------------------------------


@pytest.fixture
async def ig_fake() -> AsyncIterator[tuple[FakeGraph, FakePage, str]]:
    """graph.instagram.com: a fake of its own, as Instagram Login sends there."""
    fake = FakeGraph()
    account = fake.add_instagram_account(IG, IG_TOKEN)
    async with running_fake(fake) as url:
        yield fake, account, url


async def test_instagram_login_sends_as_the_fixture_without_messaging_type(
    ig_fake: tuple[FakeGraph, FakePage, str],
) -> None:
    _, account, url = ig_fake
    adapter = await started(instagram(url))
    assert adapter.account_id == IG
    photo = Attachment(kind="image", url="https://cdn.example.com/images/part-123.jpg")
    await adapter.send(message(IGSID, "Yes, we ship to Canada.", attachments=[photo]))
    text, image = account.sent
    assert text.body == fixture("instagram_send_request.json")
    assert image.body == fixture("instagram_send_image_request.json")
    await adapter.send_typing(message(IGSID))
    assert [(a.recipient, a.action) for a in account.actions] == [(IGSID, "typing_on")]
    await adapter.close()


async def test_instagram_text_is_cut_at_1000_bytes_never_inside_a_character(
    ig_fake: tuple[FakeGraph, FakePage, str],
) -> None:
    _, account, url = ig_fake
    adapter = await started(instagram(url))
    text = " ".join(["¿Cuánto cuesta el departamento? 🏠"] * 100)  # about 3,900 bytes
    await adapter.send(message(IGSID, text))
    parts = [m.text or "" for m in account.sent]
    assert len(parts) == 4 and all(len(p.encode()) <= 1000 for p in parts)
    assert " ".join(parts).split() == text.split()
    await adapter.close()


async def test_instagram_human_agent_reply_is_tagged_as_the_fixture(
    ig_fake: tuple[FakeGraph, FakePage, str],
) -> None:
    _, account, url = ig_fake
    adapter = await started(instagram(url))
    old = datetime.now(UTC) - timedelta(days=3)
    await adapter.send(message(IGSID, "Hi, this is Sam", last_inbound_at=old, human_agent=True))
    [sent] = account.sent
    expected = fixture("instagram_send_human_agent_request.json")
    assert shape({**sent.body, "message": {}}) == shape({**expected, "message": {}})
    assert (sent.messaging_type, sent.tag) == ("MESSAGE_TAG", "HUMAN_AGENT")
    await adapter.close()


async def test_page_linked_instagram_finds_its_account_through_the_page(
    fake: FakeGraph, base_url: str
) -> None:
    linked = fake.add_page("102030405069999", "EAAGlinkedTokenNOT", instagram_account_id=IG)
    account = fake.add_instagram_account(IG, IG_TOKEN)
    linked.instagram_recipients.add(IGSID)
    adapter = await started(
        instagram(base_url, page_id="102030405069999", page_access_token="EAAGlinkedTokenNOT")
    )
    assert adapter.account_id == IG  # webhooks name the Instagram account, not the Page
    await adapter.send(message(IGSID, "Hola"))
    assert [m.text for m in account.sent] == ["Hola"]
    await adapter.close()


async def test_a_page_without_an_instagram_account_cannot_start(base_url: str) -> None:
    adapter = instagram(base_url, page_id=PAGE, page_access_token=PAGE_TOKEN)
    with pytest.raises(AdapterError, match="no linked Instagram account"):
        await adapter.start()
    await adapter.close()
