"""delivery engine: leases, send times, channel pauses, the outbox heads index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from leadline.storage.types import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING_OUT = sa.text("status = 'pending' AND direction = 'out'")


def upgrade() -> None:
    with op.batch_alter_table("chat_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_until", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("sent_at", UTCDateTime(), nullable=True))
        batch_op.create_index("ix_chat_messages_recent", ["direction", "updated_at"], unique=False)
        batch_op.create_index(
            "ix_chat_messages_pending_out",
            ["broker_id", "provider", "channel_user_id", "id"],
            unique=False,
            sqlite_where=PENDING_OUT,
            postgresql_where=PENDING_OUT,
        )
    op.create_table(
        "delivery_pauses",
        sa.Column("broker_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("until", UTCDateTime(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("broker_id", "provider"),
    )


def downgrade() -> None:
    op.drop_table("delivery_pauses")
    with op.batch_alter_table("chat_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_chat_messages_pending_out")
        batch_op.drop_index("ix_chat_messages_recent")
        batch_op.drop_column("sent_at")
        batch_op.drop_column("lease_until")
