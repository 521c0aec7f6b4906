"""The last check before storage: ids must be ids, free text is repaired."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from leadline.adapters.base import (
    Attachment,
    EventRejected,
    InboundEdit,
    InboundMessage,
    MessageStatus,
    OutboundEcho,
    ProviderNotice,
    StatusUpdate,
    StatusWatermark,
)
from leadline.runtime import sanitize
from leadline.runtime.sanitize import (
    CUT,
    FULL_IDS,
    MAX_DEPTH,
    clean_event,
    clean_events,
    clean_json,
    id_digest,
    is_digest,
)


@pytest.mark.parametrize(
    "message_id",
    ["", "a\nb", "a\x00b", "\ud800", "x" * 300 + "\x07", 5, None],
    ids=["empty", "newline", "nul", "surrogate", "long with a bell", "number", "none"],
)
def test_unfit_message_ids_are_refused(message_id: object):
    with pytest.raises(EventRejected, match="message id"):
        clean_event(InboundMessage(channel_message_id=message_id, channel_user_id="u1"))  # type: ignore[arg-type]


def test_unfit_user_id_is_refused():
    with pytest.raises(EventRejected, match="user id"):
        clean_event(InboundMessage(channel_message_id="m1", channel_user_id="u\x00"))


def test_non_string_text_is_refused():
    with pytest.raises(EventRejected, match="text"):
        clean_event(InboundMessage("m1", "u1", text=5))  # type: ignore[arg-type]


def test_text_name_metadata_and_attachments_are_repaired():
    event = InboundMessage(
        "m1",
        "u1",
        text="a\x00b\ud800",
        user_display_name="\udfffAna",
        channel_username="n" * 300,
        attachments=[Attachment("image", ref="f\x00", caption="c\ud800")],
        metadata={"k\x00": ["v\x00", {"n": 1}]},
    )
    cleaned = clean_event(event)
    assert isinstance(cleaned, InboundMessage)
    assert cleaned.text == "a\ufffdb\ufffd"
    assert cleaned.user_display_name == "\ufffdAna"
    assert cleaned.channel_username == "n" * 255
    assert cleaned.attachments[0].ref == "f\ufffd"
    assert cleaned.attachments[0].caption == "c\ufffd"
    assert cleaned.metadata == {"k\ufffd": ["v\ufffd", {"n": 1}]}


def test_metadata_that_is_not_json_is_refused():
    with pytest.raises(EventRejected, match="metadata"):
        clean_event(InboundMessage("m1", "u1", metadata={"when": object()}))


def test_status_with_an_unknown_status_value_is_refused():
    with pytest.raises(EventRejected, match="status"):
        clean_event(StatusUpdate("p1", "read"))  # type: ignore[arg-type]


def test_clean_values_pass_unchanged():
    event = InboundMessage("m-1", "u:1", text="Hola ñandú 🏠", channel_username="ana")
    assert clean_event(event) == event
    status = StatusUpdate("p1", MessageStatus.READ)
    assert clean_event(status) == status


def test_a_provider_notice_is_repaired_a_long_key_digested_and_an_unfit_key_refused():
    notice = ProviderNotice("d1:0", code="1" * 80, title="t\x00", detail={"k": "v\ud800"})
    cleaned = clean_event(notice)
    assert isinstance(cleaned, ProviderNotice)
    assert (cleaned.code, cleaned.title) == ("1" * 64, "t\ufffd")
    assert cleaned.detail == {"k": "v\ufffd"}
    assert clean_event(ProviderNotice("k" * 300)) == ProviderNotice(id_digest("k" * 300))
    with pytest.raises(EventRejected, match="notice key"):
        clean_event(ProviderNotice("k\n1"))


# --- ids over 255 characters: kept under their digest ---------------------------------------

LONG = "wamid." + "L" * 400  # longer than the 255 characters a column holds


def test_an_id_of_255_characters_is_kept_and_one_more_is_kept_under_its_digest():
    assert clean_event(InboundMessage("m" * 255, "u1")).channel_message_id == "m" * 255  # type: ignore[union-attr]
    cleaned = clean_event(InboundMessage("m" * 256, "u1"))
    assert isinstance(cleaned, InboundMessage)
    expected = "sha256:" + hashlib.sha256(("m" * 256).encode()).hexdigest()
    assert cleaned.channel_message_id == expected == id_digest("m" * 256)
    assert len(expected) == 71 and is_digest(expected) and not is_digest("m" * 71)
    assert cleaned.metadata[FULL_IDS] == {"channel_message_id": "m" * 256}


def test_a_message_with_long_ids_keeps_every_full_id_in_its_metadata():
    user, replied = "U" * 300, "R" * 500
    event = InboundMessage(LONG, user, text="hi", reply_to=replied, metadata={"type": "text"})
    cleaned = clean_event(event)
    assert isinstance(cleaned, InboundMessage)
    assert (cleaned.channel_message_id, cleaned.channel_user_id, cleaned.reply_to) == (
        id_digest(LONG),
        id_digest(user),
        id_digest(replied),
    )
    assert cleaned.metadata == {
        "type": "text",
        FULL_IDS: {"channel_message_id": LONG, "channel_user_id": user, "reply_to": replied},
    }
    assert clean_event(event) == cleaned  # the same id, the same key: a redelivery is a duplicate
    assert clean_event(cleaned) == cleaned  # cleaning twice changes nothing


def test_statuses_edits_echoes_and_watermarks_name_a_long_id_by_the_same_digest():
    when = datetime(2026, 1, 1, tzinfo=UTC)
    status = clean_event(StatusUpdate(LONG, MessageStatus.READ))
    edit = clean_event(InboundEdit(LONG, "u1", text="edited"))
    echo = clean_event(OutboundEcho(LONG, "U" * 300))
    mark = clean_event(StatusWatermark("U" * 300, MessageStatus.READ, when))
    assert isinstance(status, StatusUpdate) and isinstance(edit, InboundEdit)
    assert isinstance(echo, OutboundEcho) and isinstance(mark, StatusWatermark)
    assert status.channel_message_id == edit.channel_message_id == echo.channel_message_id
    assert echo.channel_message_id == id_digest(LONG)
    assert echo.channel_user_id == mark.channel_user_id == id_digest("U" * 300)
    assert echo.metadata[FULL_IDS] == {"channel_message_id": LONG, "channel_user_id": "U" * 300}


# --- JSON values of any shape: stored, never a crash -----------------------------------------


def nested(levels: int, leaf: Any = "bottom") -> Any:
    value = leaf
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def depth_of(value: Any) -> int:
    depth = 0
    while isinstance(value, dict | list) and value:
        value = value["k"] if isinstance(value, dict) else value[0]
        depth += 1
    return depth


@pytest.mark.parametrize("levels", [450, 500, 5_000, 50_000])
def test_metadata_of_any_depth_is_cut_at_max_depth_without_recursion(levels: int):
    """clean_json used to recurse two frames per level: 500 levels raised RecursionError,
    which the webhook answered as a database failure (503, retried for days)."""
    cleaned = clean_event(InboundMessage("m1", "u1", metadata={"raw": nested(levels)}))
    assert isinstance(cleaned, InboundMessage)
    raw = cleaned.metadata["raw"]
    assert depth_of(raw) == MAX_DEPTH - 1  # the metadata object itself is the first level
    bottom = raw
    while isinstance(bottom, dict | list):
        bottom = bottom["k"] if isinstance(bottom, dict) else bottom[0]
    assert bottom == CUT


def test_a_value_within_the_depth_is_kept_whole():
    value = nested(MAX_DEPTH - 1)
    assert clean_json(value, "m") == value


def test_wide_values_and_huge_strings_are_kept():
    wide = {f"k{i}": [i, str(i), None, True] for i in range(50_000)}
    huge = "x" * 2_000_000
    cleaned = clean_event(InboundMessage("m1", "u1", text=huge, metadata={"wide": wide}))
    assert isinstance(cleaned, InboundMessage)
    assert cleaned.text == huge and cleaned.metadata["wide"] == wide


def test_numbers_json_cannot_hold_become_strings():
    values = [math.nan, math.inf, -math.inf, 10**5000, -(10**5000), 2**63, 1.5, True, None]
    cleaned = clean_json({"n": values, 7: (1, 2)}, "m")
    assert cleaned["n"][:3] == ["NaN", "Infinity", "-Infinity"]
    assert cleaned["n"][3].startswith("[cut: an integer of") and cleaned["n"][4] == cleaned["n"][3]
    assert cleaned["n"][5:] == [2**63, 1.5, True, None]
    assert cleaned["7"] == [1, 2]


@pytest.mark.parametrize(
    "event",
    [
        InboundMessage("m1", "u1", metadata=5),  # type: ignore[arg-type]
        InboundMessage("m1", "u1", attachments=7),  # type: ignore[arg-type]
        InboundMessage("m1", "u1", sent_at="2026-01-01"),  # type: ignore[arg-type]
        InboundMessage("m1", "u1", sent_at=datetime(2026, 1, 1)),  # naive
        StatusWatermark("u1", MessageStatus.READ, None),  # type: ignore[arg-type]
        ProviderNotice("k1", detail=["not", "a", "mapping"]),  # type: ignore[arg-type]
    ],
    ids=["metadata int", "attachments int", "time text", "naive time", "no time", "detail list"],
)
def test_a_plugins_odd_values_are_refused_never_raised_as_something_else(event: Any):
    """Anything but EventRejected would reach the webhook as a database failure (503)."""
    with pytest.raises(EventRejected):
        clean_events([event])


def test_a_value_that_holds_itself_is_refused_not_walked_forever(
    monkeypatch: pytest.MonkeyPatch,
):
    """No JSON can hold itself, but a plugin's dict can: twice per level is 2**64 copies."""
    monkeypatch.setattr(sanitize, "MAX_CONTAINERS", 10_000)  # the same walk, sooner
    loop: dict[str, Any] = {}
    loop["a"] = loop["b"] = loop
    with pytest.raises(EventRejected, match="metadata holds more than 10000"):
        clean_events([InboundMessage("m1", "u1", metadata=loop)])
