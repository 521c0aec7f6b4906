"""Brokers are upserted from brokers.toml at start and never deleted silently."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage.models import Broker


@dataclass(frozen=True, slots=True)
class BrokerRecord:
    id: str
    name: str
    timezone: str


async def upsert_brokers(session: AsyncSession, brokers: Iterable[BrokerRecord]) -> None:
    for record in brokers:
        row = await session.get(Broker, record.id)
        if row is None:
            session.add(Broker(id=record.id, name=record.name, timezone=record.timezone))
        elif (row.name, row.timezone) != (record.name, record.timezone):
            row.name, row.timezone = record.name, record.timezone
            session.add(row)
    await session.flush()
