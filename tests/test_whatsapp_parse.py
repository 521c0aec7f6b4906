"""WhatsApp Cloud API webhook JSON → normalized events (adapters/whatsapp/parse.py).

Fixtures are PROVIDERS.md's payloads in ../shared/providers/fixtures.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from leadline.adapters.base import (
    Attachment,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    StatusUpdate,
)
from leadline.adapters.whatsapp import parse as whatsapp_parse
from leadline.adapters.whatsapp.parse import Delivery, Routed, parse_body
from leadline.runtime.sanitize import clean_events
from tests.fuzz import mutate
from tests.helpers import fixtures_dir, provider_fixture

PHONE_NUMBER_ID = "106540352242922"
DISPLAY_NUMBER = "15550783881"
WABA_ID = "102290129340398"
SHEENA = "16505551234"
INBOUND_FIXTURES = {
    "whatsapp_text.json",
    "whatsapp_image.json",
    "whatsapp_interactive_button_reply.json",
    "whatsapp_interactive_list_reply.json",
    "whatsapp_multi_messages.json",
    "whatsapp_status_sent.json",
    "whatsapp_status_delivered.json",
    "whatsapp_status_read.json",
    "whatsapp_status_failed.json",
    "whatsapp_outside_24h_window_error.json",
    "whatsapp_text_unicode.raw_body.json",
}
SOURCE = {
    "phone_number_id": PHONE_NUMBER_ID,
    "display_phone_number": DISPLAY_NUMBER,
    "waba_id": WABA_ID,
}


def raw(name: str) -> bytes:
    return provider_fixture(name).read_bytes()


def load(name: str) -> Any:
    return json.loads(raw(name))


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def only(delivery: Delivery) -> Any:
    assert len(delivery.events) == 1, delivery
    assert delivery.skipped == 0, delivery
    return delivery.events[0]


def value_of(payload: dict[str, Any]) -> dict[str, Any]:
    """The first change's value, to edit in place."""
    return payload["entry"][0]["changes"][0]["value"]


def message_payload(message: dict[str, Any], **contact: Any) -> dict[str, Any]:
    """The text fixture with its one message replaced (id, from and timestamp kept)."""
    payload = load("whatsapp_text.json")
    value = value_of(payload)
    original = value["messages"][0]
    value["messages"] = [{k: original[k] for k in ("from", "id", "timestamp")} | message]
    value["contacts"][0].update(contact)
    return payload


def parse_message(message: dict[str, Any]) -> InboundMessage:
    event = only(parse_body(body(message_payload(message))))
    assert isinstance(event, InboundMessage)
    return event


# --- the fixtures ----------------------------------------------------------------


def test_every_whatsapp_webhook_fixture_has_an_expectation_here() -> None:
    folder = fixtures_dir()
    webhooks = set()
    for path in folder.glob("whatsapp_*.json"):
        data = json.loads(path.read_bytes())
        if isinstance(data, dict) and data.get("object") == "whatsapp_business_account":
            webhooks.add(path.name)
    assert webhooks == INBOUND_FIXTURES


def test_text_fixture_gives_one_message_with_every_field() -> None:
    delivery = parse_body(raw("whatsapp_text.json"))
    assert delivery.phone_number_ids == frozenset({PHONE_NUMBER_ID})
    assert delivery.errors == []
    event = only(delivery)
    assert event == InboundMessage(
        channel_message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=",
        channel_user_id=SHEENA,
        text="Does it come in another color?",
        user_display_name="Sheena Nelson",
        sent_at=datetime(2025, 6, 8, 20, 59, 43, tzinfo=UTC),
        metadata={**SOURCE, "type": "text"},
    )
    assert event.sent_at is not None and event.sent_at.tzinfo is UTC
    assert delivery.routed == [Routed(PHONE_NUMBER_ID, event)]


def test_image_fixture_is_an_attachment_keyed_by_media_id() -> None:
    event = only(parse_body(raw("whatsapp_image.json")))
    assert event.channel_user_id == SHEENA
    assert event.text == "Taj Mahal"  # the caption, as for Telegram
    assert event.sent_at == datetime.fromtimestamp(1744344496, UTC)
    assert event.metadata == {**SOURCE, "type": "image"}
    assert event.attachments == (
        Attachment(
            kind="image",
            ref="1003383421387256",
            mime_type="image/jpeg",
            caption="Taj Mahal",
            extra={
                "sha256": "SfInY0gGKTsJlUWbwxC1k+FAD0FZHvzwfpvO0zX0GUI=",
                "url": "https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=133...",
            },
        ),
    )
    assert event.attachments[0].url is None  # needs the token: not a public URL


def test_interactive_button_reply_fixture_gives_title_reply_id_and_reply_to() -> None:
    event = only(parse_body(raw("whatsapp_interactive_button_reply.json")))
    assert event.channel_message_id == (
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTZBQzg0MzQ4QjRCM0NGNkVGOAA="
    )
    assert event.channel_user_id == SHEENA
    assert event.text == "Cancel"
    assert event.reply_to == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MEM2RUJFNkI0RENGQTVDRjUA"
    assert event.sent_at == datetime.fromtimestamp(1750025136, UTC)
    assert event.attachments == ()
    assert event.metadata == {
        **SOURCE,
        "type": "interactive",
        "interactive_type": "button_reply",
        "reply_id": "cancel-button",
    }


def test_interactive_list_reply_fixture_gives_title_row_id_and_description() -> None:
    event = only(parse_body(raw("whatsapp_interactive_list_reply.json")))
    assert event.channel_message_id == (
        "wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA="
    )
    assert event.text == "Priority Mail Express"
    assert event.reply_to == "wamid.HBgLMTQxMjU1NTA4MjkVAgASGBQzQUNCNjk5RDUwNUZGMUZEM0VBRAA="
    assert event.user_display_name == "Sheena Nelson"
    assert event.metadata == {
        **SOURCE,
        "type": "interactive",
        "interactive_type": "list_reply",
        "reply_id": "priority_express",
        "reply_description": "Next Day to 2 Days",
    }


@pytest.mark.parametrize(
    ("name", "status", "timestamp"),
    [
        ("whatsapp_status_sent.json", MessageStatus.SENT, 1750030073),
        ("whatsapp_status_delivered.json", MessageStatus.DELIVERED, 1750030075),
        ("whatsapp_status_read.json", MessageStatus.READ, 1750030101),
    ],
)
def test_status_fixtures_give_status_updates_routed_to_their_number(
    name: str, status: MessageStatus, timestamp: int
) -> None:
    delivery = parse_body(raw(name))
    event = only(delivery)
    assert event == StatusUpdate(
        channel_message_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=",
        status=status,
        channel_user_id=SHEENA,
        at=datetime.fromtimestamp(timestamp, UTC),
    )
    assert delivery.routed == [Routed(PHONE_NUMBER_ID, event)]
    assert delivery.events_for(PHONE_NUMBER_ID) == [event]
    assert delivery.events_for("999") == []


@pytest.mark.parametrize(
    ("name", "message_id", "timestamp", "error"),
    [
        (
            "whatsapp_status_failed.json",
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA",
            1751142888,
            "131049: This message was not delivered to maintain healthy ecosystem engagement.",
        ),
        (
            "whatsapp_outside_24h_window_error.json",
            "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBJFWEFNUExFMTMxMDQ3AA==",
            1751229288,
            "131047: Re-engagement message",
        ),
    ],
)
def test_failed_status_fixtures_give_code_and_title_as_the_error(
    name: str, message_id: str, timestamp: int, error: str
) -> None:
    event = only(parse_body(raw(name)))
    assert event == StatusUpdate(
        channel_message_id=message_id,
        status=MessageStatus.FAILED,
        channel_user_id=SHEENA,
        at=datetime.fromtimestamp(timestamp, UTC),
        error=error,
    )


def test_multi_messages_fixture_gives_every_message_and_the_status_in_order() -> None:
    delivery = parse_body(raw("whatsapp_multi_messages.json"))
    assert delivery.skipped == 0
    assert delivery.phone_number_ids == frozenset({PHONE_NUMBER_ID})
    first, second, third, status = delivery.events
    assert [e.channel_message_id for e in (first, second, third)] == [
        "wamid.EXAMPLE_MULTI_0001",
        "wamid.EXAMPLE_MULTI_0002",
        "wamid.EXAMPLE_MULTI_0003",
    ]
    assert [e.text for e in (first, second, third)] == ["Hi", "I need help with my order", "Hello?"]
    # Each sender is matched with their own contact entry.
    assert [(e.channel_user_id, e.user_display_name) for e in (first, second, third)] == [
        (SHEENA, "Sheena Nelson"),
        (SHEENA, "Sheena Nelson"),
        ("16505550002", "Example User Two"),
    ]
    assert [e.sent_at for e in (first, second, third)] == [
        datetime.fromtimestamp(1750100000 + i, UTC) for i in range(3)
    ]
    assert status == StatusUpdate(
        channel_message_id="wamid.EXAMPLE_MULTI_OUT_0001",
        status=MessageStatus.DELIVERED,
        channel_user_id="16505550002",
        at=datetime.fromtimestamp(1750100003, UTC),
    )
    assert all(item.phone_number_id == PHONE_NUMBER_ID for item in delivery.routed)


def test_unicode_raw_body_fixture_decodes_escaped_text_and_name() -> None:
    event = only(parse_body(raw("whatsapp_text_unicode.raw_body.json")))
    assert event.channel_message_id == "wamid.EXAMPLE_UNICODE_0001"
    assert event.text == "Olá, café? 😀"  # \ud83d\ude00 is one code point
    assert event.user_display_name == "José"
    assert event.sent_at == datetime(2025, 6, 15, 15, 6, 40, tzinfo=UTC)


# --- batches -----------------------------------------------------------------------


def batch_payload(entries: int, changes: int, messages: int) -> dict[str, Any]:
    """entries x changes, each change on its own number with messages and statuses."""
    payload: dict[str, Any] = {"object": "whatsapp_business_account", "entry": []}
    for e in range(entries):
        entry: dict[str, Any] = {"id": f"waba-{e}", "changes": []}
        for c in range(changes):
            number = f"pn-{e}-{c}"
            key = f"{e}-{c}"
            value = {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "1555", "phone_number_id": number},
                "contacts": [
                    {"profile": {"name": f"User {key}"}, "wa_id": f"49{e}{c}"},
                ],
                "messages": [
                    {
                        "from": f"49{e}{c}",
                        "id": f"wamid.in.{key}.{m}",
                        "timestamp": str(1750000000 + m),
                        "type": "text",
                        "text": {"body": f"message {key}.{m}"},
                    }
                    for m in range(messages)
                ],
                "statuses": [
                    {
                        "id": f"wamid.out.{key}.{s}",
                        "status": status,
                        "timestamp": "1750000100",
                        "recipient_id": f"49{e}{c}",
                    }
                    for s, status in enumerate(("sent", "delivered", "read", "failed"))
                ],
            }
            entry["changes"].append({"field": "messages", "value": value})
        payload["entry"].append(entry)
    return payload


def test_a_batch_of_entries_and_changes_yields_every_message_and_status() -> None:
    delivery = parse_body(body(batch_payload(entries=3, changes=2, messages=5)))
    assert delivery.skipped == 0
    assert len(delivery.events) == 3 * 2 * (5 + 4)
    numbers = {f"pn-{e}-{c}" for e in range(3) for c in range(2)}
    assert delivery.phone_number_ids == numbers
    messages = [e for e in delivery.events if isinstance(e, InboundMessage)]
    statuses = [e for e in delivery.events if isinstance(e, StatusUpdate)]
    assert len({m.channel_message_id for m in messages}) == 30
    assert len({s.channel_message_id for s in statuses}) == 24
    for event in messages:
        _, _, key, m = event.channel_message_id.split(".")
        assert event.text == f"message {key}.{m}"
        assert event.metadata["phone_number_id"] == f"pn-{key}"
        assert event.metadata["waba_id"] == f"waba-{key.split('-')[0]}"
        assert event.user_display_name == f"User {key}"
    for number in numbers:
        own = delivery.events_for(number)
        assert len(own) == 9
        key = number.removeprefix("pn-")
        assert all(key in event.channel_message_id for event in own)
    assert [item.event for item in delivery.routed] == delivery.events


def test_a_thousand_messages_in_one_change_are_all_kept() -> None:
    delivery = parse_body(body(batch_payload(entries=1, changes=1, messages=1000)))
    assert len([e for e in delivery.events if isinstance(e, InboundMessage)]) == 1000


def test_change_errors_are_kept_raw_and_other_fields_are_skipped() -> None:
    payload = load("whatsapp_text.json")
    error = {"code": 131000, "title": "Something went wrong", "message": "x", "error_data": {}}
    value_of(payload)["errors"] = [error, "not an object"]
    other = {"field": "account_update", "value": {"event": "VERIFIED_ACCOUNT"}}
    payload["entry"][0]["changes"].append(other)
    delivery = parse_body(body(payload))
    assert delivery.errors == [error]
    assert len(delivery.events) == 1  # the message beside the errors is kept
    assert delivery.skipped == 2  # the non-object error and the account_update change


def test_a_change_holding_only_errors_still_reports_its_number() -> None:
    payload = load("whatsapp_text.json")
    value = value_of(payload)
    del value["messages"], value["contacts"]
    value["metadata"]["phone_number_id"] = "777"
    value["errors"] = [{"code": 130472, "title": "User's number is part of an experiment"}]
    delivery = parse_body(body(payload))
    assert delivery.events == []
    assert delivery.skipped == 0
    assert delivery.phone_number_ids == frozenset({"777"})
    assert delivery.errors[0]["code"] == 130472


def test_a_change_without_a_phone_number_id_keeps_its_message_unrouted() -> None:
    payload = load("whatsapp_text.json")
    del value_of(payload)["metadata"]
    delivery = parse_body(body(payload))
    event = only(delivery)
    assert delivery.phone_number_ids == frozenset()
    assert "phone_number_id" not in event.metadata
    assert delivery.routed == [Routed(None, event)]


# --- identity ------------------------------------------------------------------------


def test_contacts_without_user_id_still_parse() -> None:
    payload = load("whatsapp_text.json")
    assert "user_id" not in value_of(payload)["contacts"][0]  # the case pywa 4.5 drops
    event = only(parse_body(body(payload)))
    assert event.channel_user_id == SHEENA
    assert "user_id" not in event.metadata


def test_business_scoped_user_id_and_username_go_to_the_message() -> None:
    payload = load("whatsapp_text.json")
    contact = value_of(payload)["contacts"][0]
    contact["user_id"] = "US.13491208655302741918"
    contact["profile"]["username"] = "sheena.n"
    event = only(parse_body(body(payload)))
    assert event.channel_user_id == SHEENA  # the lead is still the wa_id
    assert event.metadata["user_id"] == "US.13491208655302741918"
    assert event.channel_username == "sheena.n"


def test_a_sender_without_a_contact_entry_has_no_display_name() -> None:
    payload = load("whatsapp_text.json")
    value_of(payload)["contacts"][0]["wa_id"] = "19999999999"
    del value_of(payload)["contacts"][0]["profile"]
    event = only(parse_body(body(payload)))
    assert event.channel_user_id == SHEENA
    assert event.user_display_name is None


@pytest.mark.parametrize("missing", ["id", "from"])
def test_a_message_without_id_or_from_is_skipped_not_raised(missing: str) -> None:
    payload = load("whatsapp_multi_messages.json")
    del value_of(payload)["messages"][1][missing]
    delivery = parse_body(body(payload))
    assert delivery.skipped == 1
    assert [e.channel_message_id for e in delivery.events] == [
        "wamid.EXAMPLE_MULTI_0001",
        "wamid.EXAMPLE_MULTI_0003",
        "wamid.EXAMPLE_MULTI_OUT_0001",
    ]


@pytest.mark.parametrize(
    ("message_id", "expected"),
    [
        (12345, "12345"),  # a number is unambiguous: kept as its string
        (True, None),
        (1.5, None),
        (["wamid.x"], None),
        ({"id": "wamid.x"}, None),
        ("", None),
        ("x" * 256, "x" * 256),  # longer than a column: the runtime stores its digest
        ("x" * 4096, "x" * 4096),
        ("x" * 4097, None),  # no id is that long: garbage
        ("wamid.\x00", None),
        ("wamid.\ud800", None),
    ],
)
def test_message_ids_are_printable_strings_of_at_most_4096_characters(
    message_id: Any, expected: str | None
) -> None:
    payload = load("whatsapp_text.json")
    value_of(payload)["messages"][0]["id"] = message_id
    delivery = parse_body(body(payload))
    if expected is None:
        assert (delivery.events, delivery.skipped) == ([], 1)
    else:
        assert only(delivery).channel_message_id == expected


# --- message kinds -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "attachment"),
    [
        (
            {"type": "video", "video": {"id": "v1", "mime_type": "video/mp4", "sha256": "h"}},
            Attachment(kind="video", ref="v1", mime_type="video/mp4", extra={"sha256": "h"}),
        ),
        (
            {
                "type": "audio",
                "audio": {"id": "a1", "mime_type": "audio/ogg; codecs=opus", "voice": True},
            },
            Attachment(
                kind="audio", ref="a1", mime_type="audio/ogg; codecs=opus", extra={"voice": True}
            ),
        ),
        (
            {
                "type": "document",
                "document": {
                    "id": "d1",
                    "filename": "expose.pdf",
                    "mime_type": "application/pdf",
                    "sha256": "h",
                    "caption": "the exposé",
                },
            },
            Attachment(
                kind="document",
                ref="d1",
                mime_type="application/pdf",
                file_name="expose.pdf",
                caption="the exposé",
                extra={"sha256": "h"},
            ),
        ),
        (
            {
                "type": "sticker",
                "sticker": {"id": "s1", "mime_type": "image/webp", "animated": False},
            },
            Attachment(kind="sticker", ref="s1", mime_type="image/webp", extra={"animated": False}),
        ),
        (
            {
                "type": "location",
                "location": {
                    "latitude": 52.52,
                    "longitude": 13.405,
                    "name": "Open house",
                    "address": "Main St 1",
                },
            },
            Attachment(
                kind="location",
                extra={
                    "latitude": 52.52,
                    "longitude": 13.405,
                    "name": "Open house",
                    "address": "Main St 1",
                },
            ),
        ),
    ],
)
def test_media_and_location_messages_map_to_attachments(
    message: dict[str, Any], attachment: Attachment
) -> None:
    event = parse_message(message)
    assert event.attachments == (attachment,)
    assert event.text == attachment.caption
    assert event.metadata == {**SOURCE, "type": message["type"]}


def test_shared_contacts_become_one_contact_attachment_per_card() -> None:
    cards = [
        {"name": {"formatted_name": "Bo Lee"}, "phones": [{"phone": "+49170", "type": "CELL"}]},
        {"name": {"formatted_name": "Al Ex"}},
    ]
    event = parse_message({"type": "contacts", "contacts": cards})
    assert event.text is None
    assert event.attachments == tuple(Attachment(kind="contact", extra=card) for card in cards)


def test_reaction_text_is_the_emoji_and_points_at_the_reacted_message() -> None:
    event = parse_message(
        {"type": "reaction", "reaction": {"message_id": "wamid.OUT", "emoji": "👍"}}
    )
    assert event.text == "👍"
    assert event.metadata["reaction_to"] == "wamid.OUT"
    assert "reaction_removed" not in event.metadata
    removed = parse_message({"type": "reaction", "reaction": {"message_id": "wamid.OUT"}})
    assert removed.text is None
    assert removed.metadata["reaction_removed"] is True


def test_template_button_text_and_payload() -> None:
    message = {
        "type": "button",
        "button": {"text": "Book a viewing", "payload": "VIEWING_YES"},
        "context": {"from": DISPLAY_NUMBER, "id": "wamid.TEMPLATE"},
    }
    event = parse_message(message)
    assert event.text == "Book a viewing"
    assert event.metadata["payload"] == "VIEWING_YES"
    assert event.reply_to == "wamid.TEMPLATE"


def test_forwarded_flags_and_ad_referral_are_kept_in_metadata() -> None:
    referral = {"source_url": "https://fb.me/x", "source_type": "ad", "source_id": "1"}
    message = {
        "type": "text",
        "text": {"body": "Is the flat still free?"},
        "context": {"forwarded": True, "frequently_forwarded": False},
        "referral": referral,
    }
    event = parse_message(message)
    assert event.reply_to is None
    assert event.metadata["forwarded"] is True
    assert event.metadata["frequently_forwarded"] is False
    assert event.metadata["referral"] == referral


@pytest.mark.parametrize(
    ("message", "type_"),
    [
        (
            {
                "type": "unsupported",
                "errors": [{"code": 131051, "title": "Message type unknown"}],
                "unsupported": {"type": "edit"},
            },
            "unsupported",
        ),
        ({"type": "system", "system": {"body": "User changed number", "type": "x"}}, "system"),
        ({"type": "order", "order": {"catalog_id": "1", "product_items": []}}, "order"),
        (
            {"type": "interactive", "interactive": {"type": "nfm_reply", "nfm_reply": {}}},
            "interactive",
        ),
        (
            {"type": "a_kind_from_the_future", "a_kind_from_the_future": [1, 2]},
            "a_kind_from_the_future",
        ),
        ({"type": "image", "image": "not an object"}, "image"),  # known, but unreadable
        ({"type": "text", "text": {"body": 5}}, "text"),
        ({"type": "location", "location": {"latitude": "52"}}, "location"),
        ({"type": 7}, "unknown"),
        ({}, "unknown"),
    ],
)
def test_unknown_or_unreadable_message_types_are_kept_raw(
    message: dict[str, Any], type_: str
) -> None:
    event = parse_message(message)
    assert event.channel_user_id == SHEENA
    assert event.text is None
    assert event.attachments == ()
    assert event.metadata["type"] == type_
    assert event.metadata["raw"]["id"] == event.channel_message_id
    assert {
        k: v for k, v in event.metadata["raw"].items() if k not in ("from", "id", "timestamp")
    } == message


def test_a_parser_bug_keeps_the_message_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(msg: Any, msg_type: str) -> Any:
        raise TypeError("a bug")

    monkeypatch.setattr(whatsapp_parse, "_content", broken)
    event = only(parse_body(raw("whatsapp_image.json")))
    assert event.channel_user_id == SHEENA
    assert event.metadata["unparsed"] is True
    assert event.metadata["raw"]["type"] == "image"
    assert event.metadata["phone_number_id"] == PHONE_NUMBER_ID


@pytest.mark.parametrize("timestamp", [None, "", "soon", "1.5", "-5", "9" * 13, 1.5, True, [1]])
def test_unreadable_timestamps_leave_sent_at_empty(timestamp: Any) -> None:
    payload = load("whatsapp_text.json")
    value_of(payload)["messages"][0]["timestamp"] = timestamp
    assert only(parse_body(body(payload))).sent_at is None


# --- statuses ------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["played", "deleted", "", None, 3, ["read"], {"s": 1}])
def test_played_and_unknown_statuses_are_skipped(status: Any) -> None:
    payload = load("whatsapp_status_read.json")
    value_of(payload)["statuses"][0]["status"] = status
    delivery = parse_body(body(payload))
    assert (delivery.events, delivery.skipped) == ([], 1)


def test_a_status_without_an_id_is_skipped_and_its_neighbours_kept() -> None:
    payload = load("whatsapp_status_read.json")
    statuses = value_of(payload)["statuses"]
    statuses.append({k: v for k, v in statuses[0].items() if k != "id"})
    statuses.append(dict(statuses[0], id="wamid.OTHER", status="delivered"))
    delivery = parse_body(body(payload))
    assert delivery.skipped == 1
    assert [(e.channel_message_id, e.status) for e in delivery.events] == [
        ("wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQUFERjg0NDEzNDdFODU3MUMxMAA=", MessageStatus.READ),
        ("wamid.OTHER", MessageStatus.DELIVERED),
    ]


def test_failed_status_joins_several_errors_and_tolerates_none() -> None:
    payload = load("whatsapp_status_failed.json")
    status = value_of(payload)["statuses"][0]
    status["errors"].append({"code": 131026, "message": "Message undeliverable"})
    status["errors"].append("junk")
    event = only(parse_body(body(payload)))
    assert event.error == (
        "131049: This message was not delivered to maintain healthy ecosystem engagement.; "
        "131026: Message undeliverable"
    )
    del status["errors"]
    assert only(parse_body(body(payload))).error is None


# --- garbage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'[{"object": "whatsapp_business_account", "entry": []}]',
        b'"text"',
        b"42",
        b"null",
        b"{}",
        b'{"entry": []}',
        b'{"object": "page", "entry": []}',
        b'{"object": "instagram", "entry": []}',
        b'{"object": "WhatsApp_Business_Account", "entry": []}',
        b'{"object": ["whatsapp_business_account"], "entry": []}',
        b'{"object": "whatsapp_business_account"}',
        b'{"object": "whatsapp_business_account", "entry": null}',
        b'{"object": "whatsapp_business_account", "entry": {}}',
        b'{"object": "whatsapp_business_account", "entry": "x"}',
        b"[" * 100_000,
        b'{"object": "whatsapp_business_account", "entry": [1' + b"0" * 5000 + b"]}",
    ],
)
def test_bodies_that_are_no_whatsapp_delivery_raise_malformed_payload(data: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_body(data)


@pytest.mark.parametrize("data", [None, "{}", 5, {"object": "whatsapp_business_account"}])
def test_non_bytes_bodies_raise_malformed_payload(data: Any) -> None:
    with pytest.raises(MalformedPayload):
        parse_body(data)


@pytest.mark.parametrize(
    ("entry", "skipped"),
    [
        ([], 0),
        ([None, 1, "x", []], 4),
        ([{}], 1),
        ([{"changes": None}], 1),
        ([{"changes": [None, {}, {"field": "messages"}, {"field": "messages", "value": []}]}], 4),
        ([{"changes": [{"field": "messages", "value": {}}]}], 1),
        ([{"changes": [{"field": "messages", "value": {"messages": {}, "statuses": 3}}]}], 2),
        ([{"changes": [{"field": "messages", "value": {"messages": [1, None, {}]}}]}], 3),
    ],
)
def test_broken_entries_and_changes_are_counted_not_raised(entry: list[Any], skipped: int) -> None:
    payload = {"object": "whatsapp_business_account", "entry": entry}
    delivery = parse_body(body(payload))
    assert delivery == Delivery(frozenset(), [], [], skipped)


JUNK: list[Callable[[random.Random], Any]] = [
    lambda r: None,
    lambda r: True,
    lambda r: 0,
    lambda r: -1,
    lambda r: r.randint(-(2**70), 2**70),
    lambda r: float("nan"),
    lambda r: float("inf"),
    lambda r: 1.5,
    lambda r: "",
    lambda r: "x" * 10_000,
    lambda r: "\x00\ud800 \u202e",
    lambda r: "9" * 30,
    lambda r: "\u0663",  # an Arabic-Indic digit: str.isdigit() but no timestamp
    lambda r: r.choice(["messages", "statuses", "text", "image", "failed", "played", "read"]),
    lambda r: [],
    lambda r: [None, 1, "a", {}],
    lambda r: {},
    lambda r: {"id": [], "from": {}, "type": "interactive", "status": "failed", "errors": 1},
]


def every_kind_payload() -> dict[str, Any]:
    """One change holding a message of every kind this module reads, and statuses."""
    payload = load("whatsapp_multi_messages.json")
    value = value_of(payload)
    kinds = [
        {"type": "image", "image": {"id": "i", "caption": "c", "sha256": "h", "url": "u"}},
        {"type": "audio", "audio": {"id": "a", "voice": True}},
        {"type": "document", "document": {"id": "d", "filename": "f.pdf"}},
        {"type": "location", "location": {"latitude": 1.0, "longitude": 2.0, "name": "n"}},
        {"type": "contacts", "contacts": [{"name": {"formatted_name": "B"}}]},
        {"type": "reaction", "reaction": {"message_id": "wamid.R", "emoji": "👍"}},
        {"type": "button", "button": {"text": "t", "payload": "p"}},
        load("whatsapp_interactive_list_reply.json")["entry"][0]["changes"][0]["value"]["messages"][
            0
        ],
        {"type": "unsupported", "unsupported": {"type": "edit"}},
    ]
    for index, kind in enumerate(kinds):
        message = {"from": SHEENA, "id": f"wamid.K{index}", "timestamp": "1750000000"}
        value["messages"].append(message | kind | {"context": {"id": "wamid.C"}})
    value["contacts"][0]["user_id"] = "US.1"
    value["errors"] = [{"code": 1, "title": "t"}]
    # The second change holds the statuses.
    payload["entry"][0]["changes"][1]["value"]["statuses"].extend(
        value_of(load(name))["statuses"][0]
        for name in ("whatsapp_status_sent.json", "whatsapp_status_failed.json")
    )
    return payload


def check_delivery(delivery: Delivery, case: int) -> None:
    """What every parse must give, whatever the input: storable, routed, typed values."""
    assert isinstance(delivery.skipped, int) and delivery.skipped >= 0
    assert all(isinstance(n, str) and n for n in delivery.phone_number_ids)
    assert all(isinstance(error, dict) for error in delivery.errors)
    assert [item.event for item in delivery.routed] == delivery.events
    for item in delivery.routed:
        assert item.phone_number_id is None or item.phone_number_id in delivery.phone_number_ids
        event = item.event
        assert isinstance(event, InboundMessage | StatusUpdate), f"case {case}"
        if isinstance(event, InboundMessage):
            assert "unparsed" not in event.metadata, f"case {case}: a parser bug"
            assert event.sent_at is None or event.sent_at.tzinfo is UTC
            assert event.metadata.get("phone_number_id") == item.phone_number_id
            json.dumps(dict(event.metadata))
        else:
            assert event.at is None or event.at.tzinfo is UTC
            assert event.channel_user_id is None or isinstance(event.channel_user_id, str)
    clean_events(delivery.events)  # the runtime would store every event


def test_fuzzed_payloads_raise_only_malformed_payload_and_give_storable_events() -> None:
    seeds = [load(name) for name in sorted(INBOUND_FIXTURES)]
    seeds.append(every_kind_payload())
    seeds.append(batch_payload(entries=2, changes=2, messages=2))
    rng = random.Random(20260101)
    outcomes = {"parsed": 0, "malformed": 0}
    for case in range(2000):
        payload = copy.deepcopy(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            payload = mutate(payload, rng, JUNK, lambda: copy.deepcopy(value_of(rng.choice(seeds))))
        try:
            delivery = parse_body(body(payload))
        except MalformedPayload:
            outcomes["malformed"] += 1
            continue
        except Exception as exc:
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc!s:.200}")
        outcomes["parsed"] += 1
        check_delivery(delivery, case)
    assert outcomes["parsed"] > 1500, outcomes


def test_every_kind_payload_parses_without_loss() -> None:
    payload = every_kind_payload()
    delivery = parse_body(body(payload))
    check_delivery(delivery, -1)
    assert delivery.skipped == 0
    assert len(delivery.events) == 3 + 9 + 3
    assert len(delivery.errors) == 1


def test_fuzzed_webhook_bytes_raise_only_malformed_payload() -> None:
    rng = random.Random(7)
    data = raw("whatsapp_multi_messages.json")
    for case in range(500):
        noisy = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            noisy[rng.randrange(len(noisy))] = rng.randrange(256)
        try:
            delivery = parse_body(bytes(noisy))
        except MalformedPayload:
            continue
        check_delivery(delivery, case)
