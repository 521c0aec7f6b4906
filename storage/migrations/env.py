"""Alembic environment. Leadline calls it with its own connection (storage/migrate.py);
run by hand, `alembic -c storage/migrations/alembic.ini` uses LEADLINE_DATABASE_URL."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from leadline.storage import models  # noqa: F401  (registers the tables)
from leadline.storage.engine import make_engine
from leadline.storage.search import include_name

target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=include_name,  # the search index, made with SQL the models cannot say
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone() -> None:
    url = os.environ.get("LEADLINE_DATABASE_URL", "sqlite+aiosqlite:///leadline.db")
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    asyncio.run(_run_standalone())
