"""TikTok Business Messaging's wire format: every unverified name lives here, and only here.

PROVIDERS.md §6: the official pages could not be read. The webhook envelope is TikTok's
generic one (verified: `{client_key, event, create_time, user_openid, content}` with
`content` a JSON string); everything inside `content`, the event names, the send
endpoint and its body and answer come from Chatwoot's client and are UNVERIFIED.
When TikTok's documentation says otherwise, correct this module; the adapter
around it does not know these names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from leadline.adapters.base import (
    Attachment,
    InboundEvent,
    InboundMessage,
    MalformedPayload,
    MessageStatus,
    OutboundEcho,
    OutboundMessage,
    PermanentSendError,
    StatusUpdate,
    StatusWatermark,
)
from leadline.adapters.payload import decode_json, finite, ident, obj, put, text, utc_from_unix

# --- inbound (UNVERIFIED but for the envelope) ----------------------------------------------

RECEIVED = frozenset({"im_receive_msg", "im_receive_msg_eu"})  # [S] Chatwoot: EU variant
SENT = "im_send_msg"  # [S] our account's own sends, echoed
READ = "im_mark_read_msg"  # [S]
KINDS = frozenset({"text", "image", "share_post", "sticker"})  # [S]


@dataclass(frozen=True, slots=True)
class Envelope:
    """The verified, generic part of a TikTok webhook."""

    event: str
    account: str | None  # `user_openid`: the business the event is for
    content: Mapping[str, Any]
    client_key: str | None


def envelope(body: bytes) -> Envelope:
    payload = decode_json(body)
    if not isinstance(payload, dict):
        raise MalformedPayload("body is not a JSON object")
    event = text(payload.get("event"))
    if event is None:
        raise MalformedPayload("event is missing")
    raw = payload.get("content")
    content = _content(raw)
    return Envelope(
        event, ident(payload.get("user_openid")), content, text(payload.get("client_key"))
    )


def _content(raw: Any) -> Mapping[str, Any]:
    """`content` is a JSON document inside a string (an object is tolerated)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise MalformedPayload("content is not JSON") from None
    found = obj(raw)
    if found is None:
        raise MalformedPayload("content is not a JSON object")
    return found


def events(found: Envelope) -> list[InboundEvent]:
    """The envelope's events; an unknown event or an unusable content gives none."""
    content = found.content
    if found.event in RECEIVED:
        message = _received(content, found.account)
        return [message] if message else []
    if found.event == SENT:
        echo = _echo(content, found.account)
        return [echo] if echo else []
    if found.event == READ:
        return _read(content, found.account)
    return []


@dataclass(frozen=True, slots=True)
class _Message:
    """What a received message and an echo both carry."""

    conversation: str
    message_id: str
    kind: str
    body: str | None
    attachments: tuple[Attachment, ...]


def _message(content: Mapping[str, Any]) -> _Message | None:
    conversation = ident(content.get("conversation_id"))
    message_id = ident(content.get("message_id"))
    if conversation is None or message_id is None:
        return None
    kind = text(content.get("type")) or "unknown"
    body, attachments = _body(kind, content)
    return _Message(conversation, message_id, kind, body, attachments)


def _received(content: Mapping[str, Any], account: str | None) -> InboundMessage | None:
    message = _message(content)
    if message is None:
        return None
    metadata: dict[str, Any] = {"type": message.kind}
    put(metadata, "from_user_id", ident(_inner(content, "from_user", "id")))
    put(metadata, "to_user_id", ident(_inner(content, "to_user", "id")))
    if message.kind not in KINDS:
        metadata["raw"] = dict(content)
    return InboundMessage(
        channel_message_id=message.message_id,
        channel_user_id=message.conversation,  # where replies go: sends name the conversation
        text=message.body,
        channel_username=text(content.get("from")),
        attachments=message.attachments,
        sent_at=_when(content),
        reply_to=ident(_inner(content, "referenced_message_info", "referenced_message_id")),
        metadata=metadata,
        account=account,
    )


def _body(kind: str, content: Mapping[str, Any]) -> tuple[str | None, tuple[Attachment, ...]]:
    if kind == "text":
        return text(_inner(content, "text", "body")), ()
    if kind == "image":
        media = ident(_inner(content, "image", "media_id"))
        return None, (Attachment(kind="image", ref=media),)
    if kind in ("share_post", "sticker"):
        extra = obj(content.get(kind)) or {}
        return None, (Attachment(kind=kind, extra=dict(extra)),)
    return None, ()


def _echo(content: Mapping[str, Any], account: str | None) -> OutboundEcho | None:
    message = _message(content)
    if message is None:
        return None
    return OutboundEcho(
        channel_message_id=message.message_id,
        channel_user_id=message.conversation,
        text=message.body,
        attachments=message.attachments,
        sent_at=_when(content),
        metadata={"type": message.kind},
        account=account,
    )


def _read(content: Mapping[str, Any], account: str | None) -> list[InboundEvent]:
    """The user read the conversation: a message it names, and everything before then."""
    conversation = ident(content.get("conversation_id"))
    if conversation is None:
        return []
    found: list[InboundEvent] = []
    message_id = ident(content.get("message_id"))
    if message_id is not None:
        found.append(StatusUpdate(message_id, MessageStatus.READ, conversation, account=account))
    when = _when(content)
    if when is not None:
        found.append(StatusWatermark(conversation, MessageStatus.READ, when, account))
    return found


def _when(content: Mapping[str, Any]) -> Any:
    millis = finite(content.get("timestamp"))
    return utc_from_unix(millis / 1000) if millis else None


def _inner(content: Mapping[str, Any], name: str, key: str) -> Any:
    inner = obj(content.get(name))
    return inner.get(key) if inner else None


# --- outbound (UNVERIFIED) -----------------------------------------------------------------

SEND_PATH = "/open_api/v1.3/business/message/send/"  # [S] Chatwoot's client
TOKEN_HEADER = "Access-Token"  # noqa: S105 (a header name) [S]
OK = 0  # `code` of a success [S]
TOO_FAST = 40064  # "sending messages too fast" [S]


def send_bodies(message: OutboundMessage, business_id: str) -> list[dict[str, Any]]:
    """One request per text and per image; images go by an uploaded media id."""
    base = {
        "business_id": business_id,
        "recipient_type": "CONVERSATION",
        "recipient": message.channel_user_id,
    }
    bodies: list[dict[str, Any]] = []
    if message.text and message.text.strip():
        bodies.append({**base, "message_type": "TEXT", "text": {"body": message.text}})
    for attachment in message.attachments:
        if attachment.kind != "image" or not attachment.ref:
            raise PermanentSendError(
                "TikTok sends text and images by an uploaded media id only", code="unsupported"
            )
        bodies.append({**base, "message_type": "IMAGE", "image": {"media_id": attachment.ref}})
    if not bodies:
        raise PermanentSendError("nothing to send: no text and no image", code="empty")
    if message.reply_to:
        bodies[0]["referenced_message_info"] = {"referenced_message_id": message.reply_to}
    return bodies


@dataclass(frozen=True, slots=True)
class Answer:
    code: int | None
    message: str
    message_id: str | None


def answer(payload: Any) -> Answer:
    """`{"code": 0, "message": "OK", "data": {"message": {"message_id": ...}}}` [S]."""
    found = obj(payload) or {}
    code = found.get("code")
    data = obj(found.get("data"))
    sent = obj(data.get("message")) if data else None
    return Answer(
        code if type(code) is int else None,
        text(found.get("message")) or "no message",
        ident(sent.get("message_id")) if sent else None,
    )
