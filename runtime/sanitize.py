"""The last check before storage: every event's values must be storable on both databases.

Ids must be clean strings (non-empty, printable, no NUL or lone surrogate), or the
event is refused (400: a provider should not retry it forever). An id longer than
the 255 characters storage holds is kept under its digest, `sha256:<64 hex>`, so the
same long id always gives the same key (a redelivery stores nothing new, a status
naming it finds its row); the full id goes to the row's metadata under
`full_ids` (`{"channel_message_id": ...}`). A chat user kept under a digest cannot
be sent to: the provider knows only the full id (the dispatcher fails such a reply
at once, saying so).

Free text is repaired instead of refused: NUL characters and lone surrogates, which
PostgreSQL or UTF-8 cannot hold, become U+FFFD. JSON values (metadata, attachment
extras) are walked without recursion, so any depth the JSON parser accepts is
stored: what lies deeper than `MAX_DEPTH` levels is replaced by `CUT`, and numbers
JSON cannot hold (NaN, infinities, integers past `MAX_INT_BITS`) by a string.

Nothing here raises but `EventRejected`: a value it cannot judge is the event's
fault, never a reason to answer "retry later".
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from datetime import datetime
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
    RequestRejected,
    StatusUpdate,
    StatusWatermark,
)

log = logging.getLogger(__name__)

MAX_ID = 255  # the longest id a column holds; a longer one is kept under its digest
DIGEST_PREFIX = "sha256:"
FULL_IDS = "full_ids"  # metadata key: the full ids of those kept under a digest
MAX_DEPTH = 64  # JSON levels kept in metadata; real payloads nest fewer than 10
CUT = f"[cut: nested deeper than {MAX_DEPTH} levels]"
# About 3,900 digits: Python refuses to write an int of more than 4,300 as text.
MAX_INT_BITS = 13_000
# Containers one value may hold: a 1 MiB body holds fewer (350,000 `[]`). A plugin's
# value that holds itself (no JSON can) would double at every level to MAX_DEPTH.
MAX_CONTAINERS = 500_000
REPLACEMENT = "\ufffd"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NOT_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def clean_text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventRejected(f"{field} must be a string")
    return _repair(value)


def clean_id(value: object, field: str) -> str:
    """The key an id is stored under: itself, or its digest when longer than MAX_ID."""
    if not isinstance(value, str) or not value:
        raise EventRejected(f"{field} must be a non-empty string")
    # isprintable() is False for NUL, lone surrogates and every control character.
    if not value.isprintable():
        raise EventRejected(f"{field} holds characters an id cannot have")
    return value if len(value) <= MAX_ID else id_digest(value)


def id_digest(value: str) -> str:
    """`sha256:<64 hex>` of an id: 71 characters, the same for the same id."""
    return DIGEST_PREFIX + hashlib.sha256(value.encode("utf-8")).hexdigest()


def stored_id(value: str) -> str:
    """The key a provider's id is stored under (a send's answer, already trusted)."""
    return value if len(value) <= MAX_ID else id_digest(value)


def sent_ids(message_id: str, parts: Sequence[str]) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """A send's id and its parts' ids as stored, and the full ids kept under a digest
    (for `provider_metadata["full_ids"]`): a status naming a long id then finds the row."""
    full: dict[str, Any] = {}
    if len(message_id) > MAX_ID:
        full["channel_message_id"] = message_id
    if any(len(part) > MAX_ID for part in parts):
        full["parts"] = list(parts)
    return stored_id(message_id), tuple(stored_id(part) for part in parts), full


UNREACHABLE_USER = (
    "the chat user's id is longer than 255 characters: it is stored under its sha256 "
    "digest, and the provider knows the user only by the full id"
)


def is_digest(value: str) -> bool:
    """Whether a stored id is the digest of a longer one (which cannot be sent to)."""
    return len(value) == len(DIGEST_PREFIX) + 64 and _DIGEST.fullmatch(value) is not None


def clean_json(value: Any, field: str) -> Any:
    """A copy of a JSON-like value both databases store: every string repaired,
    containers deeper than MAX_DEPTH replaced by CUT, numbers JSON cannot hold
    written as strings. Walked breadth first, without recursion: no depth or width
    can exhaust the stack. EventRejected for a value that is no JSON at all."""
    root: list[Any] = [None]
    pending: deque[tuple[Any, Any, Any, int]] = deque()
    root[0] = _scalar_or_defer(value, root, 0, 0, pending, field)
    containers = 0
    while pending:
        target, key, item, depth = pending.popleft()
        containers += 1
        if containers > MAX_CONTAINERS:
            raise EventRejected(f"{field} holds more than {MAX_CONTAINERS} objects and lists")
        if depth >= MAX_DEPTH:
            target[key] = CUT
            continue
        if type(item) is dict or isinstance(item, Mapping):
            copy: dict[str, Any] = {}
            for name, child in item.items():
                name = _repair(name) if type(name) is str else _repair(str(name))
                copy[name] = _scalar_or_defer(child, copy, name, depth + 1, pending, field)
            target[key] = copy
        else:  # a list or tuple: _scalar_or_defer queues nothing else
            items: list[Any] = [None] * len(item)
            for index, child in enumerate(item):
                items[index] = _scalar_or_defer(child, items, index, depth + 1, pending, field)
            target[key] = items
    return root[0]


def _scalar_or_defer(
    value: Any,
    target: Any,
    key: Any,
    depth: int,
    pending: deque[tuple[Any, Any, Any, int]],
    field: str,
) -> Any:
    """A scalar, cleaned; a container is queued to be copied into target[key] later."""
    kind = type(value)  # exact types first: the ABC checks below are slow
    if kind is str:
        return _repair(value)
    if kind is bool or value is None:
        return value
    if kind is int or isinstance(value, int):  # a bool never gets here: its kind is bool
        return int(value) if value.bit_length() <= MAX_INT_BITS else _big(value)
    if kind is float or isinstance(value, float):
        return float(value) if math.isfinite(value) else _NOT_FINITE.get(value, "NaN")
    if isinstance(value, str):
        return _repair(str(value))
    if kind is dict or kind is list or isinstance(value, Mapping | list | tuple):
        pending.append((target, key, value, depth))
        return None
    raise EventRejected(f"{field} holds a {kind.__name__}, not JSON")


def _big(value: int) -> str:
    return f"[cut: an integer of {value.bit_length()} bits]"


def clean_event(event: InboundEvent) -> InboundEvent:
    if isinstance(event, InboundMessage):
        return _clean_message(event)
    if isinstance(event, InboundEdit):
        return dataclasses.replace(
            event,
            **_common_fields(event),
            edited_at=_clean_time(event.edited_at, "edited_at"),
        )
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
        up_to = _clean_time(event.up_to, "watermark time")
        if up_to is None:
            raise EventRejected("watermark time is missing")
        return dataclasses.replace(
            event,
            channel_user_id=clean_id(event.channel_user_id, "watermark user id"),
            up_to=up_to,
        )
    if isinstance(event, OutboundEcho):
        return _clean_echo(event)
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


EVENT_TYPES = (
    InboundMessage,
    InboundEdit,
    StatusUpdate,
    StatusWatermark,
    OutboundEcho,
    ProviderNotice,
)


def checked_events(value: object) -> list[InboundEvent]:
    """What an adapter's parse returned, if it is a list of events: a plugin's odd
    return value is the delivery refused (400), never a 500 from the code routing it."""
    if not isinstance(value, list | tuple):
        raise EventRejected(f"the adapter's parse returned {type(value).__name__}, not a list")
    for item in value:
        if not isinstance(item, EVENT_TYPES):
            raise EventRejected(f"the adapter's parse returned a {type(item).__name__}")
    return list(value)


def clean_events(events: Sequence[InboundEvent]) -> list[InboundEvent]:
    """Every event made storable; raises only EventRejected (the delivery is refused
    whole, 400), so an adapter's odd value is never reported as a database failure."""
    try:
        return [clean_event(event) for event in events]
    except RequestRejected:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # a value of a type nothing here expects (a plugin's bug)
        log.warning("an event could not be made storable", exc_info=True)
        raise EventRejected(f"an event could not be stored ({type(exc).__name__})") from exc


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
    full = _long_ids(
        channel_message_id=message.channel_message_id,
        channel_user_id=message.channel_user_id,
        reply_to=message.reply_to,
    )
    return dataclasses.replace(
        message,
        **_common_fields(message),
        sent_at=_clean_time(message.sent_at, "sent_at"),
        reply_to=clean_id(message.reply_to, "reply_to") if message.reply_to else None,
        metadata=clean_json(_with_full_ids(message.metadata, full), "metadata"),
    )


def _clean_echo(echo: OutboundEcho) -> OutboundEcho:
    full = _long_ids(
        channel_message_id=echo.channel_message_id, channel_user_id=echo.channel_user_id
    )
    return dataclasses.replace(
        echo,
        channel_message_id=clean_id(echo.channel_message_id, "echo message id"),
        channel_user_id=clean_id(echo.channel_user_id, "echo user id"),
        text=clean_text(echo.text, "echo text"),
        attachments=tuple(_clean_attachment(a) for a in echo.attachments),
        sent_at=_clean_time(echo.sent_at, "echo sent_at"),
        metadata=clean_json(_with_full_ids(echo.metadata, full), "echo metadata"),
    )


def _long_ids(**ids: object) -> dict[str, str]:
    """The ids that will be kept under a digest (run before clean_id refuses unfit ones)."""
    return {name: v for name, v in ids.items() if isinstance(v, str) and len(v) > MAX_ID}


def _with_full_ids(metadata: Mapping[str, Any], full: Mapping[str, str]) -> dict[str, Any]:
    found = dict(metadata)
    if full:
        found[FULL_IDS] = dict(full)
    return found


def _clean_time(value: object, field: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise EventRejected(f"{field} must be a timezone-aware datetime")
    return value


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
