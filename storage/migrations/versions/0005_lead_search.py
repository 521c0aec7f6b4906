"""accent- and case-insensitive lead search (issue 15, item 4)

`leads.search_text`: the lead's name, phone and channels folded by storage/search.py,
filled here in Python for the leads that exist, batch by batch; then its index:
- PostgreSQL: a pg_trgm GIN index. Creating the extension needs the CREATE privilege on
  the database (pg_trgm is a trusted extension); a role without it gets no index and a
  warning saying what to run: the search works without it, by scanning the leads.
- SQLite: an FTS5 table with the trigram tokenizer (SQLite 3.34 or later) and the
  triggers that keep it equal to the column.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

from leadline.storage.search import compose

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("leadline.storage.migrations")

BATCH = 1000  # leads read and written at a time
LEADS = sa.table(
    "leads", sa.column("id"), sa.column("name"), sa.column("phone"), sa.column("search_text")
)
CHANNELS = sa.table(
    "lead_channels",
    sa.column("id"),
    sa.column("lead_id"),
    sa.column("channel_username"),
    sa.column("channel_user_id"),
)
SQLITE_DDL = (
    "CREATE VIRTUAL TABLE leads_search USING fts5("
    "search_text, tokenize = 'trigram case_sensitive 1', detail = none)",
    "INSERT INTO leads_search (rowid, search_text) SELECT id, search_text FROM leads",
    "CREATE TRIGGER leads_search_insert AFTER INSERT ON leads BEGIN "
    "INSERT INTO leads_search (rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER leads_search_update AFTER UPDATE OF search_text ON leads BEGIN "
    "UPDATE leads_search SET search_text = new.search_text WHERE rowid = old.id; END",
    "CREATE TRIGGER leads_search_delete AFTER DELETE ON leads BEGIN "
    "DELETE FROM leads_search WHERE rowid = old.id; END",
)
SQLITE_DROP = (
    "DROP TRIGGER IF EXISTS leads_search_insert",
    "DROP TRIGGER IF EXISTS leads_search_update",
    "DROP TRIGGER IF EXISTS leads_search_delete",
    "DROP TABLE IF EXISTS leads_search",
)
POSTGRES_INDEX = "ix_leads_search_text"


def upgrade() -> None:
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "search_text", sqlmodel.sql.sqltypes.AutoString(), server_default="", nullable=False
            )
        )
    bind = op.get_bind()
    _fill(bind)
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_DDL:
            op.execute(statement)
    else:
        _postgres_index(bind)


def _fill(bind: sa.Connection) -> None:
    """Every existing lead's search_text, a batch of leads at a time in id order."""
    after = 0
    while True:
        leads = bind.execute(
            sa.select(LEADS.c.id, LEADS.c.name, LEADS.c.phone)
            .where(LEADS.c.id > after)
            .order_by(LEADS.c.id)
            .limit(BATCH)
        ).all()
        if not leads:
            return
        after = leads[-1].id
        channels: dict[int, list[tuple[str | None, str]]] = {}
        found = bind.execute(
            sa.select(CHANNELS.c.lead_id, CHANNELS.c.channel_username, CHANNELS.c.channel_user_id)
            .where(CHANNELS.c.lead_id.in_([lead.id for lead in leads]))
            .order_by(CHANNELS.c.id)
        )
        for lead_id, username, user_id in found:
            channels.setdefault(lead_id, []).append((username, user_id))
        values = [
            {"lead": lead.id, "text": text}
            for lead in leads
            if (text := compose(lead.name, lead.phone, channels.get(lead.id, [])))
        ]
        if values:
            bind.execute(
                sa.update(LEADS)
                .where(LEADS.c.id == sa.bindparam("lead"))
                .values(search_text=sa.bindparam("text")),
                values,
            )


def _postgres_index(bind: sa.Connection) -> None:
    try:
        with bind.begin_nested():  # a refusal must not abort the migration's transaction
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except sa.exc.DBAPIError as exc:
        log.warning(
            "lead search: no index, the pg_trgm extension could not be created (%s); "
            "searches scan the leads. A role with the CREATE privilege can add it: "
            "CREATE EXTENSION pg_trgm; CREATE INDEX %s ON leads USING gin "
            "(search_text gin_trgm_ops);",
            type(exc.orig).__name__,
            POSTGRES_INDEX,
        )
        return
    op.create_index(
        POSTGRES_INDEX,
        "leads",
        ["search_text"],
        postgresql_using="gin",
        postgresql_ops={"search_text": "gin_trgm_ops"},
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in SQLITE_DROP:
            op.execute(statement)
    else:
        op.execute("DROP INDEX IF EXISTS ix_leads_search_text")  # pg_trgm stays: others may use it
    with op.batch_alter_table("leads", schema=None) as batch_op:
        batch_op.drop_column("search_text")
