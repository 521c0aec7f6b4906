"""Leads without a name whose provider can tell it, and what its profile said.

Messenger and Instagram webhooks carry no names: a lead met there starts nameless,
and the runtime asks the provider's profile (runtime/profiles.py). A lead's name is
set only while it has none, so a name a broker gave through the API is never
overwritten; a provider with no profile to give is recorded in the lead's metadata
(`no_profile`), so it is not asked again.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage.leads import channel_is
from leadline.storage.models import Lead, LeadChannel
from leadline.storage.search import refresh
from leadline.storage.types import utcnow

NO_PROFILE = "no_profile"  # lead_metadata key: the providers that had no profile to give


@dataclass(frozen=True, slots=True)
class Nameless:
    lead_id: int
    broker_id: str
    provider: str
    channel_user_id: str


async def nameless(
    session: AsyncSession,
    channels: Collection[tuple[str, str]],
    since: datetime,
    after_lead: int,
    limit: int | None,
    *,
    leads: Collection[int] | None = None,
) -> list[Nameless]:
    """Chat users on these (broker, provider) channels whose lead, created since `since`
    and after lead id `after_lead` (and one of `leads`, when given), has no name and was
    not found profileless there."""
    if not channels or (leads is not None and not leads):
        return []
    on_channel = sa.tuple_(col(LeadChannel.broker_id), col(LeadChannel.provider)).in_(
        list(channels)
    )
    query = (
        select(
            LeadChannel.lead_id,
            LeadChannel.broker_id,
            LeadChannel.provider,
            LeadChannel.channel_user_id,
            Lead.lead_metadata,
        )
        .join(Lead, col(Lead.id) == col(LeadChannel.lead_id))
        .where(
            on_channel,
            col(Lead.name).is_(None),
            col(Lead.created_at) >= since,
            col(Lead.id) > after_lead,
        )
        .order_by(col(Lead.id), col(LeadChannel.id))
        .limit(limit)
    )
    if leads is not None:
        query = query.where(col(Lead.id).in_(list(leads)))
    found = []
    for lead_id, broker_id, provider, user, metadata in (await session.exec(query)).all():
        if provider not in (metadata or {}).get(NO_PROFILE, []):
            found.append(Nameless(lead_id, broker_id, provider, user))
    return found


async def name_lead(
    session: AsyncSession, who: Nameless, name: str | None, username: str | None
) -> bool:
    """Give the lead `name` if it still has none, and its channel `username` if it has
    none; True when the lead was named."""
    if username:
        await session.exec(
            sa.update(LeadChannel)
            .where(
                channel_is(who.broker_id, who.provider, who.channel_user_id),
                col(LeadChannel.channel_username).is_(None),
            )
            .values(channel_username=username)
        )
    shown = name or username
    if not shown:
        return False
    named = await session.exec(
        sa.update(Lead)
        .where(col(Lead.id) == who.lead_id, col(Lead.name).is_(None))
        .values(name=shown, updated_at=utcnow())
    )
    await refresh(session, [who.lead_id])  # found by its new name and username
    return bool(named.rowcount)


async def no_profile(session: AsyncSession, who: Nameless) -> None:
    """Record that the provider had no profile of this lead to give."""
    lead = await session.get(Lead, who.lead_id, with_for_update=True)
    if lead is None:
        return
    providers = list((lead.lead_metadata or {}).get(NO_PROFILE, []))
    if who.provider not in providers:
        lead.lead_metadata = {**lead.lead_metadata, NO_PROFILE: [*providers, who.provider]}
        session.add(lead)
