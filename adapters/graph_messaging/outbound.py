"""What one outbound message becomes on Messenger or Instagram: Send API request bodies.

Pure: no I/O. A message is text or one attachment, never both: a text goes first
(cut into parts that fit), then each attachment by URL. The messaging window:
within 24 hours of the lead's last message anything goes; after that only a reply
marked as a human agent's, with the `HUMAN_AGENT` tag, within 7 days; anything else
is refused at once.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from leadline.adapters.base import Attachment, OutboundMessage, PermanentSendError
from leadline.adapters.graph_messaging.parse import OURS
from leadline.adapters.text import split_text

WINDOW = timedelta(hours=24)
HUMAN_AGENT_WINDOW = timedelta(days=7)
# Windows are taken to close a minute early: a message must arrive while one is open.
MARGIN = timedelta(minutes=1)
MEDIA_TYPES: Mapping[str, str] = {
    "image": "image",
    "audio": "audio",
    "voice": "audio",
    "video": "video",
    "document": "file",
    "file": "file",
}
PACED = frozenset({"audio", "video"})  # Meta allows 10 per second of these
_ATTACHMENT_ID = re.compile(r"[0-9]{1,64}")


@dataclass(frozen=True, slots=True)
class Rules:
    """How one provider takes the Send API."""

    max_chars: int | None = None
    max_bytes: int | None = None
    in_window_type: str | None = "RESPONSE"  # Instagram leaves messaging_type out
    reply_to: bool = True
    tag_ours: bool = True  # `message.metadata` = "leadline:<ref>", echoed back
    reusable: bool = True  # `is_reusable` on media by URL


def plan(message: OutboundMessage, now: datetime, rules: Rules) -> list[dict[str, Any]]:
    """The request bodies that send `message`; PermanentSendError when it cannot go."""
    routing = {"recipient": {"id": message.channel_user_id}, **_window(message, now, rules)}
    contents = [
        {"text": part} for part in split_text(message.text or "", rules.max_chars, rules.max_bytes)
    ]
    contents += [{"attachment": _attachment(a, rules)} for a in message.attachments]
    if not contents:
        raise PermanentSendError("nothing to send: no text and no media", code="empty")
    if rules.tag_ours:
        contents = [{**content, "metadata": f"{OURS}{message.ref}"} for content in contents]
    bodies = [{**routing, "message": content} for content in contents]
    if message.reply_to and rules.reply_to:
        bodies[0]["reply_to"] = {"mid": message.reply_to}
    return bodies


def media_type(body: Mapping[str, Any]) -> str | None:
    attachment = body.get("message", {}).get("attachment")
    return attachment["type"] if attachment else None


def _window(message: OutboundMessage, now: datetime, rules: Rules) -> dict[str, str]:
    last = message.last_inbound_at
    if last is not None and now < last + WINDOW - MARGIN:
        return {"messaging_type": rules.in_window_type} if rules.in_window_type else {}
    if message.human_agent and last is not None and now < last + HUMAN_AGENT_WINDOW - MARGIN:
        return {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    since = last.isoformat() if last else "never"
    allowed = (
        "a human agent's reply may go only within 7 days"
        if message.human_agent
        else "only a reply marked as a human agent's may go, within 7 days"
    )
    raise PermanentSendError(
        f"the 24-hour messaging window is closed (the lead last wrote: {since}); {allowed}",
        code="window_closed",
    )


def _attachment(attachment: Attachment, rules: Rules) -> dict[str, Any]:
    kind = MEDIA_TYPES.get(attachment.kind)
    if kind is None:
        raise PermanentSendError(
            f"cannot send a {attachment.kind!r} attachment here", code="unsupported"
        )
    if attachment.url and attachment.url.startswith(("https://", "http://")):
        payload: dict[str, Any] = {"url": attachment.url}
        if rules.reusable:
            payload["is_reusable"] = True
    elif attachment.ref and _ATTACHMENT_ID.fullmatch(attachment.ref):
        payload = {"attachment_id": attachment.ref}
    else:
        raise PermanentSendError(
            "an attachment needs an http(s) url or an attachment id", code="bad_attachment"
        )
    return {"type": kind, "payload": payload}
