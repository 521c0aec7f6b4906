"""Telegram Bot API `Update` JSON → normalized inbound events.

Pure functions on plain dicts (the raw Update JSON, from a webhook body or one
item of a `getUpdates` result), so a payload that a typed model such as
aiogram's cannot represent is still stored. No I/O, no logging.

- Only a missing or non-integer `update_id` (or a body that is no JSON object)
  raises `MalformedPayload`. Anything wrong inside an update degrades instead:
  a field of the wrong type is ignored, a message whose content cannot be read
  keeps `metadata["raw_type"]`, and content that cannot be addressed at all (a
  message without a chat id) is left out with a short reason in `skipped`.
- Telegram message ids count per chat, so a message is keyed
  `"{chat_id}:{message_id}"`; the lead is the chat (`channel_user_id` = chat
  id), which for private chats is also the user's id.
- A `callback_query` (an inline button press) becomes a message whose text is
  the button's data, keyed `"cb:{callback_query.id}"`; its id is handed back so
  the adapter can always answer it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from leadline.adapters.base import (
    Attachment,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
)
from leadline.adapters.payload import decode_json, ident, utc_from_unix
from leadline.adapters.payload import finite as _num
from leadline.adapters.payload import obj as _obj
from leadline.adapters.payload import put as _put
from leadline.adapters.payload import text as _str

# Message fields that describe a message rather than hold its content.
ENVELOPE_FIELDS = frozenset(
    {
        "message_id", "date", "chat", "message_thread_id", "direct_messages_topic", "from",
        "sender_chat", "sender_boost_count", "sender_business_bot", "sender_tag",
        "guest_query_id", "business_connection_id", "forward_origin", "is_topic_message",
        "is_automatic_forward", "reply_to_message", "external_reply", "quote",
        "reply_to_story", "reply_to_checklist_task_id", "reply_to_poll_option_id", "via_bot",
        "guest_bot_caller_user", "guest_bot_caller_chat", "edit_date",
        "has_protected_content", "is_from_offline", "is_paid_post", "media_group_id",
        "author_signature", "paid_star_count", "entities", "link_preview_options",
        "suggested_post_info", "effect_id", "caption", "caption_entities",
        "show_caption_above_media", "has_media_spoiler", "reply_markup", "receiver_user",
        "ephemeral_message_id", "forward_date", "forward_from", "forward_from_chat",
        "forward_from_message_id", "forward_sender_name", "forward_signature",
    }
)  # fmt: skip
UNPARSED = "unparsed"  # raw_type of a message this module failed on (a bug, never expected)
_NUMERIC_ID = re.compile(r"-?[0-9]{1,20}")
_INT_LIMIT = 2**63


@dataclass(frozen=True, slots=True)
class ParsedUpdate:
    """One Update: its id (confirm it even when it holds no event) and its events.

    `update_type` names the Update's payload field ("message", "channel_post", …)
    and `skipped` gives short reasons for content that could not become an event;
    both are safe to log (no payload values).
    """

    update_id: int
    events: list[InboundEvent]
    callback_query_id: str | None = None
    update_type: str | None = None
    skipped: tuple[str, ...] = ()


class _Skip(Exception):
    """Content that cannot become an event; the reason goes to `ParsedUpdate.skipped`."""


@dataclass(frozen=True, slots=True)
class _Content:
    text: str | None
    attachments: tuple[Attachment, ...] = ()
    raw_type: str | None = None


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a message lives and who sent it."""

    chat_id: str
    message_key: str
    username: str | None
    display_name: str | None
    metadata: dict[str, Any] = field(default_factory=dict)


# --- public API ----------------------------------------------------------------


def parse_body(body: bytes) -> ParsedUpdate:
    """Parse a webhook body (one JSON Update)."""
    return parse_update(decode_json(body))


def parse_update(update: Mapping[str, Any]) -> ParsedUpdate:
    """Parse one decoded Update into events; raises only MalformedPayload."""
    if not isinstance(update, Mapping):
        raise MalformedPayload("update is not a JSON object")
    update_id = update.get("update_id")
    if not isinstance(update_id, int) or not _is_int(update_id):
        raise MalformedPayload("update_id is missing or not a 64-bit integer")
    events: list[InboundEvent] = []
    skipped: list[str] = []
    for name, build in _UPDATE_HANDLERS.items():
        if name not in update:
            continue
        try:
            events.append(_guarded(build, update[name], update_id))
        except _Skip as skip:
            skipped.append(f"{name}: {skip}")
    return ParsedUpdate(
        update_id=update_id,
        events=events,
        callback_query_id=_callback_query_id(update.get("callback_query")),
        update_type=_update_type(update),
        skipped=tuple(skipped),
    )


# --- update kinds --------------------------------------------------------------


def _message(value: Any, update_id: int) -> InboundMessage:
    msg = _require_obj(value, "not an object")
    origin = _origin(msg, update_id)
    content = _content(msg)
    metadata = dict(origin.metadata)
    if content.raw_type:
        metadata["raw_type"] = content.raw_type
    if isinstance(text := msg.get("text"), str):
        metadata.update(_command(text, msg.get("entities")))
    return InboundMessage(
        channel_message_id=origin.message_key,
        channel_user_id=origin.chat_id,
        text=content.text,
        channel_username=origin.username,
        user_display_name=origin.display_name,
        attachments=content.attachments,
        sent_at=_utc(msg.get("date")),
        reply_to=_reply_to(msg, origin.chat_id),
        metadata=metadata,
    )


def _edited_message(value: Any, update_id: int) -> InboundEdit:
    msg = _require_obj(value, "not an object")
    chat_id = _chat_id(msg)
    message_id = _int(msg.get("message_id"))
    if message_id is None:
        raise _Skip("no message_id: the edited message cannot be found")
    chat = _obj(msg.get("chat")) or {}
    sender = _obj(msg.get("from"))
    content = _content(msg)
    return InboundEdit(
        channel_message_id=f"{chat_id}:{message_id}",
        channel_user_id=chat_id,
        text=content.text,
        attachments=content.attachments,
        edited_at=_utc(msg.get("edit_date")),
        channel_username=_username(chat, sender),
        user_display_name=_display_name(chat, sender),
    )


def _callback_query(value: Any, update_id: int) -> InboundMessage:
    query = _require_obj(value, "not an object")
    query_id = _callback_query_id(query)
    if query_id is None:
        raise _Skip("no usable id")
    sender = _obj(query.get("from"))
    message = _obj(query.get("message"))
    chat = _obj(message.get("chat")) if message else None
    chat_id = _id(chat.get("id")) if chat else None
    user_id = chat_id or (_id(sender.get("id")) if sender else None)
    if user_id is None:
        raise _Skip("neither message.chat.id nor from.id")
    metadata: dict[str, Any] = {"callback_query": True, "update_id": update_id}
    if message and chat_id and (message_id := _int(message.get("message_id"))) is not None:
        metadata["callback_message_id"] = f"{chat_id}:{message_id}"
    _put(metadata, "from_id", _id(sender.get("id")) if sender else None)
    _put(metadata, "chat_type", _str(chat.get("type")) if chat else None)
    _put(metadata, "inline_message_id", _str(query.get("inline_message_id")))
    return InboundMessage(
        channel_message_id=f"cb:{query_id}",
        channel_user_id=user_id,
        text=_str(query.get("data")) or _str(query.get("game_short_name")),
        channel_username=_str(sender.get("username")) if sender else None,
        user_display_name=_full_name(sender),
        metadata=metadata,
    )


_UPDATE_HANDLERS: dict[str, Callable[[Any, int], InboundEvent]] = {
    "message": _message,
    "edited_message": _edited_message,
    "callback_query": _callback_query,
}


def _guarded(build: Callable[[Any, int], InboundEvent], value: Any, update_id: int) -> InboundEvent:
    """Run a builder. Should it fail on input it ought to tolerate (a bug in this
    module), keep a message anyway, as `raw_type="unparsed"`, rather than lose it."""
    try:
        return build(value, update_id)
    except _Skip:
        raise
    except Exception as exc:  # last resort: never lose a message to a parser bug
        fallback = _unparsed(value, update_id) if build is _message else None
        if fallback is None:
            raise _Skip(f"unparsed ({type(exc).__name__})") from exc
        return fallback


def _unparsed(value: Any, update_id: int) -> InboundMessage | None:
    try:
        origin = _origin(_require_obj(value, "not an object"), update_id)
    except Exception:  # _Skip included: nothing addressable is left
        return None
    metadata = {**origin.metadata, "raw_type": UNPARSED}
    return InboundMessage(origin.message_key, origin.chat_id, metadata=metadata)


def _callback_query_id(value: Any) -> str | None:
    query = _obj(value)
    if query is None:
        return None
    raw = query.get("id")
    if isinstance(raw, int):
        return _id(raw)
    return ident(raw)  # a key over 255 characters is stored under its digest


def _update_type(update: Mapping[str, Any]) -> str | None:
    for key in update:
        if key != "update_id" and isinstance(key, str):
            return key
    return None


# --- messages ------------------------------------------------------------------


def _origin(msg: Mapping[str, Any], update_id: int) -> _Origin:
    chat_id = _chat_id(msg)
    chat = _obj(msg.get("chat")) or {}
    sender = _obj(msg.get("from"))
    message_id = _int(msg.get("message_id"))
    # Without a message_id the update id (unique per bot, stable on redelivery) keys it.
    key = f"{chat_id}:{message_id}" if message_id is not None else f"{chat_id}:u{update_id}"
    metadata: dict[str, Any] = {"update_id": update_id}
    chat_type = _str(chat.get("type"))
    _put(metadata, "chat_type", chat_type)
    _put(metadata, "from_id", _id(sender.get("id")) if sender else None)
    _put(metadata, "chat_title", _str(chat.get("title")))  # groups (private chats have none)
    _put(metadata, "media_group_id", _str(msg.get("media_group_id")))
    return _Origin(
        chat_id=chat_id,
        message_key=key,
        username=_username(chat, sender),
        display_name=_display_name(chat, sender),
        metadata=metadata,
    )


def _chat_id(msg: Mapping[str, Any]) -> str:
    chat = _require_obj(msg.get("chat"), "no chat")
    chat_id = _id(chat.get("id"))
    if chat_id is None:
        raise _Skip("no usable chat.id")
    return chat_id


def _username(chat: Mapping[str, Any], sender: Mapping[str, Any] | None) -> str | None:
    return _str(chat.get("username")) or (_str(sender.get("username")) if sender else None)


def _display_name(chat: Mapping[str, Any], sender: Mapping[str, Any] | None) -> str | None:
    """The sender's name; a private chat's own name when there is no sender."""
    name = _full_name(sender)
    if name is None and _str(chat.get("type")) == "private":
        name = _full_name(chat)
    return name


def _reply_to(msg: Mapping[str, Any], chat_id: str) -> str | None:
    replied = _obj(msg.get("reply_to_message"))
    message_id = _int(replied.get("message_id")) if replied else None
    return f"{chat_id}:{message_id}" if message_id is not None else None


def _command(text: str, entities: Any) -> dict[str, str]:
    """`/start@bot args` → {"command": "/start", "command_args": "args"}."""
    if not isinstance(entities, list):
        return {}
    for item in entities:
        entity = _obj(item)
        if not entity or entity.get("type") != "bot_command" or _int(entity.get("offset")) != 0:
            continue
        length = _int(entity.get("length"))
        if length is None or length <= 0:
            return {}
        # Entity lengths count UTF-16 code units (a command itself is ASCII).
        units = text[:length].encode("utf-16-le", "surrogatepass")[: 2 * length]
        word = units.decode("utf-16-le", "ignore")
        if not word.startswith("/"):
            return {}
        rest = text[len(word) :]
        return {"command": word.split("@", 1)[0], "command_args": rest.strip()}
    return {}


def _content(msg: Mapping[str, Any]) -> _Content:
    """The message's text and media; an unreadable or unknown kind keeps `raw_type`."""
    caption = _str(msg.get("caption"))
    if "text" in msg:
        text = msg.get("text")
        return _Content(text) if isinstance(text, str) else _Content(caption, raw_type="text")
    for kind, build in _MEDIA.items():
        if kind in msg:
            attachment = build(msg.get(kind), caption)
            if attachment is None:
                return _Content(caption, raw_type=kind)
            return _Content(caption, (attachment,))
    return _Content(caption, raw_type=_content_key(msg))


def _content_key(msg: Mapping[str, Any]) -> str:
    for key in msg:
        if isinstance(key, str) and key not in ENVELOPE_FIELDS:
            return key
    return "unknown"


# --- media -----------------------------------------------------------------------


def _photo(value: Any, caption: str | None) -> Attachment | None:
    best = _largest_photo(value)
    return _file("image", best, caption, ("width", "height")) if best else None


def _largest_photo(sizes: Any) -> Mapping[str, Any] | None:
    if not isinstance(sizes, list):
        return None
    usable = [s for s in map(_obj, sizes) if s and _str(s.get("file_id"))]
    if not usable:
        return None

    def size(photo: Mapping[str, Any]) -> tuple[int, int]:
        width, height = _int(photo.get("width")) or 0, _int(photo.get("height")) or 0
        return (width * height, _int(photo.get("file_size")) or 0)

    return max(usable, key=size)  # ties: the first; Telegram lists sizes ascending


def _file(
    kind: str,
    obj: Mapping[str, Any] | None,
    caption: str | None,
    int_fields: tuple[str, ...] = (),
    str_fields: tuple[str, ...] = (),
) -> Attachment | None:
    """An attachment for a Telegram file object (`file_id` is required)."""
    file_id = _str(obj.get("file_id")) if obj else None
    if obj is None or not file_id:
        return None
    extra: dict[str, Any] = {}
    _put(extra, "file_unique_id", _str(obj.get("file_unique_id")))
    for name in (*int_fields, "file_size"):
        _put(extra, name, _int(obj.get(name)))
    for name in str_fields:
        _put(extra, name, _str(obj.get(name)))
    return Attachment(
        kind=kind,
        ref=file_id,
        mime_type=_str(obj.get("mime_type")),
        file_name=_str(obj.get("file_name")),
        caption=caption,
        extra=extra,
    )


def _media(
    kind: str, int_fields: tuple[str, ...] = (), str_fields: tuple[str, ...] = ()
) -> Callable[[Any, str | None], Attachment | None]:
    def build(value: Any, caption: str | None) -> Attachment | None:
        return _file(kind, _obj(value), caption, int_fields, str_fields)

    return build


def _sticker(value: Any, caption: str | None) -> Attachment | None:
    sticker = _obj(value)
    attachment = _file("sticker", sticker, caption, ("width", "height"), ("emoji", "set_name"))
    if sticker is None or attachment is None:
        return None
    flags = {k: v for k in ("is_animated", "is_video") if isinstance(v := sticker.get(k), bool)}
    return replace(attachment, extra={**attachment.extra, **flags})


def _location(value: Any, caption: str | None) -> Attachment | None:
    place = _obj(value)
    latitude = _num(place.get("latitude")) if place else None
    longitude = _num(place.get("longitude")) if place else None
    if latitude is None or longitude is None:
        return None
    extra: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    _put(extra, "horizontal_accuracy", _num(place.get("horizontal_accuracy")) if place else None)
    return Attachment(kind="location", caption=caption, extra=extra)


def _venue(value: Any, caption: str | None) -> Attachment | None:
    venue = _obj(value)
    location = _location(venue.get("location"), caption) if venue else None
    if venue is None or location is None:
        return None
    extra = dict(location.extra)
    _put(extra, "title", _str(venue.get("title")))
    _put(extra, "address", _str(venue.get("address")))
    return replace(location, extra=extra)


def _contact(value: Any, caption: str | None) -> Attachment | None:
    contact = _obj(value)
    phone = _str(contact.get("phone_number")) if contact else None
    if contact is None or phone is None:
        return None
    extra: dict[str, Any] = {"phone_number": phone}
    _put(extra, "first_name", _str(contact.get("first_name")))
    _put(extra, "last_name", _str(contact.get("last_name")))
    _put(extra, "user_id", _id(contact.get("user_id")))
    return Attachment(kind="contact", caption=caption, extra=extra)


# Order matters: an animation also carries `document`, a venue also carries `location`.
_MEDIA: dict[str, Callable[[Any, str | None], Attachment | None]] = {
    "photo": _photo,
    "animation": _media("animation", ("width", "height", "duration")),
    "video_note": _media("video_note", ("length", "duration")),
    "video": _media("video", ("width", "height", "duration")),
    "audio": _media("audio", ("duration",), ("performer", "title")),
    "voice": _media("voice", ("duration",)),
    "document": _media("document"),
    "sticker": _sticker,
    "venue": _venue,
    "location": _location,
    "contact": _contact,
}


# --- typed reads of untrusted values ---------------------------------------------


def _require_obj(value: Any, reason: str) -> Mapping[str, Any]:
    obj = _obj(value)
    if obj is None:
        raise _Skip(reason)
    return obj


def _is_int(value: Any) -> bool:
    """An int in the signed 64-bit range Telegram's ids live in; never a bool."""
    # type() first: decoded JSON holds plain ints, and this runs for every id.
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        return False
    return -_INT_LIMIT < value < _INT_LIMIT


def _int(value: Any) -> int | None:
    """A 64-bit int, or a numeric string of one (ASCII digits only)."""
    if _is_int(value):
        return value
    if isinstance(value, str) and _NUMERIC_ID.fullmatch(value):
        return _int(int(value))
    return None


def _id(value: Any) -> str | None:
    number = _int(value)
    return str(number) if number is not None else None


def _utc(value: Any) -> datetime | None:
    """A Unix timestamp as an aware UTC datetime; None when it is none or out of range."""
    seconds = _num(value)
    return None if seconds is None else utc_from_unix(seconds)


def _full_name(person: Mapping[str, Any] | None) -> str | None:
    if person is None:
        return None
    first, last = _str(person.get("first_name")), _str(person.get("last_name"))
    name = f"{first} {last}" if first and last else first or last or ""
    return name.strip() or None
