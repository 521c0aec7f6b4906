"""Messenger and Instagram webhook bodies → events (adapters/graph_messaging/parse.py).

The fixtures are Meta's documented payloads; the constructed items below follow the
same envelope for the kinds the fixtures do not show (reactions, deletions, standby…).
"""

from __future__ import annotations

import copy
import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from leadline.adapters.base import (
    InboundEdit,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    OutboundEcho,
    StatusUpdate,
    StatusWatermark,
)
from leadline.adapters.graph_messaging.parse import OURS, Delivery, parse_body
from leadline.runtime.sanitize import clean_events
from tests.fuzz import mutate
from tests.helpers import fixture_json as fixture

PAGE = "102030405060708"
PSID = "1254459154682919"
IG = "17841400000000001"
IGSID = "1234567890123456"


def parse(payload: Any, kind: str = "page") -> Delivery:
    return parse_body(json.dumps(payload).encode(), kind)


def envelope(*items: dict[str, Any], kind: str = "page", standby: bool = False) -> dict[str, Any]:
    account = PAGE if kind == "page" else IG
    field = "standby" if standby else "messaging"
    return {"object": kind, "entry": [{"id": account, "time": 1767225600123, field: list(items)}]}


def item(at: int = 1767225600000, sender: str = PSID, **event: Any) -> dict[str, Any]:
    return {"sender": {"id": sender}, "recipient": {"id": PAGE}, "timestamp": at, **event}


def at(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


# --- the fixtures ----------------------------------------------------------------------------


def test_messenger_text_is_a_message_from_the_psid_to_the_page() -> None:
    [event] = parse(fixture("messenger_text.json")).events
    assert event == InboundMessage(
        channel_message_id="m_ExampleMidText0001",
        channel_user_id=PSID,
        text="hello, world!",
        sent_at=at(1767225600000),
        metadata={"account_id": PAGE},
        account=PAGE,
    )


def test_messenger_attachment_keeps_its_url() -> None:
    [event] = parse(fixture("messenger_attachment.json")).events
    assert isinstance(event, InboundMessage) and event.text is None
    [attachment] = event.attachments
    assert attachment.kind == "image"
    assert attachment.url is not None and attachment.url.startswith(
        "https://scontent.xx.fbcdn.net/"
    )


def test_an_echo_without_our_tag_is_a_send_from_elsewhere() -> None:
    payload = fixture("messenger_echo.json")
    [event] = parse(payload).events
    assert isinstance(event, OutboundEcho)
    assert (event.channel_message_id, event.channel_user_id) == ("m_ExampleMidEcho0003", PSID)
    assert event.text == "Thanks! An agent will reply shortly." and not event.ours
    assert event.metadata == {"app_id": "1517776481860111", "metadata": "broker:out:0001"}
    payload["entry"][0]["messaging"][0]["message"]["metadata"] = f"{OURS}42"
    [ours] = parse(payload).events
    assert isinstance(ours, OutboundEcho) and ours.ours


def test_delivery_names_its_mids_and_carries_a_watermark() -> None:
    events = parse(fixture("messenger_delivery.json")).events
    assert events == [
        StatusUpdate("m_ExampleMidEcho0003", MessageStatus.DELIVERED, PSID, None, account=PAGE),
        StatusWatermark(PSID, MessageStatus.DELIVERED, at(1767225621000), PAGE),
    ]


def test_read_is_a_watermark_for_the_user() -> None:
    [event] = parse(fixture("messenger_read.json")).events
    assert event == StatusWatermark(PSID, MessageStatus.READ, at(1767225621000), PAGE)


def test_postback_title_becomes_the_text_and_the_payload_is_kept() -> None:
    payload = fixture("messenger_postback.json")
    [event] = parse(payload).events
    assert isinstance(event, InboundMessage)
    assert event.text == "Talk to a human"
    assert event.metadata["postback_payload"] == "HANDOFF"
    assert event.channel_message_id == f"postback:{PSID}:1767225640000:HANDOFF"
    assert parse(payload).events == [event]  # a redelivery gives the same id


def test_instagram_fixtures_parse_into_messages_echoes_and_stories() -> None:
    [text] = parse(fixture("instagram_text.json"), "instagram").events
    assert isinstance(text, InboundMessage) and text.text == "Do you ship to Canada?"
    assert (text.channel_user_id, text.account) == (IGSID, IG)
    [image] = parse(fixture("instagram_image.json"), "instagram").events
    assert isinstance(image, InboundMessage) and image.attachments[0].kind == "image"
    [echo] = parse(fixture("instagram_echo.json"), "instagram").events
    assert isinstance(echo, OutboundEcho) and echo.channel_user_id == IGSID and not echo.ours
    [story] = parse(fixture("instagram_story_reply.json"), "instagram").events
    assert isinstance(story, InboundMessage) and story.text == "Love this! Still available?"
    [link] = story.attachments
    assert (link.kind, link.extra["story_id"]) == ("story", "17900000000000001")
    assert link.url is not None and "asset_id=17900000000000001" in link.url
    assert story.metadata["story_reply"] is True


def test_the_wrong_object_is_malformed() -> None:
    with pytest.raises(MalformedPayload, match="object is not instagram"):
        parse(fixture("messenger_text.json"), "instagram")


# --- constructed kinds ---------------------------------------------------------------------------


def test_quick_reply_reply_to_reaction_and_unsupported() -> None:
    items = [
        item(1, message={"mid": "m1", "text": "Yes", "quick_reply": {"payload": "VISIT_YES"}}),
        item(2, message={"mid": "m2", "text": "this one", "reply_to": {"mid": "m_out_7"}}),
        item(3, reaction={"mid": "m_out_7", "action": "react", "reaction": "love", "emoji": "❤"}),
        item(4, message={"mid": "m4", "is_unsupported": True}),
    ]
    quick, reply, reaction, unsupported = parse(envelope(*items)).events
    assert (
        isinstance(quick, InboundMessage) and quick.metadata["quick_reply_payload"] == "VISIT_YES"
    )
    assert isinstance(reply, InboundMessage) and reply.reply_to == "m_out_7"
    assert isinstance(reaction, InboundMessage) and reaction.text == "❤"
    assert reaction.metadata["reaction_to"] == "m_out_7" and not reaction.answer
    assert isinstance(unsupported, InboundMessage) and unsupported.metadata["unsupported"]
    assert all(e.answer for e in (quick, reply, unsupported))


def test_deleted_and_edited_messages_are_edits_of_the_original() -> None:
    items = [
        item(5, message={"mid": "m1", "is_deleted": True}),
        item(6, message_edit={"mid": "m2", "text": "new words", "num_edit": 1}),
    ]
    deleted, edited = parse(envelope(*items)).events
    assert isinstance(deleted, InboundEdit) and deleted.deleted and deleted.text is None
    assert isinstance(edited, InboundEdit) and edited.text == "new words" and not edited.deleted


def test_instagram_seen_names_the_message_read() -> None:
    seen = item(7, sender=IGSID, read={"mid": "aWdf_out"})
    [event] = parse(envelope(seen, kind="instagram"), "instagram").events
    assert event == StatusUpdate("aWdf_out", MessageStatus.READ, IGSID, at(7), account=IG)


def test_story_mention_keeps_the_story_link() -> None:
    mention = {"type": "story_mention", "payload": {"url": "https://lookaside.fbsbx.com/s"}}
    event_item = item(8, sender=IGSID, message={"mid": "m8", "attachments": [mention]})
    [event] = parse(envelope(event_item, kind="instagram"), "instagram").events
    assert isinstance(event, InboundMessage)
    assert (event.attachments[0].kind, event.attachments[0].url) == (
        "story_mention",
        "https://lookaside.fbsbx.com/s",
    )


def test_standby_events_are_stored_but_never_answered() -> None:
    standby = item(9, message={"mid": "m9", "text": "hello?"})
    [event] = parse(envelope(standby, standby=True)).events
    assert isinstance(event, InboundMessage) and not event.answer
    assert event.metadata["standby"] is True


def test_events_come_back_in_timestamp_order_across_entries() -> None:
    late = envelope(item(300, message={"mid": "late", "text": "3"}))
    early = envelope(item(100, message={"mid": "early", "text": "1"}))
    payload = {"object": "page", "entry": [*late["entry"], *early["entry"]]}
    payload["entry"][0]["messaging"].append(item(200, message={"mid": "middle", "text": "2"}))
    ids = [e.channel_message_id for e in parse(payload).events]  # type: ignore[union-attr]
    assert ids == ["early", "middle", "late"]


def test_items_that_hold_no_chat_event_are_counted_not_raised() -> None:
    items = [
        item(1, optin={"ref": "x"}),
        item(2, message={"text": "no mid"}),
        {"sender": "not an object", "timestamp": 3, "message": {"mid": "m3", "text": "x"}},
        "junk",
    ]
    delivery = parse(envelope(*items))
    assert delivery.events == [] and delivery.skipped == 4


def test_comment_changes_are_skipped() -> None:
    payload = {"object": "instagram", "entry": [{"id": IG, "time": 1, "changes": [{}]}]}
    assert parse(payload, "instagram") == Delivery([], 1)


# --- fuzz --------------------------------------------------------------------------------------

SEEDS = [
    ("messenger_text.json", "page"),
    ("messenger_attachment.json", "page"),
    ("messenger_echo.json", "page"),
    ("messenger_delivery.json", "page"),
    ("messenger_read.json", "page"),
    ("messenger_postback.json", "page"),
    ("instagram_text.json", "instagram"),
    ("instagram_story_reply.json", "instagram"),
]
JUNK = [
    lambda rng: None,
    lambda rng: rng.randint(-(2**70), 2**70),
    lambda rng: rng.random() * 1e300,
    lambda rng: "x" * rng.randint(0, 300),
    lambda rng: "\x00\ud800",
    lambda rng: [],
    lambda rng: {},
    lambda rng: True,
    lambda rng: float("nan"),
]


def test_fuzzed_payloads_raise_only_malformed_payload_and_give_storable_events() -> None:
    rng = random.Random(20261201)
    parsed = 0
    for case in range(2000):
        name, kind = rng.choice(SEEDS)
        payload = fixture(name)
        for _ in range(rng.randint(1, 5)):
            graft = copy.deepcopy(fixture(rng.choice(SEEDS)[0])["entry"][0])
            payload = mutate(payload, rng, JUNK, lambda graft=graft: graft)
        try:
            delivery = parse(payload, kind)
        except MalformedPayload:
            continue
        except Exception as exc:
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc!s:.200}")
        parsed += 1
        for event in delivery.events:
            metadata = getattr(event, "metadata", {})
            assert "unparsed" not in metadata, f"case {case}: a parser bug"
        clean_events(delivery.events)  # the runtime would store every event
    assert parsed > 1000  # most mutations leave a payload to parse
