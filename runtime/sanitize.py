"""The last check before storage: every event's values must be storable on both databases.

Ids must be clean strings of at most 255 characters, or the event is refused
(400: a provider should not retry it forever). Free text is repaired instead of
refused: NUL characters and lone surrogates, which PostgreSQL or UTF-8 cannot
hold, become U+FFFD.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from leadline.adapters.base import (
    Attachment,
    EventRejected,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    MessageStatus,
    OutboundEcho,
    ProviderNotice,
    StatusUpdate,
    StatusWatermark,
)

MAX_ID = 255
REPLACEMENT = "\ufffd"


def clean_text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventRejected(f"{field} must be a string")
    return _repair(value)


def clean_id(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise EventRejected(f"{field} must be a non-empty string")
    if len(value) > MAX_ID:
        raise EventRejected(f"{field} is longer than {MAX_ID} characters")
    if _repair(value) != value or not value.isprintable():
        raise EventRejected(f"{field} holds characters an id cannot have")
    return value


def clean_json(value: Any, field: str) -> Any:
    """Repair every string in a JSON-like value; refuse what JSON cannot hold."""
    kind = type(value)  # exact types first: the ABC checks below are slow
    if kind is dict:
        return {_repair(str(k)): clean_json(v, field) for k, v in value.items()}
    if kind is int or kind is float or kind is bool:
        return value
    if isinstance(value, str):
        return _repair(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {_repair(str(k)): clean_json(v, field) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v, field) for v in value]
    raise EventRejected(f"{field} holds a {type(value).__name__}, not JSON")


def clean_event(event: InboundEvent) -> InboundEvent:
    if isinstance(event, InboundMessage):
        return _clean_message(event)
    if isinstance(event, InboundEdit):
        return dataclasses.replace(event, **_common_fields(event))
    if isinstance(event, StatusUpdate):
        if not isinstance(event.status, MessageStatus):
            raise EventRejected("status must be a known message status")
        return dataclasses.replace(
            event,
            channel_message_id=clean_id(event.channel_message_id, "status message id"),
            error=clean_text(event.error, "status error"),
        )
    if isinstance(event, StatusWatermark):
        if not isinstance(event.status, MessageStatus):
            raise EventRejected("status must be a known message status")
        return dataclasses.replace(
            event, channel_user_id=clean_id(event.channel_user_id, "watermark user id")
        )
    if isinstance(event, OutboundEcho):
        return dataclasses.replace(
            event,
            channel_message_id=clean_id(event.channel_message_id, "echo message id"),
            channel_user_id=clean_id(event.channel_user_id, "echo user id"),
            text=clean_text(event.text, "echo text"),
            attachments=tuple(_clean_attachment(a) for a in event.attachments),
            metadata=clean_json(dict(event.metadata), "echo metadata"),
        )
    if isinstance(event, ProviderNotice):
        code = clean_text(event.code, "notice code")
        return dataclasses.replace(
            event,
            key=clean_id(event.key, "notice key"),
            code=code[:64] if code else None,
            title=clean_text(event.title, "notice title"),
            detail=clean_json(dict(event.detail), "notice detail"),
        )
    raise EventRejected(f"unknown event type {type(event).__name__}")


def clean_events(events: Sequence[InboundEvent]) -> list[InboundEvent]:
    return [clean_event(event) for event in events]


def _common_fields(event: InboundMessage | InboundEdit) -> dict[str, Any]:
    """What messages and edits share: ids, the sender, the text and attachments."""
    username = clean_text(event.channel_username, "username")
    return {
        "channel_message_id": clean_id(event.channel_message_id, "message id"),
        "channel_user_id": clean_id(event.channel_user_id, "user id"),
        "channel_username": username[:MAX_ID] if username else username,
        "text": clean_text(event.text, "text"),
        "user_display_name": clean_text(event.user_display_name, "user name"),
        "attachments": tuple(_clean_attachment(a) for a in event.attachments),
    }


def _clean_message(message: InboundMessage) -> InboundMessage:
    return dataclasses.replace(
        message,
        **_common_fields(message),
        reply_to=clean_id(message.reply_to, "reply_to") if message.reply_to else None,
        metadata=clean_json(dict(message.metadata), "metadata"),
    )


def _clean_attachment(attachment: Attachment) -> Attachment:
    if not isinstance(attachment, Attachment):
        raise EventRejected("attachments must be Attachment values")
    return Attachment.from_json(clean_json(attachment.to_json(), "attachment"))


def _repair(text: str) -> str:
    if "\x00" not in text:
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass
    return "".join(
        REPLACEMENT if ch == "\x00" or 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text
    )
