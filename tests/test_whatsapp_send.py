"""The WhatsApp adapter's outbound side: real pywa_async client, fake Graph API on loopback.

What the fake accepted (`FakeNumber.sent`, `.read`) and what it was asked
(`FakeGraph.requests`) are the evidence; every request body is compared with the
`whatsapp_send_*` fixtures' shape.
"""

from __future__ import annotations

import logging
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
    RateLimit,
    RetryableSendError,
    TemplateRef,
)
from leadline.adapters.text import split_text
from leadline.adapters.whatsapp import WhatsAppAdapter
from leadline.adapters.whatsapp.config import WhatsAppConfig
from tests.fakes.graph_api import FakeGraph, FakeNumber, SentMessage
from tests.fakes.serving import running_fake
from tests.helpers import fixture_json as fixture
from tests.helpers import shape

NUMBER_ID = "106540352242922"
TOKEN = "EAAGexampleTokenNOTREAL123"
APP_SECRET = "app-secret-not-real"
USER = "16505551234"
INBOUND_ID = "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA="


def recent() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=5)


def message(text: str | None = "Hello", **fields: Any) -> OutboundMessage:
    fields.setdefault("last_inbound_at", recent())
    return OutboundMessage(ref="1", channel_user_id=USER, text=text, **fields)


def config(api_base: str, **fields: Any) -> WhatsAppConfig:
    values: dict[str, Any] = {
        "phone_number_id": NUMBER_ID,
        "access_token": TOKEN,
        "app_secret": APP_SECRET,
        "verify_token": "verify-me",
        "api_base": api_base,
        **fields,
    }
    return WhatsAppConfig.model_validate(values)


@pytest.fixture
def fake() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def number(fake: FakeGraph) -> FakeNumber:
    return fake.add_number(NUMBER_ID, TOKEN)


@pytest.fixture
async def base_url(fake: FakeGraph, number: FakeNumber) -> AsyncIterator[str]:
    async with running_fake(fake) as url:
        yield url


async def started(base_url: str, **fields: Any) -> WhatsAppAdapter:
    adapter = WhatsAppAdapter(config(base_url, **fields), AdapterContext("demo", "Demo Realty"))
    await adapter.start()
    return adapter


@pytest.fixture
async def adapter(base_url: str) -> AsyncIterator[WhatsAppAdapter]:
    adapter = await started(base_url)
    yield adapter
    await adapter.close()


# --- start ---------------------------------------------------------------------------


async def test_start_checks_number_and_token_through_api_base(
    fake: FakeGraph, adapter: WhatsAppAdapter
) -> None:
    asked = [r for r in fake.requests if r.http_method == "GET"]
    assert [r.path for r in asked] == [f"/v24.0/{NUMBER_ID}"]
    assert asked[0].had_token


async def test_start_with_a_rejected_token_fails_without_showing_the_token(
    base_url: str, number: FakeNumber
) -> None:
    number.expire_token()
    adapter = WhatsAppAdapter(config(base_url), AdapterContext("demo", "Demo Realty"))
    with pytest.raises(AdapterError, match="Session has expired") as raised:
        await adapter.start()
    assert TOKEN not in str(raised.value)
    await adapter.close()


async def test_an_unsigned_number_warns_at_every_start(
    base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = await started(base_url, app_secret=None, allow_unsigned=True)
    await adapter.start()  # a restart of the channel
    await adapter.close()
    warnings = [r for r in caplog.records if "NOT signature-checked" in r.getMessage()]
    assert len(warnings) == 2


# --- text ---------------------------------------------------------------------------


async def test_text_goes_to_the_plus_prefixed_wa_id_shaped_as_the_fixture(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    result = await adapter.send(message("Our flat on Main St is free on Monday."))
    [sent] = number.sent
    assert sent.to == "+" + USER and sent.text == "Our flat on Main St is free on Monday."
    assert result.channel_message_id == sent.wamid
    expected = fixture("whatsapp_send_text_request.json")
    assert shape(sent.body) == shape(expected)


async def test_a_long_text_goes_as_parts_cut_on_word_boundaries(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    words = [f"word{i}" for i in range(1500)]  # about 12,400 characters
    text = " ".join(words)
    result = await adapter.send(message(text))
    bodies = [m.text for m in number.sent]
    assert len(bodies) == 4 and all(b is not None and 4000 < len(b) <= 4096 for b in bodies[:3])
    assert " ".join(b or "" for b in bodies).split() == words  # no word cut or lost
    assert result.channel_message_id == number.sent[-1].wamid
    assert result.metadata["parts"] == [m.wamid for m in number.sent]
    assert list(result.parts) == [m.wamid for m in number.sent]


async def test_a_retry_after_a_failed_part_sends_only_the_rest(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    text = " ".join(f"word{i}" for i in range(1500))

    async def fail_the_next_part(sent: SentMessage) -> None:
        if len(number.sent) == 1:
            number.fail_next("500")

    number.before_answer = fail_the_next_part
    with pytest.raises(RetryableSendError):
        await adapter.send(message(text))
    assert len(number.sent) == 1
    number.before_answer = None
    result = await adapter.send(message(text))  # the dispatcher's retry of the same row
    parts = split_text(text, 4096)
    assert [m.text for m in number.sent] == parts  # each part exactly once
    assert result.metadata["parts"] == [m.wamid for m in number.sent]
    assert list(result.parts) == [m.wamid for m in number.sent]


async def test_a_reply_quotes_the_lead_message_as_in_the_fixture(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    await adapter.send(message("Yes - it also comes in green and blue.", reply_to=INBOUND_ID))
    [sent] = number.sent
    expected = fixture("whatsapp_send_reply_context_request.json")
    assert sent.body["context"] == expected["context"]
    assert shape(sent.body) == shape(
        {**expected, "text": {**expected["text"], "preview_url": False}}
    )


async def test_a_bsuid_recipient_goes_as_recipient_not_to(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    bsuid = "US.13491208655302741918"
    await adapter.send(OutboundMessage("2", bsuid, "Hi", last_inbound_at=recent()))
    [sent] = number.sent
    assert sent.body["recipient"] == bsuid and "to" not in sent.body


# --- media ----------------------------------------------------------------------------


async def test_an_image_by_link_carries_the_text_as_caption(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    link = "https://www.example.com/assets/succulents/aloe.png"
    photo = Attachment(kind="image", url=link)
    await adapter.send(message("The best succulent ever?", attachments=[photo]))
    [sent] = number.sent
    expected = fixture("whatsapp_send_image_by_link_request.json")
    assert sent.body["image"] == expected["image"]
    assert shape(sent.body) == shape(expected)


async def test_media_by_id_and_a_text_too_long_for_a_caption_go_text_first(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    text = "A long description of the house. " * 40  # over 1,024 characters
    items = [
        Attachment(kind="document", ref="1013859600285441", file_name="plan.pdf"),
        Attachment(kind="video", url="https://example.com/tour.mp4"),
    ]
    await adapter.send(message(text, attachments=items, reply_to=INBOUND_ID))
    kinds = [m.type for m in number.sent]
    assert kinds == ["text", "document", "video"]
    assert number.sent[0].body["context"] == {"message_id": INBOUND_ID}  # only the first
    assert "context" not in number.sent[1].body
    assert number.sent[1].body["document"] == {"id": "1013859600285441", "filename": "plan.pdf"}
    assert number.sent[2].body["video"] == {"link": "https://example.com/tour.mp4"}


@pytest.mark.parametrize(
    "attachment",
    [
        Attachment(kind="image", ref="/etc/passwd"),  # pywa would upload a local file
        Attachment(kind="image", ref="aGVsbG8gd29ybGQh"),  # or base64 data
        Attachment(kind="location", extra={"latitude": 1.0, "longitude": 2.0}),
    ],
    ids=["path", "base64", "location"],
)
async def test_an_attachment_that_is_no_link_or_media_id_is_refused_and_nothing_sent(
    fake: FakeGraph, number: FakeNumber, adapter: WhatsAppAdapter, attachment: Attachment
) -> None:
    before = len(fake.requests)
    with pytest.raises(PermanentSendError):
        await adapter.send(message("look", attachments=[attachment]))
    assert number.sent == [] and len(fake.requests) == before


# --- templates and the 24-hour window -------------------------------------------------------


async def test_a_template_with_parameters_is_shaped_as_the_fixture(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    template = TemplateRef("order_update_example", "en_US", ("ORDER-1234",))
    await adapter.send(message(None, template=template, last_inbound_at=None))
    [sent] = number.sent
    expected = fixture("whatsapp_send_template_request.json")
    body = sent.body["template"]
    assert body["name"] == "order_update_example" and body["language"] == {"code": "en_US"}
    [component] = body["components"]
    assert component["type"].lower() == "body"
    assert component["parameters"] == expected["template"]["components"][0]["parameters"]


@pytest.mark.parametrize(
    "last_inbound_at",
    [None, datetime.now(UTC) - timedelta(hours=24, minutes=1)],
    ids=["never-wrote", "25-hours-ago"],
)
async def test_outside_the_window_free_form_fails_at_once_saying_why(
    fake: FakeGraph, number: FakeNumber, adapter: WhatsAppAdapter, last_inbound_at: Any
) -> None:
    before = len(fake.requests)
    with pytest.raises(PermanentSendError, match="24-hour customer service window is closed"):
        await adapter.send(message("Still interested?", last_inbound_at=last_inbound_at))
    assert len(fake.requests) == before  # nothing was even tried


async def test_outside_the_window_the_window_template_goes_with_the_text(
    base_url: str, number: FakeNumber
) -> None:
    window = {"name": "follow_up", "language": "es", "parameters": ["{text}"]}
    adapter = await started(base_url, window_template=window)
    old = datetime.now(UTC) - timedelta(days=2)
    result = await adapter.send(message("¿Sigue interesado\nen la casa?", last_inbound_at=old))
    await adapter.close()
    [sent] = number.sent
    assert sent.type == "template"
    body = sent.body["template"]
    assert body["name"] == "follow_up" and body["language"] == {"code": "es"}
    parameters = body["components"][0]["parameters"]
    assert parameters == [{"type": "text", "text": "¿Sigue interesado en la casa?"}]
    assert result.metadata == {"sent_as_template": "follow_up"}


async def test_just_inside_the_window_free_form_goes(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    almost = datetime.now(UTC) - timedelta(hours=23, minutes=50)
    await adapter.send(message("Quick answer", last_inbound_at=almost))
    assert [m.type for m in number.sent] == ["text"]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "retry_after"), [("130429", 1.0), ("4", 60.0), ("80007", 60.0)])
async def test_throttles_of_the_number_pause_the_channel_for_a_while(
    number: FakeNumber, adapter: WhatsAppAdapter, kind: str, retry_after: float
) -> None:
    number.fail_next(kind)
    with pytest.raises(RetryableSendError) as raised:
        await adapter.send(message())
    assert raised.value.code == kind
    assert raised.value.scope == PauseScope.CHANNEL
    assert raised.value.retry_after == retry_after


@pytest.mark.parametrize("kind", ["131056", "500"])
async def test_pair_limit_and_server_errors_back_off_that_chat(
    number: FakeNumber, adapter: WhatsAppAdapter, kind: str
) -> None:
    number.fail_next(kind)
    with pytest.raises(RetryableSendError) as raised:
        await adapter.send(message())
    assert raised.value.scope == PauseScope.RECIPIENT
    assert raised.value.retry_after is None  # exponential backoff, as Meta advises


async def test_a_dropped_connection_is_retryable(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    number.fail_next("drop")
    with pytest.raises(RetryableSendError, match="unreachable"):
        await adapter.send(message())


@pytest.mark.parametrize("kind", ["131047", "131026", "131050", "190"])
async def test_window_undeliverable_opt_out_and_token_errors_are_permanent(
    number: FakeNumber, adapter: WhatsAppAdapter, kind: str
) -> None:
    number.fail_next(kind)
    with pytest.raises(PermanentSendError) as raised:
        await adapter.send(message())
    assert raised.value.code == kind
    assert TOKEN not in str(raised.value)


# --- typing, read receipts, media download ------------------------------------------------------


async def test_typing_marks_the_latest_inbound_message_with_the_indicator(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    await adapter.send_typing(message(last_inbound_id=INBOUND_ID))
    await adapter.send_typing(message(last_inbound_id=None))  # never wrote: nothing to show
    old = datetime.now(UTC) - timedelta(days=3)
    await adapter.send_typing(message(last_inbound_id=INBOUND_ID, last_inbound_at=old))
    assert [(r.message_id, r.typing_indicator) for r in number.read] == [(INBOUND_ID, True)]


async def test_mark_read_sends_the_read_status(
    number: FakeNumber, adapter: WhatsAppAdapter
) -> None:
    await adapter.mark_read(USER, INBOUND_ID)
    assert [(r.message_id, r.typing_indicator) for r in number.read] == [(INBOUND_ID, False)]


async def test_media_download_resolves_the_url_then_fetches_with_the_token(
    fake: FakeGraph, adapter: WhatsAppAdapter
) -> None:
    fake.add_media("1013859600285441", b"\x89PNG fake image", "image/png")
    data = await adapter.download_media(Attachment(kind="image", ref="1013859600285441"))
    assert data == b"\x89PNG fake image"
    assert all(r.had_token for r in fake.requests)


async def test_an_expired_media_url_is_resolved_again(
    fake: FakeGraph, adapter: WhatsAppAdapter
) -> None:
    fake.add_media("1013859600285441", b"bytes", "image/jpeg")
    fake.born_expired = 1
    data = await adapter.download_media(Attachment(kind="image", ref="1013859600285441"))
    assert data == b"bytes"
    fake.born_expired = 2
    with pytest.raises(AdapterError, match="expired twice"):
        await adapter.download_media(Attachment(kind="image", ref="1013859600285441"))


async def test_unknown_media_is_a_clear_error(adapter: WhatsAppAdapter) -> None:
    with pytest.raises(AdapterError, match="media download failed"):
        await adapter.download_media(Attachment(kind="image", ref="999"))


def test_default_limits_are_metas_80_per_second_per_number_and_1_per_6_s_per_user() -> None:
    capabilities = WhatsAppAdapter.capabilities
    assert capabilities.rate_limit == RateLimit(80, 1.0)
    assert capabilities.per_chat_rate_limit == RateLimit(1, 6.0)
    assert capabilities.messaging_window_seconds == 24 * 3600
