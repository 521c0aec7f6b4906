"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

from leadline.storage.types import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _status() -> sa.Enum:
    # Plain strings, never a native PostgreSQL ENUM (STACK.md).
    return sa.Enum(
        "pending", "sent", "delivered", "read", "failed",
        name="messagestatus", native_enum=False, length=16,
    )  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "brokers",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "leads",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("broker_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("phone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column(
            "tags",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            server_default="[]",
            nullable=False,
        ),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["broker_id"],
            ["brokers.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_leads_broker_id"), ["broker_id"], unique=False)

    op.create_table(
        "chat_messages",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("lead_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("broker_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("channel_user_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("channel_username", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column(
            "channel_message_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True
        ),
        sa.Column("message_text", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column(
            "direction",
            sa.Enum("in", "out", name="direction", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column(
            "status",
            _status(),
            nullable=False,
        ),
        sa.Column(
            "provider_metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            server_default="{}",
            nullable=False,
        ),
        sa.Column(
            "attachments",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            server_default="[]",
            nullable=False,
        ),
        sa.Column("ai_response_used", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("send_after", UTCDateTime(), nullable=True),
        sa.Column("handled_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["broker_id"],
            ["brokers.id"],
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"],
            ["leads.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "broker_id",
            "provider",
            "direction",
            "channel_message_id",
            name="uq_chat_messages_idempotency",
        ),
    )
    with op.batch_alter_table("chat_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_chat_messages_broker_provider", ["broker_id", "provider"], unique=False
        )
        batch_op.create_index(
            "ix_chat_messages_lead_provider", ["lead_id", "provider"], unique=False
        )
        batch_op.create_index(
            "ix_chat_messages_outbox", ["direction", "status", "send_after"], unique=False
        )
        batch_op.create_index(
            "ix_chat_messages_provider_user", ["provider", "channel_user_id"], unique=False
        )
        batch_op.create_index(
            "ix_chat_messages_unhandled", ["direction", "handled_at"], unique=False
        )

    op.create_table(
        "lead_channels",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("lead_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("broker_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("channel_user_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("channel_username", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.ForeignKeyConstraint(
            ["broker_id"],
            ["brokers.id"],
        ),
        sa.ForeignKeyConstraint(
            ["lead_id"],
            ["leads.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "broker_id", "provider", "channel_user_id", name="uq_lead_channels_identity"
        ),
    )
    with op.batch_alter_table("lead_channels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_lead_channels_lead_id"), ["lead_id"], unique=False)

    op.create_table(
        "early_statuses",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("broker_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column(
            "channel_message_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.Column(
            "status",
            _status(),
            nullable=False,
        ),
        sa.Column("error", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_early_statuses_message",
        "early_statuses",
        ["broker_id", "provider", "channel_message_id"],
    )


def downgrade() -> None:
    op.drop_table("early_statuses")
    with op.batch_alter_table("lead_channels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_lead_channels_lead_id"))

    op.drop_table("lead_channels")
    with op.batch_alter_table("chat_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_messages_unhandled")
        batch_op.drop_index("ix_chat_messages_provider_user")
        batch_op.drop_index("ix_chat_messages_outbox")
        batch_op.drop_index("ix_chat_messages_lead_provider")
        batch_op.drop_index("ix_chat_messages_broker_provider")

    op.drop_table("chat_messages")
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_leads_broker_id"))

    op.drop_table("leads")
    op.drop_table("brokers")
