"""WhatsApp Cloud API webhook body → normalized inbound events.

Pure functions on the decoded JSON: no I/O, no logging, no pywa. pywa 4.5 reads
only `entry[0].changes[0]` and the first message or status, and fails on
payloads without `contacts[].user_id` (STACK.md); Meta batches up to 1,000
updates per POST, so this module walks every entry, change, message and status
itself and never lets a gap in one item lose the others.

- Only a body that is no JSON object, whose `object` is not
  `whatsapp_business_account`, or whose `entry` is not a list raises
  `MalformedPayload`. Anything wrong inside degrades instead: an item that
  cannot become an event (no id, no sender, an unknown status) is counted in
  `Delivery.skipped`, and a message whose content cannot be read is kept with
  its raw object in `metadata["raw"]`.
- Every event knows the business number it arrived on: `Delivery.routed` pairs
  each event with its change's `metadata.phone_number_id` (messages also carry
  it in `metadata["phone_number_id"]`), and `Delivery.events_for(id)` selects
  one number's events. One Meta app has one callback URL for all its numbers,
  so the adapter must route by this id.
- The lead is the sender's phone number (`wa_id`, `messages[].from`); the
  business-scoped user id (BSUID: `contacts[].user_id`, `messages[].from_user_id`),
  when Meta sends it, goes to metadata. A user who hides their number behind a
  username has no `from`: their BSUID is then the lead's id.
- Top-level `errors[]` of a change become `ProviderNotice`s in `Delivery.notices`,
  keyed by the body's digest and their place in it: a redelivery repeats the keys.
- Ids are kept when they are ids (non-empty printable strings, at most 4,096
  characters: `payload.ident`); one over the 255 characters a column holds is
  stored by the runtime under its digest. An item whose id is garbage is skipped:
  one bad id must not make the runtime refuse, and Meta retry for 7 days, a whole
  batch.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from leadline.adapters.base import (
    Attachment,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    ProviderNotice,
    StatusUpdate,
)
from leadline.adapters.payload import decode_json, utc_from_unix
from leadline.adapters.payload import finite as _num
from leadline.adapters.payload import ident as _id
from leadline.adapters.payload import obj as _obj
from leadline.adapters.payload import put as _put
from leadline.adapters.payload import text as _str

OBJECT = "whatsapp_business_account"
MESSAGES_FIELD = "messages"  # the only change field that carries messages and statuses
UNKNOWN_TYPE = "unknown"  # metadata["type"] of a message without a string `type`
MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
STATUSES: Mapping[str, MessageStatus] = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "failed": MessageStatus.FAILED,
}  # "played" (voice/video heard) and anything newer are skipped: no delivery state
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # Unix seconds as Meta sends them (a string)


# --- public API ----------------------------------------------------------------


class Routed(NamedTuple):
    """One event and the business phone number id it arrived on (None if unsaid)."""

    phone_number_id: str | None
    event: InboundEvent


@dataclass(frozen=True, slots=True)
class Delivery:
    """Everything one webhook POST held.

    `events` are in payload order (messages and statuses mixed); `routed` holds
    the same events, each with its phone number id. `errors` are the raw
    top-level `errors[]` objects of the changes; `skipped` counts items that
    could not become an event (safe to log: no payload values).
    """

    phone_number_ids: frozenset[str]
    events: list[InboundEvent]
    errors: list[dict[str, Any]]
    skipped: int
    routed: list[Routed] = field(default_factory=list)
    notices: list[Routed] = field(default_factory=list)  # ProviderNotice events

    def events_for(self, phone_number_id: str) -> list[InboundEvent]:
        """The events addressed to one business number."""
        return [item.event for item in self.routed if item.phone_number_id == phone_number_id]


def parse_body(body: bytes) -> Delivery:
    """Parse a webhook body; raises only MalformedPayload."""
    payload = _decode(body)
    if payload.get("object") != OBJECT:
        raise MalformedPayload(f"object is not {OBJECT}")
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload("entry is missing or not a list")
    batch = _Batch()
    for entry in entries:
        _entry(entry, batch)
    return batch.delivery(body)


# --- walking the envelope ------------------------------------------------------


@dataclass(slots=True)
class _Batch:
    """What the walk has gathered so far."""

    routed: list[Routed] = field(default_factory=list)
    phone_number_ids: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_numbers: list[str | None] = field(default_factory=list)
    skipped: int = 0

    def add(self, phone_number_id: str | None, event: InboundEvent | None) -> None:
        if event is None:
            self.skipped += 1
        else:
            self.routed.append(Routed(phone_number_id, event))

    def delivery(self, body: bytes) -> Delivery:
        return Delivery(
            phone_number_ids=frozenset(self.phone_number_ids),
            events=[item.event for item in self.routed],
            errors=self.errors,
            skipped=self.skipped,
            routed=self.routed,
            notices=self._notices(body),
        )

    def _notices(self, body: bytes) -> list[Routed]:
        if not self.errors:
            return []
        digest = hashlib.sha256(bytes(body)).hexdigest()[:32]
        return [
            Routed(number, _notice(f"{digest}:{index}", error))
            for index, (number, error) in enumerate(
                zip(self.error_numbers, self.errors, strict=True)
            )
        ]


@dataclass(frozen=True, slots=True)
class _Source:
    """Where a change came from: the business account and number."""

    phone_number_id: str | None
    display_phone_number: str | None
    waba_id: str | None


def _decode(body: bytes) -> Mapping[str, Any]:
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise MalformedPayload("body is not a JSON object")
    return payload


def _entry(raw: Any, batch: _Batch) -> None:
    entry = _obj(raw)
    changes = entry.get("changes") if entry else None
    if entry is None or not isinstance(changes, list):
        batch.skipped += 1
        return
    waba_id = _id(entry.get("id"))
    for change in changes:
        _change(change, waba_id, batch)


def _change(raw: Any, waba_id: str | None, batch: _Batch) -> None:
    change = _obj(raw)
    value = _obj(change.get("value")) if change else None
    # Other fields (account_update, template status, …) hold no chat events.
    if change is None or change.get("field") != MESSAGES_FIELD or value is None:
        batch.skipped += 1
        return
    source = _source(value, waba_id)
    if source.phone_number_id:
        batch.phone_number_ids.add(source.phone_number_id)
    found = False
    if "errors" in value:
        found = True
        _errors(value["errors"], source.phone_number_id, batch)
    if "messages" in value:
        found = True
        contacts = _contacts(value.get("contacts"))
        for item in _items(value["messages"], batch):
            batch.add(source.phone_number_id, _guarded_message(item, source, contacts))
    if "statuses" in value:
        found = True
        for item in _items(value["statuses"], batch):
            batch.add(source.phone_number_id, _guarded_status(item))
    if not found:
        batch.skipped += 1


def _source(value: Mapping[str, Any], waba_id: str | None) -> _Source:
    metadata = _obj(value.get("metadata")) or {}
    return _Source(
        phone_number_id=_id(metadata.get("phone_number_id")),
        display_phone_number=_str(metadata.get("display_phone_number")),
        waba_id=waba_id,
    )


def _items(value: Any, batch: _Batch) -> list[Any]:
    """A list of items; anything else is one skipped item."""
    if isinstance(value, list):
        return value
    batch.skipped += 1
    return []


def _errors(value: Any, phone_number_id: str | None, batch: _Batch) -> None:
    for item in _items(value, batch):
        if isinstance(item, dict):
            batch.errors.append(item)
            batch.error_numbers.append(phone_number_id)
        else:
            batch.skipped += 1


def _notice(key: str, error: Mapping[str, Any]) -> ProviderNotice:
    code = error.get("code")
    code_text = str(code) if type(code) is int or _str(code) else None
    title = _str(error.get("title")) or _str(error.get("message"))
    return ProviderNotice(key=key, code=code_text, title=title, detail=error)


def _contacts(value: Any) -> dict[str, Mapping[str, Any]]:
    """Contacts by wa_id and by BSUID; the first one wins should Meta repeat an id."""
    found: dict[str, Mapping[str, Any]] = {}
    for item in value if isinstance(value, list) else ():
        contact = _obj(item)
        if contact is None:
            continue
        for key in ("wa_id", "user_id"):
            if (user := _id(contact.get(key))) is not None:
                found.setdefault(user, contact)
    return found


# --- messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Content:
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


def _guarded_message(
    raw: Any, source: _Source, contacts: Mapping[str, Mapping[str, Any]]
) -> InboundMessage | None:
    """A message, or None when it has no usable id or sender."""
    msg = _obj(raw)
    message_id = _id(msg.get("id")) if msg else None
    sender = (_id(msg.get("from")) or _id(msg.get("from_user_id"))) if msg else None
    if msg is None or message_id is None or sender is None:
        return None
    try:
        return _message(msg, message_id, sender, source, contacts)
    except Exception:  # a bug here must not lose a lead's message: keep it raw
        metadata = {**_source_metadata(source), "raw": msg, "unparsed": True}
        return InboundMessage(message_id, sender, metadata=metadata)


def _message(
    msg: Mapping[str, Any],
    message_id: str,
    sender: str,
    source: _Source,
    contacts: Mapping[str, Mapping[str, Any]],
) -> InboundMessage:
    msg_type = _str(msg.get("type")) or UNKNOWN_TYPE
    content = _content(msg, msg_type)
    contact = contacts.get(sender)
    profile = _obj(contact.get("profile")) if contact else None
    metadata = {**_source_metadata(source), "type": msg_type}
    user_id = _str(contact.get("user_id")) if contact else None
    _put(metadata, "user_id", user_id or _str(msg.get("from_user_id")))
    _put(metadata, "parent_user_id", _str(contact.get("parent_user_id")) if contact else None)
    metadata.update(_context_metadata(msg))
    metadata.update(content.metadata)
    return InboundMessage(
        channel_message_id=message_id,
        channel_user_id=sender,
        text=content.text,
        channel_username=_str(profile.get("username")) if profile else None,
        user_display_name=_str(profile.get("name")) if profile else None,
        attachments=content.attachments,
        sent_at=_utc(msg.get("timestamp")),
        reply_to=_reply_to(msg),
        metadata=metadata,
    )


def _source_metadata(source: _Source) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    _put(metadata, "phone_number_id", source.phone_number_id)
    _put(metadata, "display_phone_number", source.display_phone_number)
    _put(metadata, "waba_id", source.waba_id)
    return metadata


def _reply_to(msg: Mapping[str, Any]) -> str | None:
    context = _obj(msg.get("context"))
    return _id(context.get("id")) if context else None


def _context_metadata(msg: Mapping[str, Any]) -> dict[str, Any]:
    """Forwarding flags, and a Click-to-WhatsApp ad's referral (where a lead came from)."""
    metadata: dict[str, Any] = {}
    context = _obj(msg.get("context"))
    for flag in ("forwarded", "frequently_forwarded"):
        if context and isinstance(value := context.get(flag), bool):
            metadata[flag] = value
    if isinstance(referral := msg.get("referral"), dict):
        metadata["referral"] = referral
    return metadata


def _content(msg: Mapping[str, Any], msg_type: str) -> _Content:
    """The message's text and attachments; unknown or unreadable kinds keep the raw object."""
    build = _BUILDERS.get(msg_type)
    if build is None and msg_type in MEDIA_KINDS:
        build = _media
    content = build(msg_type, msg.get(msg_type)) if build else None
    return content if content is not None else _Content(metadata={"raw": msg})


def _text(kind: str, value: Any) -> _Content | None:
    body = _obj(value)
    text = body.get("body") if body else None
    return _Content(text) if isinstance(text, str) else None


def _media(kind: str, value: Any) -> _Content | None:
    media = _obj(value)
    if media is None:
        return None
    caption = _str(media.get("caption"))
    extra: dict[str, Any] = {}
    _put(extra, "sha256", _str(media.get("sha256")))
    # The direct `url` (rolling out since 2025-11) needs the bearer token and expires:
    # a hint for download, not a public URL, so it stays out of Attachment.url.
    _put(extra, "url", _str(media.get("url")))
    for flag in ("voice", "animated"):  # audio.voice: a voice note; sticker.animated
        if isinstance(value := media.get(flag), bool):
            extra[flag] = value
    attachment = Attachment(
        kind=kind,
        ref=_id(media.get("id")),
        mime_type=_str(media.get("mime_type")),
        file_name=_str(media.get("filename")),
        caption=caption,
        extra=extra,
    )
    return _Content(caption, (attachment,))


def _location(kind: str, value: Any) -> _Content | None:
    place = _obj(value)
    latitude = _num(place.get("latitude")) if place else None
    longitude = _num(place.get("longitude")) if place else None
    if place is None or latitude is None or longitude is None:
        return None
    extra: dict[str, Any] = {"latitude": latitude, "longitude": longitude}
    for name in ("name", "address", "url"):
        _put(extra, name, _str(place.get(name)))
    return _Content(None, (Attachment(kind="location", extra=extra),))


def _shared_contacts(kind: str, value: Any) -> _Content | None:
    """One attachment per shared contact card, the card kept raw (its fields vary)."""
    cards = [card for card in value if isinstance(card, dict)] if isinstance(value, list) else []
    if not cards:
        return None
    return _Content(None, tuple(Attachment(kind="contact", extra=card) for card in cards))


def _reaction(kind: str, value: Any) -> _Content | None:
    reaction = _obj(value)
    if reaction is None:
        return None
    emoji = _str(reaction.get("emoji"))
    metadata: dict[str, Any] = {}
    _put(metadata, "reaction_to", _id(reaction.get("message_id")))
    if emoji is None:  # Meta leaves the emoji out when the user removes a reaction
        metadata["reaction_removed"] = True
    return _Content(emoji, metadata=metadata)


def _button(kind: str, value: Any) -> _Content | None:
    """A quick-reply button of a template."""
    button = _obj(value)
    if button is None:
        return None
    metadata: dict[str, Any] = {}
    _put(metadata, "payload", _str(button.get("payload")))
    return _Content(_str(button.get("text")), metadata=metadata)


def _interactive(kind: str, value: Any) -> _Content | None:
    """A reply button or list row; other interactive kinds (flows, …) stay raw."""
    interactive = _obj(value)
    reply_kind = _str(interactive.get("type")) if interactive else None
    if interactive is None or reply_kind not in ("button_reply", "list_reply"):
        return None
    reply = _obj(interactive.get(reply_kind))
    if reply is None:
        return None
    metadata: dict[str, Any] = {"interactive_type": reply_kind}
    _put(metadata, "reply_id", _str(reply.get("id")))
    _put(metadata, "reply_description", _str(reply.get("description")))
    return _Content(_str(reply.get("title")), metadata=metadata)


_BUILDERS: dict[str, Callable[[str, Any], _Content | None]] = {
    "text": _text,
    "location": _location,
    "contacts": _shared_contacts,
    "reaction": _reaction,
    "button": _button,
    "interactive": _interactive,
}


# --- statuses ------------------------------------------------------------------


def _guarded_status(raw: Any) -> StatusUpdate | None:
    try:
        return _status(raw)
    except Exception:  # a bug here: a status is replaceable (the next one follows), skip it
        return None


def _status(raw: Any) -> StatusUpdate | None:
    """A delivery state of a message we sent; None for played, unknown or unaddressable."""
    item = _obj(raw)
    message_id = _id(item.get("id")) if item else None
    name = _str(item.get("status")) if item else None
    status = STATUSES.get(name) if name else None
    if item is None or message_id is None or status is None:
        return None
    return StatusUpdate(
        channel_message_id=message_id,
        status=status,
        channel_user_id=_id(item.get("recipient_id")) or _id(item.get("recipient_user_id")),
        at=_utc(item.get("timestamp")),
        error=_failure(item.get("errors")) if status is MessageStatus.FAILED else None,
    )


def _failure(value: Any) -> str | None:
    """`"<code>: <title>"` for each error, joined with "; "."""
    reasons = []
    for item in value if isinstance(value, list) else ():
        error = _obj(item)
        if error is None:
            continue
        code = error.get("code")
        code_text = str(code) if type(code) is int or _str(code) else None
        title = _str(error.get("title")) or _str(error.get("message"))
        reason = ": ".join(part for part in (code_text, title) if part)
        if reason:
            reasons.append(reason)
    return "; ".join(reasons) or None


# --- typed reads of untrusted values ---------------------------------------------


def _utc(value: Any) -> datetime | None:
    """Unix seconds (a digit string, or an int) as an aware UTC datetime."""
    if type(value) is int and value >= 0:
        seconds = value
    elif isinstance(value, str) and _TIMESTAMP.fullmatch(value):
        seconds = int(value)
    else:
        return None
    return utc_from_unix(seconds)
