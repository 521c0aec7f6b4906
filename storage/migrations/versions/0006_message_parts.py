"""every provider id of a message sent in parts (issue 15, item 6)

A long text (or media after a text) goes as several sends; the row keeps the last
part's id. Every part's id is kept here, so echoes and status reports of any part
find the message.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "chat_message_parts",
        sa.Column(
            "message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("broker_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("provider", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column(
            "channel_message_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False
        ),
        sa.ForeignKeyConstraint(["message_id"], ["chat_messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id", "part"),
        sa.UniqueConstraint(
            "broker_id", "provider", "channel_message_id", name="uq_chat_message_parts_id"
        ),
    )


def downgrade() -> None:
    op.drop_table("chat_message_parts")
