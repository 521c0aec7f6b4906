"""the CRM's HTTP API and events, lead merges, lead metadata, legacy imports

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from leadline.storage.types import PortableJSON, UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UNDELIVERED = sa.text("delivered_at IS NULL")


def _text(length: int | None = None) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lead_metadata", PortableJSON, server_default="{}", nullable=False)
        )
        batch_op.add_column(
            sa.Column("updated_at", UTCDateTime(), server_default=sa.func.now(), nullable=False)
        )
    op.create_table(
        "lead_merges",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("broker_id", _text(64), nullable=False),
        sa.Column("into_lead_id", BIG_ID, nullable=False),
        sa.Column("from_lead_id", BIG_ID, nullable=False),
        sa.Column("details", PortableJSON, server_default="{}", nullable=False),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_lead_merges_into_lead_id", "lead_merges", ["into_lead_id"])
    op.create_table(
        "api_idempotency_keys",
        sa.Column("broker_id", _text(64), nullable=False),
        sa.Column("key", _text(255), nullable=False),
        sa.Column("request_hash", _text(64), nullable=False),
        sa.Column("message_id", BIG_ID, nullable=False),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("broker_id", "key"),
    )
    op.create_table(
        "crm_events",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("broker_id", _text(64), nullable=False),
        sa.Column("lead_id", BIG_ID, nullable=False),
        sa.Column("kind", _text(32), nullable=False),
        sa.Column("payload", PortableJSON, nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("last_error", _text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_crm_events_undelivered",
        "crm_events",
        ["broker_id", "lead_id", "id"],
        sqlite_where=UNDELIVERED,
        postgresql_where=UNDELIVERED,
    )
    op.create_table(
        "legacy_imports",
        sa.Column("source", _text(255), nullable=False),
        sa.Column("broker_id", _text(64), nullable=False),
        sa.Column("last_legacy_id", sa.BigInteger(), nullable=False),
        sa.Column("imported", sa.Integer(), server_default="0", nullable=False),
        sa.Column("skipped", sa.Integer(), server_default="0", nullable=False),
        sa.Column("updated_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("source", "broker_id"),
    )


def downgrade() -> None:
    op.drop_table("legacy_imports")
    op.drop_index("ix_crm_events_undelivered", table_name="crm_events")
    op.drop_table("crm_events")
    op.drop_table("api_idempotency_keys")
    op.drop_index("ix_lead_merges_into_lead_id", table_name="lead_merges")
    op.drop_table("lead_merges")
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_column("updated_at")
        batch_op.drop_column("lead_metadata")
