"""Statements whose SQL differs between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession


def insert_ignoring_conflicts(
    session: AsyncSession, table: sa.Table, index_elements: list[str]
) -> Any:
    """`INSERT ... ON CONFLICT (index_elements) DO NOTHING` for the session's database.

    Add `.values(...)` and `.returning(...)`: a conflicting row returns nothing.
    """
    dialect = session.get_bind().dialect.name
    module = postgresql if dialect == "postgresql" else sqlite
    return module.insert(table).on_conflict_do_nothing(index_elements=index_elements)
