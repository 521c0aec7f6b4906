"""What crosses the HTTP API, as pydantic models: the OpenAPI document is made from them.

Request models forbid unknown fields and refuse text a database cannot hold (NUL, lone
surrogates), so bad input is a 422 naming its field and never reaches a query.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, HttpUrl

MAX_TEXT = 20_000
BIGINT = 2**63 - 1


def _storable(value: str) -> str:
    if "\x00" in value or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        raise ValueError("holds a NUL character or a lone surrogate")
    return value


Text = Annotated[str, AfterValidator(_storable)]
LeadId = Annotated[int, Field(ge=1, le=BIGINT)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttachmentIn(_Request):
    kind: Literal["image", "video", "audio", "voice", "document", "sticker"]
    url: HttpUrl | None = None
    ref: Annotated[Text, Field(min_length=1, max_length=255)] | None = None  # a provider media id
    file_name: Annotated[Text, Field(max_length=255)] | None = None
    caption: Annotated[Text, Field(max_length=1024)] | None = None


class TemplateIn(_Request):
    name: Annotated[Text, Field(min_length=1, max_length=512)]
    language: Annotated[Text, Field(min_length=2, max_length=16)]
    parameters: list[Annotated[Text, Field(max_length=1024)]] = Field(default=[], max_length=20)


class SendIn(_Request):
    """A message to a lead. Without `provider`: the broker's default provider if the
    lead has a channel there, else the channel the lead last wrote on."""

    text: Annotated[Text, Field(max_length=MAX_TEXT)] | None = None
    attachments: list[AttachmentIn] = Field(default=[], max_length=10)
    provider: Annotated[Text, Field(min_length=1, max_length=32)] | None = None
    reply_to: Annotated[Text, Field(min_length=1, max_length=255)] | None = None
    template: TemplateIn | None = None
    # Written by a human agent: Messenger and Instagram then allow 7 days, not 24 hours.
    human_agent: bool = False


class LeadPatch(_Request):
    name: Annotated[Text, Field(max_length=255)] | None = None
    phone: Annotated[Text, Field(max_length=64)] | None = None
    tags: list[Annotated[Text, Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=100
    )


class MergeIn(_Request):
    """Merge another lead of the broker into this one; the other lead is gone after."""

    merge_lead_id: LeadId


# --- answers -------------------------------------------------------------------------------


class ChannelOut(BaseModel):
    provider: str
    channel_user_id: str
    channel_username: str | None


class LeadOut(BaseModel):
    id: int
    name: str | None
    phone: str | None
    tags: list[str]
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    channels: list[ChannelOut] | None = None  # on a single lead only


class LeadPage(BaseModel):
    items: list[LeadOut]
    next_cursor: str | None


class MessageOut(BaseModel):
    id: int
    lead_id: int
    provider: str
    direction: Literal["in", "out"]
    status: Status
    text: str | None
    attachments: list[dict[str, Any]]
    channel_user_id: str
    channel_message_id: str | None
    ai_response_used: bool
    error: str | None
    send_after: datetime | None
    created_at: datetime
    updated_at: datetime


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


Status = Literal["pending", "sent", "delivered", "read", "failed"]


class Queued(BaseModel):
    """The queued message's id and status (a repeated Idempotency-Key: as it is now)."""

    id: int
    status: Status


class FieldError(BaseModel):
    field: str
    reason: str


class ErrorOut(BaseModel):
    error: str
    fields: list[FieldError] | None = None
