"""Messenger and Instagram webhook bodies → normalized events (PROVIDERS.md §4-§5).

Both speak the Messenger Platform's format: `{"object": "page"|"instagram",
"entry": [{"id": ACCOUNT, "time": ms, "messaging": [...], "standby": [...]}]}`, one
item per event. Pure functions on the decoded JSON: no I/O, no logging.

- Every entry and every item of `messaging` and `standby` is read. A `standby` event
  (another app owns the conversation) is stored but never answered.
- Messages: text, attachments (the URL kept; `file` becomes a document), quick
  replies and postbacks (the payload kept, the title or payload as text), reply-to,
  story replies and mentions (the story's link kept as an attachment), reactions,
  deletions (`is_deleted`: an edit that keeps the text in the history), edits,
  unsupported messages (kept with their raw object).
- Echoes (`is_echo`) are the account's own sends: `OutboundEcho`, marked `ours` when
  they carry Leadline's metadata tag.
- Deliveries and reads: the `mids` they name become status updates; their watermark
  moves every earlier message to the user forward.
- Meta may deliver events out of order: they are returned in timestamp order.
- Only a body that is not a JSON object of the expected `object`, or whose `entry` is
  not a list, raises `MalformedPayload`; an item that cannot become an event is
  counted in `Delivery.skipped`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from leadline.adapters.base import (
    Attachment,
    InboundEdit,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    OutboundEcho,
    StatusUpdate,
    StatusWatermark,
)
from leadline.adapters.payload import decode_json, finite, obj, put, text, utc_from_unix
from leadline.adapters.payload import ident as _id

OURS = "leadline:"  # the `metadata` our sends carry, so their echoes are known
ATTACHMENT_KINDS = {"file": "document", "fallback": "link"}  # others keep Meta's name


@dataclass(frozen=True, slots=True)
class Delivery:
    events: list[InboundEvent]  # in timestamp order, each with its `account`
    skipped: int = 0


def parse_body(body: bytes, expected_object: str) -> Delivery:
    """Parse a webhook body; raises only MalformedPayload."""
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise MalformedPayload("body is not a JSON object")
    if payload.get("object") != expected_object:
        raise MalformedPayload(f"object is not {expected_object}")
    entries = payload.get("entry")
    if not isinstance(entries, list):
        raise MalformedPayload("entry is missing or not a list")
    found: list[tuple[float, InboundEvent]] = []
    skipped = 0
    for entry in entries:
        skipped += _entry(entry, found)
    found.sort(key=lambda item: item[0])  # stable: equal times keep the payload's order
    return Delivery([event for _, event in found], skipped)


@dataclass(frozen=True, slots=True)
class _Item:
    """One messaging item and where it came from."""

    raw: Mapping[str, Any]
    account: str | None
    sender: str | None
    recipient: str | None
    at: datetime | None
    millis: float
    standby: bool


def _entry(raw: Any, found: list[tuple[float, InboundEvent]]) -> int:
    entry = obj(raw)
    if entry is None:
        return 1
    account = _id(entry.get("id"))
    skipped = 0
    lists = [(entry.get("messaging"), False), (entry.get("standby"), True)]
    if all(items is None for items, _ in lists):
        return 1  # comments and other `changes`: no chat events
    for items, standby in lists:
        for raw_item in items if isinstance(items, list) else ():
            item = _item(raw_item, account, standby)
            events = _guarded(item) if item is not None else []
            if not events:
                skipped += 1
            found.extend((_order(item, event), event) for event in events if item)
    return skipped


def _item(raw: Any, account: str | None, standby: bool) -> _Item | None:
    item = obj(raw)
    if item is None:
        return None
    millis = finite(item.get("timestamp")) or 0.0
    return _Item(
        raw=item,
        account=account,
        sender=_id(_field(item, "sender", "id")),
        recipient=_id(_field(item, "recipient", "id")),
        at=utc_from_unix(millis / 1000) if millis else None,
        millis=millis,
        standby=standby,
    )


def _order(item: _Item | None, event: InboundEvent) -> float:
    """When an event happened, in milliseconds, for ordering; a watermark without a
    timestamp of its own is placed at its watermark."""
    if item is not None and item.millis:
        return item.millis
    if isinstance(event, StatusWatermark):
        return event.up_to.timestamp() * 1000
    return 0.0


def _guarded(item: _Item) -> list[InboundEvent]:
    for kind, build in _KINDS.items():
        if kind in item.raw:
            try:
                return build(item, obj(item.raw[kind]))
            except Exception:  # a bug here must not lose the rest of the delivery
                return _kept_raw(item, kind)
    return []  # referrals, opt-ins, handovers: nothing to store


# --- messages ----------------------------------------------------------------------------


def _message(item: _Item, message: Mapping[str, Any] | None) -> list[InboundEvent]:
    mid = _id(message.get("mid")) if message else None
    if message is None or mid is None:
        return []
    if message.get("is_echo") is True:
        return _echo(item, message, mid)
    if item.sender is None:
        return []
    if message.get("is_deleted") is True:
        return [_edit(item, mid, None, deleted=True)]
    metadata = _metadata(item)
    attachments = _attachments(message.get("attachments"))
    reply_to = obj(message.get("reply_to"))
    story = obj(reply_to.get("story")) if reply_to else None
    if story is not None:
        attachments.append(_story(story))
        metadata["story_reply"] = True
    quick = obj(message.get("quick_reply"))
    put(metadata, "quick_reply_payload", text(quick.get("payload")) if quick else None)
    if isinstance(referral := message.get("referral"), dict):
        metadata["referral"] = referral
    if message.get("is_unsupported") is True:
        metadata.update(unsupported=True, raw=dict(message))
    return [
        InboundMessage(
            channel_message_id=mid,
            channel_user_id=item.sender,
            text=text(message.get("text")),
            attachments=tuple(attachments),
            sent_at=item.at,
            reply_to=_id(reply_to.get("mid")) if reply_to else None,
            metadata=metadata,
            account=item.account,
            answer=not item.standby,
        )
    ]


def _echo(item: _Item, message: Mapping[str, Any], mid: str) -> list[InboundEvent]:
    if item.recipient is None:
        return []
    tag = text(message.get("metadata"))
    metadata: dict[str, Any] = {}
    put(metadata, "app_id", _id(message.get("app_id")))
    put(metadata, "metadata", tag)
    return [
        OutboundEcho(
            channel_message_id=mid,
            channel_user_id=item.recipient,
            text=text(message.get("text")),
            attachments=tuple(_attachments(message.get("attachments"))),
            sent_at=item.at,
            metadata=metadata,
            ours=bool(tag and tag.startswith(OURS)),
            account=item.account,
        )
    ]


def _postback(item: _Item, postback: Mapping[str, Any] | None) -> list[InboundEvent]:
    """A button tap: the title (else the payload) is the text; the payload is kept."""
    if postback is None or item.sender is None:
        return []
    payload = text(postback.get("payload"))
    title = text(postback.get("title"))
    # Older postbacks carry no mid: the tap is known by who tapped, when and what.
    mid = _id(postback.get("mid")) or f"postback:{item.sender}:{int(item.millis)}:{payload}"
    metadata = _metadata(item)
    put(metadata, "postback_payload", payload)
    return [
        InboundMessage(
            channel_message_id=mid,  # a key over 255 characters is stored under its digest
            channel_user_id=item.sender,
            text=title or payload,
            sent_at=item.at,
            metadata=metadata,
            account=item.account,
            answer=not item.standby,
        )
    ]


def _reaction(item: _Item, reaction: Mapping[str, Any] | None) -> list[InboundEvent]:
    """Stored (a reaction reopens the messaging window), never answered."""
    mid = _id(reaction.get("mid")) if reaction else None
    if reaction is None or mid is None or item.sender is None:
        return []
    action = text(reaction.get("action")) or "react"
    metadata = {**_metadata(item), "reaction_to": mid, "action": action}
    put(metadata, "reaction", text(reaction.get("reaction")))
    return [
        InboundMessage(
            channel_message_id=f"reaction:{mid}:{item.sender}:{int(item.millis)}",
            channel_user_id=item.sender,
            text=text(reaction.get("emoji")),
            sent_at=item.at,
            metadata=metadata,
            account=item.account,
            answer=False,
        )
    ]


def _message_edit(item: _Item, edit: Mapping[str, Any] | None) -> list[InboundEvent]:
    mid = _id(edit.get("mid")) if edit else None
    if edit is None or mid is None or item.sender is None:
        return []
    return [_edit(item, mid, text(edit.get("text")))]


def _edit(item: _Item, mid: str, new_text: str | None, *, deleted: bool = False) -> InboundEdit:
    assert item.sender is not None
    return InboundEdit(
        channel_message_id=mid,
        channel_user_id=item.sender,
        text=new_text,
        edited_at=item.at,
        account=item.account,
        deleted=deleted,
    )


def _kept_raw(item: _Item, kind: str) -> list[InboundEvent]:
    """An item this module failed to read: kept whole rather than lost."""
    message = obj(item.raw.get("message"))
    mid = _id(message.get("mid")) if message else None
    if item.sender is None or mid is None:
        return []
    metadata = {**_metadata(item), "raw": dict(item.raw), "unparsed": kind}
    return [InboundMessage(mid, item.sender, metadata=metadata, account=item.account)]


# --- deliveries and reads ------------------------------------------------------------------


def _delivery(item: _Item, delivery: Mapping[str, Any] | None) -> list[InboundEvent]:
    return _receipt(item, delivery, MessageStatus.DELIVERED)


def _read(item: _Item, read: Mapping[str, Any] | None) -> list[InboundEvent]:
    return _receipt(item, read, MessageStatus.READ)


def _receipt(
    item: _Item, receipt: Mapping[str, Any] | None, status: MessageStatus
) -> list[InboundEvent]:
    """The mids a receipt names, and its watermark: every earlier message to the user.
    Instagram's `messaging_seen` names one `mid`; Messenger's `mids` may be missing."""
    if receipt is None or item.sender is None:
        return []
    mids = receipt.get("mids")
    named = [_id(m) for m in mids] if isinstance(mids, list) else []
    named.append(_id(receipt.get("mid")))
    events: list[InboundEvent] = [
        StatusUpdate(mid, status, item.sender, item.at, account=item.account)
        for mid in named
        if mid is not None
    ]
    watermark = finite(receipt.get("watermark"))
    up_to = utc_from_unix(watermark / 1000) if watermark else None
    if up_to is not None:
        events.append(StatusWatermark(item.sender, status, up_to, item.account))
    return events


_KINDS: dict[str, Callable[[_Item, Mapping[str, Any] | None], list[InboundEvent]]] = {
    "message": _message,
    "postback": _postback,
    "reaction": _reaction,
    "message_edit": _message_edit,
    "delivery": _delivery,
    "read": _read,
}


# --- pieces ---------------------------------------------------------------------------------


def _metadata(item: _Item) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    put(metadata, "account_id", item.account)
    if item.standby:
        metadata["standby"] = True
    return metadata


def _attachments(value: Any) -> list[Attachment]:
    found = []
    for raw in value if isinstance(value, list) else ():
        attachment = obj(raw)
        kind = text(attachment.get("type")) if attachment else None
        if attachment is None or kind is None:
            continue
        payload = obj(attachment.get("payload")) or {}
        url = text(payload.get("url"))
        extra = {k: v for k, v in payload.items() if k != "url" and _plain(v)}
        found.append(
            Attachment(
                kind=ATTACHMENT_KINDS.get(kind, kind),
                url=url,
                file_name=text(payload.get("title")),
                extra=extra,
            )
        )
    return found


def _story(story: Mapping[str, Any]) -> Attachment:
    extra: dict[str, Any] = {}
    put(extra, "story_id", _id(story.get("id")))
    return Attachment(kind="story", url=text(story.get("url")), extra=extra)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _field(item: Mapping[str, Any], name: str, key: str) -> Any:
    inner = obj(item.get(name))
    return inner.get(key) if inner else None
