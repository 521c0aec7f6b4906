"""The last check before storage: ids must be ids, free text is repaired."""

from __future__ import annotations

import pytest

from leadline.adapters.base import (
    Attachment,
    EventRejected,
    InboundMessage,
    MessageStatus,
    ProviderNotice,
    StatusUpdate,
)
from leadline.runtime.sanitize import clean_event


@pytest.mark.parametrize(
    "message_id",
    ["", "x" * 256, "a\nb", "a\x00b", "\ud800", 5, None],
    ids=["empty", "too long", "newline", "nul", "surrogate", "number", "none"],
)
def test_unfit_message_ids_are_refused(message_id: object):
    with pytest.raises(EventRejected, match="message id"):
        clean_event(InboundMessage(channel_message_id=message_id, channel_user_id="u1"))  # type: ignore[arg-type]


def test_unfit_user_id_is_refused():
    with pytest.raises(EventRejected, match="user id"):
        clean_event(InboundMessage(channel_message_id="m1", channel_user_id="u" * 300))


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


def test_a_provider_notice_is_repaired_and_an_unfit_key_refused():
    notice = ProviderNotice("d1:0", code="1" * 80, title="t\x00", detail={"k": "v\ud800"})
    cleaned = clean_event(notice)
    assert isinstance(cleaned, ProviderNotice)
    assert (cleaned.code, cleaned.title) == ("1" * 64, "t\ufffd")
    assert cleaned.detail == {"k": "v\ufffd"}
    with pytest.raises(EventRejected, match="notice key"):
        clean_event(ProviderNotice("k" * 300))
