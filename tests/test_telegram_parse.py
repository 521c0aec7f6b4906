"""Telegram Update JSON → normalized events (adapters/telegram/parse.py).

Fixtures come from the shared provider fixtures beside the repository
(`<repo>/../shared/providers/fixtures`, else `/work/shared/providers/fixtures`).
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from leadline.adapters.base import Attachment, InboundEdit, InboundMessage, MalformedPayload
from leadline.adapters.telegram import parse as telegram_parse
from leadline.adapters.telegram.parse import UNPARSED, ParsedUpdate, parse_body, parse_update
from leadline.runtime.sanitize import clean_events
from tests.fuzz import mutate
from tests.helpers import fixtures_dir

UPDATE_FIXTURES = ("text", "command", "photo", "edited", "callback_query")
ADA = "123456789"
LARGE_PHOTO = "AgACAgIAAxkBAAMsExamplePhotoLarge0000000000000"


def load(name: str) -> Any:
    path = fixtures_dir() / f"telegram_{name}.json"
    if not path.is_file():
        pytest.fail(f"missing fixture {path}")
    return json.loads(path.read_text("utf-8"))


def raw(name: str) -> bytes:
    return (fixtures_dir() / f"telegram_{name}.json").read_bytes()


def only(parsed: ParsedUpdate) -> Any:
    assert len(parsed.events) == 1, parsed
    return parsed.events[0]


def message_update(content: dict[str, Any], **envelope: Any) -> dict[str, Any]:
    """The text fixture's update with its content (`text`) replaced."""
    update = load("text")
    message = update["message"]
    del message["text"]
    message.update(content)
    message.update(envelope)
    return update


# --- the fixtures ----------------------------------------------------------------


def test_every_telegram_update_fixture_has_an_expectation_here() -> None:
    updates = set()
    for path in fixtures_dir().glob("telegram_*.json"):
        data = json.loads(path.read_text("utf-8"))
        if isinstance(data, dict) and "update_id" in data:
            updates.add(path.stem.removeprefix("telegram_"))
    assert updates == set(UPDATE_FIXTURES)


def test_text_fixture_is_a_message_keyed_by_chat_and_message_id() -> None:
    parsed = parse_body(raw("text"))
    assert parsed.update_id == 100000001
    assert parsed.callback_query_id is None
    assert parsed.update_type == "message"
    assert parsed.skipped == ()
    assert only(parsed) == InboundMessage(
        channel_message_id=f"{ADA}:42",
        channel_user_id=ADA,
        text="Hello, is anyone there?",
        channel_username="ada_example",
        user_display_name="Ada Example",
        sent_at=datetime(2026, 1, 1, tzinfo=UTC),
        metadata={"chat_type": "private", "from_id": ADA, "update_id": 100000001},
    )


def test_command_fixture_keeps_the_full_text_and_records_the_command() -> None:
    event = only(parse_body(raw("command")))
    assert event.channel_message_id == f"{ADA}:43"
    assert event.text == "/start ref_abc123"
    assert event.metadata["command"] == "/start"
    assert event.metadata["command_args"] == "ref_abc123"


def test_command_addressed_to_the_bot_by_name_drops_the_name() -> None:
    update = message_update(
        {
            "text": "/price@example_broker_bot  flat 12 ",
            "entities": [{"offset": 0, "length": 25, "type": "bot_command"}],
        }
    )
    event = only(parse_update(update))
    assert event.metadata["command"] == "/price"
    assert event.metadata["command_args"] == "flat 12"


def test_text_without_a_leading_bot_command_has_no_command() -> None:
    update = message_update(
        {"text": "see /start", "entities": [{"offset": 4, "length": 6, "type": "bot_command"}]}
    )
    assert "command" not in only(parse_update(update)).metadata


def test_photo_fixture_picks_the_largest_size_and_uses_the_caption_as_text() -> None:
    event = only(parse_body(raw("photo")))
    assert event.channel_message_id == f"{ADA}:44"
    assert event.text == "Is this the right part?"
    assert event.attachments == (
        Attachment(
            kind="image",
            ref=LARGE_PHOTO,
            caption="Is this the right part?",
            extra={
                "file_unique_id": "AQADExampleL",
                "width": 1280,
                "height": 960,
                "file_size": 87210,
            },
        ),
    )


def test_edited_fixture_is_an_edit_of_the_original_message() -> None:
    parsed = parse_body(raw("edited"))
    assert parsed.update_id == 100000004
    assert only(parsed) == InboundEdit(
        channel_message_id=f"{ADA}:42",  # the text fixture's message
        channel_user_id=ADA,
        text="Hello, is anyone there? (edited)",
        edited_at=datetime(2026, 1, 1, 0, 1, 40, tzinfo=UTC),
        channel_username="ada_example",
        user_display_name="Ada Example",
    )


def test_callback_query_fixture_is_a_message_and_hands_back_the_query_id() -> None:
    parsed = parse_body(raw("callback_query"))
    assert parsed.update_id == 100000005
    assert parsed.callback_query_id == "4382bfdwdsb323b2d9"
    event = only(parsed)
    assert event == InboundMessage(
        channel_message_id="cb:4382bfdwdsb323b2d9",
        channel_user_id=ADA,
        text="opt:a",
        channel_username="ada_example",
        user_display_name="Ada Example",
        metadata={
            "callback_query": True,
            "callback_message_id": f"{ADA}:45",
            "update_id": 100000005,
            "from_id": ADA,
            "chat_type": "private",
        },
    )


def test_each_update_of_the_getUpdates_response_maps_like_its_own_fixture() -> None:
    response = load("getUpdates_response")
    assert response["ok"] is True
    same_as = {100000001: "text", 100000003: "photo", 100000005: "callback_query"}
    parsed = [parse_update(update) for update in response["result"]]
    assert [p.update_id for p in parsed] == list(same_as)
    for item in parsed:
        assert item == parse_body(raw(same_as[item.update_id]))
    assert [p.callback_query_id for p in parsed] == [None, None, "4382bfdwdsb323b2d9"]


def test_timestamps_are_aware_utc() -> None:
    stamps = [
        only(parse_body(raw("text"))).sent_at,
        only(parse_body(raw("photo"))).sent_at,
        only(parse_body(raw("edited"))).edited_at,
    ]
    for stamp in stamps:
        assert isinstance(stamp, datetime)
        assert stamp.utcoffset() == timedelta(0)
        assert stamp.tzinfo is UTC
    assert stamps[0] == datetime.fromtimestamp(1767225600, UTC)


# --- mapping rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes",
    [
        [(90, 67, 1432), (1280, 960, 87210), (320, 240, 18544)],
        [(1280, 960, 87210), (90, 67, 1432)],
        [(None, None, 10), (None, None, 87210), (None, None, 500)],  # by file_size alone
    ],
)
def test_photo_picks_the_largest_size_in_any_order(sizes: list[tuple[Any, ...]]) -> None:
    photo = [
        {"file_id": f"id-{size}", "file_unique_id": f"u-{size}", "width": w, "height": h}
        | {"file_size": size}
        for w, h, size in sizes
    ]
    event = only(parse_update(message_update({"photo": photo})))
    assert event.attachments[0].ref == "id-87210"
    assert event.text is None


def test_group_message_keys_on_the_chat_id_and_keeps_the_sender() -> None:
    update = load("text")
    update["message"]["chat"] = {
        "id": -1001234567890,
        "title": "Flat hunters",
        "type": "supergroup",
    }
    event = only(parse_update(update))
    assert event.channel_user_id == "-1001234567890"
    assert event.channel_message_id == "-1001234567890:42"
    assert event.channel_username == "ada_example"  # the group has none: the sender's
    assert event.user_display_name == "Ada Example"
    assert event.metadata["from_id"] == ADA
    assert event.metadata["chat_title"] == "Flat hunters"
    assert event.metadata["chat_type"] == "supergroup"


def test_same_message_id_in_two_chats_gives_two_ids() -> None:
    private = only(parse_body(raw("text")))
    group = load("text")
    group["message"]["chat"] = {"id": -42, "title": "G", "type": "group"}
    assert only(parse_update(group)).channel_message_id != private.channel_message_id


def test_reply_to_message_is_keyed_in_the_same_chat() -> None:
    update = load("text")
    update["message"]["reply_to_message"] = copy.deepcopy(load("text")["message"])
    update["message"]["reply_to_message"]["message_id"] = 40
    assert only(parse_update(update)).reply_to == f"{ADA}:40"


@pytest.mark.parametrize(
    ("content", "kind", "expected"),
    [
        (
            {
                "video": {
                    "file_id": "v",
                    "file_unique_id": "uv",
                    "width": 640,
                    "height": 360,
                    "duration": 5,
                    "mime_type": "video/mp4",
                }
            },
            "video",
            {"ref": "v", "mime_type": "video/mp4"},
        ),
        (
            {
                "audio": {
                    "file_id": "a",
                    "file_unique_id": "ua",
                    "duration": 9,
                    "file_name": "a.mp3",
                    "mime_type": "audio/mpeg",
                }
            },
            "audio",
            {"ref": "a", "file_name": "a.mp3", "mime_type": "audio/mpeg"},
        ),
        (
            {
                "voice": {
                    "file_id": "o",
                    "file_unique_id": "uo",
                    "duration": 3,
                    "mime_type": "audio/ogg",
                }
            },
            "voice",
            {"ref": "o", "mime_type": "audio/ogg"},
        ),
        (
            {
                "document": {
                    "file_id": "d",
                    "file_unique_id": "ud",
                    "file_name": "plan.pdf",
                    "mime_type": "application/pdf",
                    "file_size": 2048,
                }
            },
            "document",
            {"ref": "d", "file_name": "plan.pdf", "mime_type": "application/pdf"},
        ),
        (
            {
                "animation": {
                    "file_id": "g",
                    "file_unique_id": "ug",
                    "width": 1,
                    "height": 1,
                    "duration": 1,
                },
                "document": {"file_id": "g", "file_unique_id": "ug"},
            },
            "animation",
            {"ref": "g"},
        ),
        (
            {"video_note": {"file_id": "n", "file_unique_id": "un", "length": 240, "duration": 4}},
            "video_note",
            {"ref": "n"},
        ),
    ],
)
def test_file_media_map_to_attachments(
    content: dict[str, Any], kind: str, expected: dict[str, Any]
) -> None:
    update = message_update(content, caption="look")
    event = only(parse_update(update))
    assert event.text == "look"
    assert "raw_type" not in event.metadata
    (attachment,) = event.attachments
    assert attachment.kind == kind
    assert attachment.caption == "look"
    for name, value in expected.items():
        assert getattr(attachment, name) == value
    assert attachment.extra["file_unique_id"] == f"u{attachment.ref}"


def test_sticker_location_contact_and_venue_map_to_attachments() -> None:
    sticker = {
        "file_id": "s",
        "file_unique_id": "us",
        "type": "regular",
        "width": 512,
        "height": 512,
        "is_animated": False,
        "is_video": False,
        "emoji": "🏠",
    }
    event = only(parse_update(message_update({"sticker": sticker})))
    assert event.attachments[0].kind == "sticker"
    assert event.attachments[0].extra["emoji"] == "🏠"

    event = only(parse_update(message_update({"location": {"latitude": 52.5, "longitude": 13.4}})))
    assert event.text is None
    assert event.attachments == (
        Attachment(kind="location", extra={"latitude": 52.5, "longitude": 13.4}),
    )

    contact = {
        "phone_number": "+491700000000",
        "first_name": "Bo",
        "last_name": "Lee",
        "user_id": 555,
    }
    event = only(parse_update(message_update({"contact": contact})))
    assert event.attachments[0].kind == "contact"
    assert event.attachments[0].extra == {
        "phone_number": "+491700000000",
        "first_name": "Bo",
        "last_name": "Lee",
        "user_id": "555",
    }

    place = {"latitude": 1.0, "longitude": 2.0}
    venue = {"location": place, "title": "Open house", "address": "Main St 1"}
    event = only(parse_update(message_update({"venue": venue, "location": place})))
    assert event.attachments[0].kind == "location"
    assert event.attachments[0].extra["title"] == "Open house"


@pytest.mark.parametrize(
    ("content", "raw_type"),
    [
        ({"poll": {"id": "1", "question": "When?", "options": []}}, "poll"),
        ({"dice": {"emoji": "🎲", "value": 4}}, "dice"),
        ({"live_photo": {"file_id": "x"}}, "live_photo"),
        ({"new_chat_members": [{"id": 1, "is_bot": False, "first_name": "N"}]}, "new_chat_members"),
        ({"a_kind_from_the_future": {"anything": [1, 2]}}, "a_kind_from_the_future"),
        ({"photo": "not a list"}, "photo"),  # a known kind that cannot be read
        ({"text": 12345}, "text"),
        ({}, "unknown"),
    ],
)
def test_unknown_or_unreadable_message_kinds_are_kept_with_raw_type(
    content: dict[str, Any], raw_type: str
) -> None:
    event = only(parse_update(message_update(content)))
    assert isinstance(event, InboundMessage)
    assert event.channel_message_id == f"{ADA}:42"
    assert event.channel_user_id == ADA
    assert event.text is None
    assert event.attachments == ()
    assert event.metadata["raw_type"] == raw_type


@pytest.mark.parametrize(
    "kind",
    ["channel_post", "edited_channel_post", "my_chat_member", "message_reaction", "poll"],
)
def test_other_update_kinds_give_no_events_but_keep_the_update_id(kind: str) -> None:
    update = {"update_id": 7, kind: load("text")["message"]}
    parsed = parse_update(update)
    assert parsed == ParsedUpdate(update_id=7, events=[], update_type=kind)


def test_update_with_only_an_id_gives_no_events() -> None:
    assert parse_update({"update_id": 8}) == ParsedUpdate(update_id=8, events=[])


def test_callback_query_without_a_message_keys_on_the_sender() -> None:
    update = load("callback_query")
    query = update["callback_query"]
    del query["message"]
    query["inline_message_id"] = "AAAinline"
    event = only(parse_update(update))
    assert event.channel_user_id == ADA
    assert "callback_message_id" not in event.metadata
    assert event.metadata["inline_message_id"] == "AAAinline"


def test_callback_query_game_short_name_is_the_text_without_data() -> None:
    update = load("callback_query")
    del update["callback_query"]["data"]
    update["callback_query"]["game_short_name"] = "tour"
    assert only(parse_update(update)).text == "tour"


def test_callback_query_in_a_group_keys_on_the_group() -> None:
    update = load("callback_query")
    update["callback_query"]["message"]["chat"] = {"id": -77, "type": "group", "title": "G"}
    event = only(parse_update(update))
    assert event.channel_user_id == "-77"
    assert event.metadata["callback_message_id"] == "-77:45"
    assert event.metadata["from_id"] == ADA


def test_message_without_a_chat_is_skipped_with_a_reason() -> None:
    update = load("text")
    del update["message"]["chat"]
    parsed = parse_update(update)
    assert parsed.events == []
    assert parsed.update_id == 100000001
    assert parsed.skipped == ("message: no chat",)


def test_message_without_a_message_id_is_keyed_by_the_update_id() -> None:
    update = load("text")
    del update["message"]["message_id"]
    assert only(parse_update(update)).channel_message_id == f"{ADA}:u100000001"


def test_numeric_string_ids_are_accepted_and_other_types_are_not() -> None:
    update = load("text")
    update["message"]["chat"]["id"] = "123456789"
    update["message"]["from"]["id"] = True
    update["message"]["from"]["first_name"] = 7
    event = only(parse_update(update))
    assert event.channel_user_id == ADA
    assert "from_id" not in event.metadata
    assert event.user_display_name == "Example"


def test_a_parser_bug_keeps_the_message_as_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(msg: Any) -> Any:
        raise TypeError("a bug")

    monkeypatch.setattr(telegram_parse, "_content", broken)
    event = only(parse_body(raw("photo")))
    assert event.channel_message_id == f"{ADA}:44"
    assert event.channel_user_id == ADA
    assert event.metadata["raw_type"] == UNPARSED
    parsed = parse_body(raw("edited"))  # an edit cannot be kept half-read: skipped, said why
    assert parsed.events == []
    assert parsed.skipped == ("edited_message: unparsed (TypeError)",)


# --- garbage ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b"[1, 2]",
        b'"text"',
        b"42",
        b"null",
        b"{}",
        b'{"message": {}}',
        b'{"update_id": "100"}',
        b'{"update_id": 1.5}',
        b'{"update_id": true}',
        b'{"update_id": null}',
        b'{"update_id": 100000000000000000000000000}',
        b"[" * 100_000,
        b'{"update_id": 1' + b"0" * 5000 + b"}",
    ],
)
def test_bodies_that_are_no_update_raise_malformed_payload(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_body(body)


@pytest.mark.parametrize("update", [None, [], "x", 5, [{"update_id": 1}]])
def test_non_dict_updates_raise_malformed_payload(update: Any) -> None:
    with pytest.raises(MalformedPayload):
        parse_update(update)


JUNK: list[Callable[[random.Random], Any]] = [
    lambda r: None,
    lambda r: True,
    lambda r: False,
    lambda r: 0,
    lambda r: -1,
    lambda r: r.randint(-(2**70), 2**70),
    lambda r: 10**5000,
    lambda r: float("nan"),
    lambda r: float("inf"),
    lambda r: -1e300,
    lambda r: 1.5,
    lambda r: "",
    lambda r: "x" * 100_000,
    lambda r: "/" + "y" * r.randint(0, 300),
    lambda r: "\x00\ud800 \u202e",
    lambda r: "-1001234567890",
    lambda r: "9" * 30,
    lambda r: "\u0663",  # an Arabic-Indic digit: str.isdigit() but no Telegram id
    lambda r: [],
    lambda r: [None, 1, "a", {}],
    lambda r: {},
    lambda r: {"file_id": 1, "width": "w", "id": [], "offset": 0, "type": "bot_command"},
]


def test_fuzzed_updates_raise_only_malformed_payload_and_give_storable_events() -> None:
    seeds = [load(name) for name in UPDATE_FIXTURES]
    seeds.extend(load("getUpdates_response")["result"])
    group = load("command")
    group["message"]["chat"] = {"id": -100, "type": "group", "title": "T"}
    group["message"]["reply_to_message"] = load("photo")["message"]
    seeds.append(group)
    rng = random.Random(20260101)
    outcomes = {"parsed": 0, "malformed": 0}
    for case in range(2000):
        update = copy.deepcopy(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            update = mutate(
                update, rng, JUNK, lambda: copy.deepcopy(rng.choice(seeds)).get("message", {})
            )
        try:
            parsed = parse_update(update)
        except MalformedPayload:
            outcomes["malformed"] += 1
            continue
        except Exception as exc:
            pytest.fail(f"case {case}: {type(exc).__name__}: {exc!s:.200}")
        outcomes["parsed"] += 1
        assert isinstance(parsed.update_id, int)
        assert not any("unparsed" in reason for reason in parsed.skipped), f"case {case}"
        for event in parsed.events:
            assert isinstance(event, InboundMessage | InboundEdit)
            if isinstance(event, InboundMessage):
                assert event.metadata.get("raw_type") != UNPARSED, f"case {case}"
                assert event.sent_at is None or event.sent_at.tzinfo is UTC
        clean_events(parsed.events)  # the runtime would store every event
        json.dumps([dict(e.metadata) for e in parsed.events if isinstance(e, InboundMessage)])
    assert outcomes["parsed"] > 1000, outcomes


def test_fuzzed_webhook_bodies_raise_only_malformed_payload() -> None:
    rng = random.Random(7)
    body = raw("photo")
    for _ in range(500):
        noisy = bytearray(body)
        for _ in range(rng.randint(1, 8)):
            noisy[rng.randrange(len(noisy))] = rng.randrange(256)
        try:
            parsed = parse_body(bytes(noisy))
        except MalformedPayload:
            continue
        clean_events(parsed.events)
