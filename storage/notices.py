"""Provider notices: what a provider reported about a channel rather than a message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.models import ProviderNoticeRow
from leadline.storage.types import utcnow


@dataclass(frozen=True, slots=True)
class Notice:
    broker_id: str
    provider: str
    key: str
    code: str | None = None
    title: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


async def insert_notices(session: AsyncSession, notices: Sequence[Notice]) -> list[Notice]:
    """Store notices idempotently (by broker, provider and key); returns the new ones."""
    if not notices:
        return []
    table = ProviderNoticeRow.__table__  # type: ignore[attr-defined]
    statement = insert_ignoring_conflicts(
        session, table, ["broker_id", "provider", "notice_key"]
    ).returning(table.c.broker_id, table.c.provider, table.c.notice_key)
    now = utcnow()
    values = [
        {
            "broker_id": n.broker_id,
            "provider": n.provider,
            "notice_key": n.key,
            "code": n.code,
            "title": n.title,
            "detail": dict(n.detail),
            "created_at": now,
        }
        for n in notices
    ]
    conn = await session.connection()
    new = {tuple(row) for row in await conn.execute(statement, values)}
    return [n for n in notices if (n.broker_id, n.provider, n.key) in new]
