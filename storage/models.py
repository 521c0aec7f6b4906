"""The tables. Their names and columns are a contract (DESIGN.md): tools and tests read them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.types import PortableJSON, UTCDateTime, utcnow

# INTEGER PRIMARY KEY on SQLite (its rowid), BIGINT elsewhere.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _enum(enum_type: type) -> sa.Enum:
    # Plain strings everywhere, never a native PostgreSQL ENUM (STACK.md).
    return sa.Enum(
        enum_type,
        native_enum=False,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


PENDING_OUT = sa.text("status = 'pending' AND direction = 'out'")


def _created() -> Any:
    return Field(
        default_factory=utcnow,
        sa_type=UTCDateTime,
        sa_column_kwargs={"server_default": sa.func.now(), "nullable": False},
    )


class Broker(SQLModel, table=True):
    __tablename__ = "brokers"

    id: str = Field(primary_key=True, max_length=64)
    name: str
    timezone: str = Field(max_length=64)
    created_at: datetime = _created()


class Lead(SQLModel, table=True):
    __tablename__ = "leads"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    broker_id: str = Field(foreign_key="brokers.id", index=True, max_length=64)
    name: str | None = None
    phone: str | None = Field(default=None, max_length=64)
    tags: list[str] = Field(
        default_factory=list,
        sa_type=PortableJSON,
        sa_column_kwargs={"nullable": False, "server_default": "[]"},
    )
    # What Leadline knows besides: the id a lead had in an imported legacy system, …
    lead_metadata: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=PortableJSON,
        sa_column_kwargs={"nullable": False, "server_default": "{}"},
    )
    created_at: datetime = _created()
    updated_at: datetime = _created()  # the lead's own fields (name, phone, tags, merges)
    # The name, phone and channels folded for `q` (storage/search.py), rewritten with
    # them; its index is made by migration 0005 (pg_trgm GIN, or an FTS5 table on SQLite).
    search_text: str = Field(default="", sa_column_kwargs={"nullable": False, "server_default": ""})


class LeadChannel(SQLModel, table=True):
    __tablename__ = "lead_channels"
    __table_args__ = (
        sa.UniqueConstraint(
            "broker_id", "provider", "channel_user_id", name="uq_lead_channels_identity"
        ),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    lead_id: int = Field(foreign_key="leads.id", index=True, sa_type=BigId)
    broker_id: str = Field(foreign_key="brokers.id", max_length=64)
    provider: str = Field(max_length=32)
    channel_user_id: str = Field(max_length=255)
    channel_username: str | None = Field(default=None, max_length=255)
    created_at: datetime = _created()


class ChatMessage(SQLModel, table=True):
    """The provider-neutral message, inbound and outbound."""

    __tablename__ = "chat_messages"
    __table_args__ = (
        sa.UniqueConstraint(
            "broker_id",
            "provider",
            "direction",
            "channel_message_id",
            name="uq_chat_messages_idempotency",
        ),
        sa.Index("ix_chat_messages_lead_provider", "lead_id", "provider"),
        sa.Index("ix_chat_messages_broker_provider", "broker_id", "provider"),
        sa.Index("ix_chat_messages_provider_user", "provider", "channel_user_id"),
        # The dispatcher's and the reply worker's scans.
        sa.Index("ix_chat_messages_outbox", "direction", "status", "send_after"),
        sa.Index("ix_chat_messages_unhandled", "direction", "handled_at"),
        # What went out or failed lately (`leadline status`, /healthz).
        sa.Index("ix_chat_messages_recent", "direction", "updated_at"),
        # The outbox's heads: the earliest pending row of each recipient.
        sa.Index(
            "ix_chat_messages_pending_out",
            "broker_id",
            "provider",
            "channel_user_id",
            "id",
            sqlite_where=PENDING_OUT,
            postgresql_where=PENDING_OUT,
        ),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    lead_id: int = Field(foreign_key="leads.id", sa_type=BigId)
    broker_id: str = Field(foreign_key="brokers.id", max_length=64)
    provider: str = Field(max_length=32)
    channel_user_id: str = Field(max_length=255)
    channel_username: str | None = Field(default=None, max_length=255)
    channel_message_id: str | None = Field(default=None, max_length=255)
    message_text: str | None = None
    direction: Direction = Field(sa_type=_enum(Direction))
    status: MessageStatus = Field(sa_type=_enum(MessageStatus))
    provider_metadata: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=PortableJSON,
        sa_column_kwargs={"nullable": False, "server_default": "{}"},
    )
    attachments: list[dict[str, Any]] = Field(
        default_factory=list,
        sa_type=PortableJSON,
        sa_column_kwargs={"nullable": False, "server_default": "[]"},
    )
    ai_response_used: bool = Field(
        default=False, sa_column_kwargs={"server_default": sa.false(), "nullable": False}
    )
    error: str | None = None
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0", "nullable": False})
    send_after: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Outbound rows: a sender took the row until then (it is in flight); when it went out.
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Inbound rows: when the reply rules ran for it, so a restart resumes the rest.
    handled_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: datetime = _created()
    updated_at: datetime = _created()


class ChatMessagePart(SQLModel, table=True):
    """One provider id of an outbound message that went as several sends (a long text
    cut in parts, media after the text). The message's own `channel_message_id` is its
    last part's; echoes and status reports of any part find the message through here."""

    __tablename__ = "chat_message_parts"
    __table_args__ = (
        sa.UniqueConstraint(
            "broker_id", "provider", "channel_message_id", name="uq_chat_message_parts_id"
        ),
    )

    message_id: int = Field(
        primary_key=True, foreign_key="chat_messages.id", ondelete="CASCADE", sa_type=BigId
    )
    part: int = Field(primary_key=True)  # 0 for the first that went
    broker_id: str = Field(max_length=64)
    provider: str = Field(max_length=32)
    channel_message_id: str = Field(max_length=255)


class EarlyStatus(SQLModel, table=True):
    """A status report for a message not (yet) known by its provider id.

    It arrives before the send call that produced the id has returned, or it
    concerns a message sent elsewhere. Kept, not dropped: applied when a send
    records that id.
    """

    __tablename__ = "early_statuses"
    __table_args__ = (
        sa.Index("ix_early_statuses_message", "broker_id", "provider", "channel_message_id"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    broker_id: str = Field(max_length=64)
    provider: str = Field(max_length=32)
    channel_message_id: str = Field(max_length=255)
    status: MessageStatus = Field(sa_type=_enum(MessageStatus))
    error: str | None = None
    created_at: datetime = _created()


class DeliveryPause(SQLModel, table=True):
    """A provider asked a whole channel (one broker's account) to wait.

    Kept in the database so that every process, a restart and `leadline status`
    see it; a pause of one chat is its row's `send_after` instead.
    """

    __tablename__ = "delivery_pauses"

    broker_id: str = Field(primary_key=True, max_length=64)
    provider: str = Field(primary_key=True, max_length=32)
    until: datetime = Field(sa_type=UTCDateTime)
    reason: str | None = None
    updated_at: datetime = _created()


class ProviderNoticeRow(SQLModel, table=True):
    """What a provider reported about a channel rather than a message (WhatsApp's
    top-level `errors[]`): kept for `leadline status` and the broker's eyes."""

    __tablename__ = "provider_notices"
    __table_args__ = (
        sa.UniqueConstraint("broker_id", "provider", "notice_key", name="uq_provider_notices_key"),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    broker_id: str = Field(max_length=64)
    provider: str = Field(max_length=32)
    notice_key: str = Field(max_length=255)
    code: str | None = Field(default=None, max_length=64)
    title: str | None = None
    detail: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=PortableJSON,
        sa_column_kwargs={"nullable": False, "server_default": "{}"},
    )
    created_at: datetime = _created()


class LeadMerge(SQLModel, table=True):
    """Two leads of a broker made one, on request: never automatic, always recorded."""

    __tablename__ = "lead_merges"

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    broker_id: str = Field(max_length=64)
    into_lead_id: int = Field(sa_type=BigId, index=True)
    from_lead_id: int = Field(sa_type=BigId)
    details: dict[str, Any] = Field(
        default_factory=dict,
        sa_type=PortableJSON,
        sa_column_kwargs={"nullable": False, "server_default": "{}"},
    )
    created_at: datetime = _created()


class ApiIdempotencyKey(SQLModel, table=True):
    """An `Idempotency-Key` of the HTTP API, and the message it queued."""

    __tablename__ = "api_idempotency_keys"

    broker_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)  # the same key with another body is refused
    message_id: int = Field(sa_type=BigId)
    created_at: datetime = _created()


UNDELIVERED = sa.text("delivered_at IS NULL")


class CrmEvent(SQLModel, table=True):
    """One event for a broker's CRM (`[brokers.X.events]`): a stored message or a status
    change, POSTed in order per lead until the CRM takes it."""

    __tablename__ = "crm_events"
    __table_args__ = (
        sa.Index(
            "ix_crm_events_undelivered",
            "broker_id",
            "lead_id",
            "id",
            sqlite_where=UNDELIVERED,
            postgresql_where=UNDELIVERED,
        ),
    )

    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    broker_id: str = Field(max_length=64)
    lead_id: int = Field(sa_type=BigId)
    kind: str = Field(max_length=32)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=PortableJSON)
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0", "nullable": False})
    next_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = None
    created_at: datetime = _created()
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class LegacyImport(SQLModel, table=True):
    """How far an import of a legacy table got: a second run resumes from here."""

    __tablename__ = "legacy_imports"

    source: str = Field(primary_key=True, max_length=255)  # the legacy database and table
    broker_id: str = Field(primary_key=True, max_length=64)
    last_legacy_id: int = Field(default=0, sa_type=sa.BigInteger())
    imported: int = Field(default=0, sa_column_kwargs={"server_default": "0", "nullable": False})
    skipped: int = Field(default=0, sa_column_kwargs={"server_default": "0", "nullable": False})
    updated_at: datetime = _created()
