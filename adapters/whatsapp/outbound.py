"""What one outbound message becomes on WhatsApp: the Cloud API calls, in order.

Pure: no I/O. A long text becomes several text messages (4,096 characters each,
cut on word boundaries); a text that fits a caption rides on the first media
item; outside the 24-hour customer service window a free-form message becomes the
broker's window template, or is refused at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from leadline.adapters.base import Attachment, OutboundMessage, PermanentSendError, TemplateRef
from leadline.adapters.text import split_text
from leadline.adapters.whatsapp.config import TEXT_VARIABLE, WindowTemplate

TEXT_LIMIT = 4096
CAPTION_LIMIT = 1024
TEMPLATE_PARAMETER_LIMIT = 1024
MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
CAPTIONED = frozenset({"image", "video", "document"})
WINDOW = timedelta(hours=24)
# The window is taken to close a minute early: a message must arrive while it is open.
WINDOW_MARGIN = timedelta(minutes=1)
_MEDIA_ID = re.compile(r"[0-9]{1,64}")


@dataclass(frozen=True, slots=True)
class TextStep:
    body: str
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class MediaStep:
    kind: str
    link: str | None  # an https URL WhatsApp fetches
    media_id: str | None  # or an uploaded media id
    caption: str | None = None
    file_name: str | None = None
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateStep:
    template: TemplateRef
    reply_to: str | None = None
    fallback: bool = False  # sent because the window was closed


Step = TextStep | MediaStep | TemplateStep


def window_open(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Whether free-form messages may still go to a user who last wrote then."""
    return last_inbound_at is not None and now < last_inbound_at + WINDOW - WINDOW_MARGIN


def plan(
    message: OutboundMessage, now: datetime, window_template: WindowTemplate | None
) -> list[Step]:
    """The calls that send `message`; PermanentSendError when it cannot go at all."""
    if message.template is not None:
        return [TemplateStep(message.template, message.reply_to)]
    if not window_open(message.last_inbound_at, now):
        return [_window_fallback(message, window_template)]
    steps = _free_form(message)
    if not steps:
        raise PermanentSendError("nothing to send: no text and no media", code="empty")
    return steps


def _free_form(message: OutboundMessage) -> list[Step]:
    media = [_media(a) for a in message.attachments]
    text = (message.text or "").strip()
    steps: list[Step] = []
    if media and text and len(text) <= CAPTION_LIMIT and media[0].kind in CAPTIONED:
        media[0] = dataclasses.replace(media[0], caption=text)
        text = ""
    steps.extend(TextStep(part) for part in split_text(text, TEXT_LIMIT))
    steps.extend(media)
    if steps and message.reply_to:
        steps[0] = dataclasses.replace(steps[0], reply_to=message.reply_to)
    return steps


def _media(attachment: Attachment) -> MediaStep:
    """Media go by https link or by an uploaded media id; nothing else is passed on
    (pywa would read a local file path or upload base64 given as a media value)."""
    if attachment.kind not in MEDIA_KINDS:
        raise PermanentSendError(
            f"WhatsApp cannot send a {attachment.kind!r} attachment", code="unsupported"
        )
    if attachment.url and attachment.url.startswith(("https://", "http://")):
        return MediaStep(attachment.kind, attachment.url, None, file_name=attachment.file_name)
    if attachment.ref and _MEDIA_ID.fullmatch(attachment.ref):
        return MediaStep(attachment.kind, None, attachment.ref, file_name=attachment.file_name)
    raise PermanentSendError(
        "a WhatsApp attachment needs an http(s) url or a media id", code="bad_attachment"
    )


def _window_fallback(message: OutboundMessage, template: WindowTemplate | None) -> TemplateStep:
    if template is None:
        since = message.last_inbound_at.isoformat() if message.last_inbound_at else "never"
        raise PermanentSendError(
            "the 24-hour customer service window is closed (the lead last wrote: "
            f"{since}); only an approved template can reach them: set window_template",
            code="window_closed",
        )
    # Template parameters may hold no newline, tab or run of spaces (Meta's 132018).
    text = " ".join((message.text or "").split())[:TEMPLATE_PARAMETER_LIMIT] or "-"
    parameters = tuple(p.replace(TEXT_VARIABLE, text) for p in template.parameters)
    ref = TemplateRef(template.name, template.language, parameters)
    return TemplateStep(ref, fallback=True)


def progress_key(message: OutboundMessage, steps: Sequence[Step]) -> str:
    """Identifies one message's plan across retries: the same row planned the same way."""
    return f"{message.ref}:{len(steps)}:{type(steps[0]).__name__}"
