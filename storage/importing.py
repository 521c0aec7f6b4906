"""Importing a legacy system's chat history: leads, lead channels and messages, in batches.

The runtime reads the legacy rows and hands them over batch by batch, already checked
(`HistoryRow`); this module stores a batch with a handful of set-based statements
whatever its size, in the caller's transaction, together with the import's progress
(`legacy_imports`), so that a run interrupted between two batches resumes after the
last one committed.

- Messages are inserted idempotently on `(broker_id, provider, direction,
  channel_message_id)`: what is already stored, by a live channel or an earlier run,
  stays as it is and is counted as already present.
- A chat user who is already a lead channel keeps that lead; a new one gets the lead
  of their legacy lead id (created once, found again through
  `lead_metadata.legacy`), or a lead of their own when the row names no legacy lead.
- Imported inbound rows are stored handled (`handled_at` set): the reply rules never
  answer history. Outbound rows are `sent`, inbound `delivered`, at their own times.
- A dry run plans the same way but writes nothing: new leads get made-up negative
  ids, and the messages are looked up instead of inserted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.config.vocabulary import Direction, MessageStatus
from leadline.storage.dialect import insert_ignoring_conflicts
from leadline.storage.inbound import IDEMPOTENCY_KEY
from leadline.storage.leads import chunks
from leadline.storage.models import ChatMessage, Lead, LeadChannel, LegacyImport
from leadline.storage.search import refresh
from leadline.storage.types import utcnow

LeadKey = int | str  # a legacy lead id, as the legacy database has it
LEGACY = "legacy"  # the key of `lead_metadata` and `provider_metadata` an import writes

_LEADS = Lead.__table__  # type: ignore[attr-defined]
_CHANNELS = LeadChannel.__table__  # type: ignore[attr-defined]
_MESSAGES = ChatMessage.__table__  # type: ignore[attr-defined]
_PROGRESS = LegacyImport.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class HistoryRow:
    """One legacy message, checked and keyed."""

    legacy_id: int
    channel_user_id: str
    channel_username: str | None
    legacy_lead_id: LeadKey | None
    channel_message_id: str
    message_text: str | None
    direction: Direction
    ai_response_used: bool
    created_at: datetime  # aware, UTC
    provider_metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LeadDetails:
    """What a legacy `leads` row says of a lead the import creates."""

    name: str | None = None
    phone: str | None = None
    tags: tuple[str, ...] = ()


# The legacy leads' details, asked only for the leads a batch creates.
DetailsLookup = Callable[[Sequence[LeadKey]], Awaitable[Mapping[LeadKey, LeadDetails]]]


@dataclass
class ImportCounts:
    leads_created: int = 0
    channels_created: int = 0  # new lead channels, on new leads or on existing ones
    channels_attached: int = 0  # chat users already a lead channel of a lead met here first
    messages_new: int = 0
    messages_present: int = 0  # stored before: by a live channel, or by an earlier run

    def add(self, other: ImportCounts) -> None:
        self.leads_created += other.leads_created
        self.channels_created += other.channels_created
        self.channels_attached += other.channels_attached
        self.messages_new += other.messages_new
        self.messages_present += other.messages_present


@dataclass(frozen=True, slots=True)
class Progress:
    last_legacy_id: int
    imported: int
    skipped: int


@dataclass
class _NewLead:
    details: LeadDetails
    metadata: dict[str, Any]
    created_at: datetime
    users: list[str] = field(default_factory=list)
    lead_key: LeadKey | None = None
    lead_id: int = 0


class HistoryImport:
    """One run of an import of one legacy source into one broker's provider.

    Keeps what it learnt across batches (which legacy lead is which lead, which chat
    user is which lead), so a batch asks the database only about the users it
    meets for the first time.
    """

    def __init__(self, broker_id: str, provider: str, source: str, *, dry_run: bool) -> None:
        self.broker_id = broker_id
        self.provider = provider
        self.source = source
        self.dry_run = dry_run
        self._lead_of_legacy: dict[LeadKey, int] = {}
        self._ours: set[int] = set()  # leads carrying this source's legacy metadata
        self._lead_of_user: dict[str, int] = {}
        self._attached: set[int] = set()  # leads from elsewhere this run attached users to
        self._dry_keys: set[tuple[Direction, str]] = set()  # dry run: "inserted" messages
        self._next_dry_id = -1

    async def start(self, session: AsyncSession) -> Progress | None:
        """Learn the leads earlier runs created; returns where they stopped."""
        source = _LEADS.c.lead_metadata[(LEGACY, "source")].as_string()
        query = sa.select(_LEADS.c.id, _LEADS.c.lead_metadata[(LEGACY, "lead_id")]).where(
            _LEADS.c.broker_id == self.broker_id, source == self.source
        )
        for lead_id, legacy_id in await _run(session, query):
            self._ours.add(lead_id)
            if legacy_id is not None:
                self._lead_of_legacy.setdefault(legacy_id, lead_id)
        found = await _run(
            session,
            sa.select(_PROGRESS.c.last_legacy_id, _PROGRESS.c.imported, _PROGRESS.c.skipped)
            .where(_PROGRESS.c.source == self.source)
            .where(_PROGRESS.c.broker_id == self.broker_id),
        )
        row = found.first()
        return Progress(*row) if row is not None else None

    async def store(
        self,
        session: AsyncSession,
        rows: Sequence[HistoryRow],
        last_legacy_id: int,
        skipped: int,
        details: DetailsLookup,
    ) -> ImportCounts:
        """Store one batch (nothing in a dry run) and, unless dry, the progress it makes."""
        counts = ImportCounts()
        first_rows: dict[str, HistoryRow] = {}
        for row in rows:
            first_rows.setdefault(row.channel_user_id, row)
        met = [user for user in first_rows if user not in self._lead_of_user]
        known = await self._known_channels(session, met)
        await self._attach(session, known, first_rows, counts)
        new_users = [user for user in met if user not in known]
        if new_users:
            await self._create(session, new_users, first_rows, rows, details, counts)
        await self._messages(session, rows, counts)
        if not self.dry_run:
            await self._save_progress(session, last_legacy_id, counts.messages_new, skipped)
        return counts

    # --- leads and channels ------------------------------------------------------

    async def _known_channels(self, session: AsyncSession, users: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in chunks(users):
            result = await _run(
                session,
                sa.select(_CHANNELS.c.channel_user_id, _CHANNELS.c.lead_id).where(
                    _CHANNELS.c.broker_id == self.broker_id,
                    _CHANNELS.c.provider == self.provider,
                    _CHANNELS.c.channel_user_id.in_(chunk),
                ),
            )
            found.update({user: lead_id for user, lead_id in result})
        return found

    async def _attach(
        self,
        session: AsyncSession,
        known: Mapping[str, int],
        first_rows: Mapping[str, HistoryRow],
        counts: ImportCounts,
    ) -> None:
        """Chat users who are already lead channels keep their lead; a legacy lead id they
        carry maps to that lead from now on, recorded in its metadata if it has none."""
        to_mark: dict[int, LeadKey] = {}
        for user, lead_id in known.items():
            self._lead_of_user[user] = lead_id
            if lead_id in self._ours and lead_id not in self._attached:
                continue  # a lead of this import (its legacy lead is known from its metadata)
            counts.channels_attached += 1
            self._attached.add(lead_id)
            key = first_rows[user].legacy_lead_id
            if key is not None and key not in self._lead_of_legacy:
                self._lead_of_legacy[key] = lead_id
                to_mark.setdefault(lead_id, key)
        self._ours.update(to_mark)
        if not to_mark or self.dry_run:
            return
        metadata: dict[int, dict[str, Any]] = {}
        for chunk in chunks(list(to_mark)):
            result = await _run(
                session,
                sa.select(_LEADS.c.id, _LEADS.c.lead_metadata).where(_LEADS.c.id.in_(chunk)),
            )
            metadata.update({lead_id: dict(found or {}) for lead_id, found in result})
        now = utcnow()
        updates = [
            {"lead": lead_id, "meta": {**found, LEGACY: self._legacy_mark(to_mark[lead_id])},
             "now": now}
            for lead_id, found in metadata.items()
            if LEGACY not in found
        ]  # fmt: skip
        if updates:
            statement = (
                sa.update(_LEADS)
                .where(_LEADS.c.id == sa.bindparam("lead"))
                .values(lead_metadata=sa.bindparam("meta"), updated_at=sa.bindparam("now"))
            )
            await _run(session, statement, updates)

    def _legacy_mark(self, key: LeadKey | None, user: str | None = None) -> dict[str, Any]:
        mark: dict[str, Any] = {"source": self.source}
        if key is not None:
            mark["lead_id"] = key
        else:
            mark["channel_user_id"] = user
        return mark

    async def _create(
        self,
        session: AsyncSession,
        users: Sequence[str],
        first_rows: Mapping[str, HistoryRow],
        rows: Sequence[HistoryRow],
        details: DetailsLookup,
        counts: ImportCounts,
    ) -> None:
        """Leads for the chat users met for the first time, then their channels."""
        first_seen: dict[str, datetime] = {}
        for row in rows:
            seen = first_seen.get(row.channel_user_id)
            if seen is None or row.created_at < seen:
                first_seen[row.channel_user_id] = row.created_at
        on_existing: list[tuple[str, int]] = []
        new_by_key: dict[LeadKey, _NewLead] = {}
        new_leads: list[_NewLead] = []
        for user in users:
            key = first_rows[user].legacy_lead_id
            if key is not None and key in self._lead_of_legacy:
                on_existing.append((user, self._lead_of_legacy[key]))
                continue
            lead = new_by_key.get(key) if key is not None else None
            if lead is None:
                username = first_rows[user].channel_username
                lead = _NewLead(LeadDetails(name=username), self._legacy_mark(key, user),
                                first_seen[user], lead_key=key)  # fmt: skip
                new_leads.append(lead)
                if key is not None:
                    new_by_key[key] = lead
            lead.users.append(user)
            lead.created_at = min(lead.created_at, first_seen[user])
        if new_by_key:
            found = await details(list(new_by_key))
            for key, lead in new_by_key.items():
                if key in found:
                    lead.details = _fill(found[key], lead.details.name)
        await self._insert_leads(session, new_leads)
        channels = [(user, lead.lead_id) for lead in new_leads for user in lead.users]
        channels += on_existing
        won = await self._insert_channels(session, channels, first_rows, first_seen)
        lost = [user for user, _ in channels if user not in won]
        if lost:  # a live channel stored these users meanwhile: theirs wins
            self._lead_of_user.update(await self._known_channels(session, lost))
        gone: list[int] = []
        empty = [lead for lead in new_leads if not any(u in won for u in lead.users)]
        if empty:  # every channel of these leads went to a live lead: drop them
            gone = [lead.lead_id for lead in empty]
            await _run(session, sa.delete(_LEADS).where(_LEADS.c.id.in_(gone)))
        for lead in new_leads:
            if lead.lead_id in gone:
                if lead.lead_key is not None:  # the winner's lead is this legacy lead's
                    self._lead_of_legacy[lead.lead_key] = self._lead_of_user[lead.users[0]]
                continue
            self._ours.add(lead.lead_id)
            if lead.lead_key is not None:
                self._lead_of_legacy[lead.lead_key] = lead.lead_id
        if not self.dry_run:  # the new leads, and the leads that gained channels, searchable
            kept = [lead.lead_id for lead in new_leads if lead.lead_id not in gone]
            await refresh(session, kept + [lead_id for _, lead_id in on_existing])
        counts.leads_created += len(new_leads) - len(empty)
        counts.channels_created += len(won)

    async def _insert_leads(self, session: AsyncSession, leads: Sequence[_NewLead]) -> None:
        if not leads:
            return
        if self.dry_run:
            for lead in leads:
                lead.lead_id, self._next_dry_id = self._next_dry_id, self._next_dry_id - 1
            return
        now = utcnow()
        values = [
            {"broker_id": self.broker_id, "name": lead.details.name, "phone": lead.details.phone,
             "tags": list(lead.details.tags), "lead_metadata": {LEGACY: lead.metadata},
             "created_at": lead.created_at, "updated_at": now}
            for lead in leads
        ]  # fmt: skip
        statement = sa.insert(_LEADS).returning(_LEADS.c.id, sort_by_parameter_order=True)
        result = await _run(session, statement, values)
        for lead, lead_id in zip(leads, result.scalars(), strict=True):
            lead.lead_id = lead_id

    async def _insert_channels(
        self,
        session: AsyncSession,
        channels: Sequence[tuple[str, int]],
        first_rows: Mapping[str, HistoryRow],
        first_seen: Mapping[str, datetime],
    ) -> set[str]:
        """The users whose channel this inserted (a concurrent live insert may win)."""
        if self.dry_run:
            self._lead_of_user.update(channels)
            return {user for user, _ in channels}
        values = [
            {"lead_id": lead_id, "broker_id": self.broker_id, "provider": self.provider,
             "channel_user_id": user, "channel_username": first_rows[user].channel_username,
             "created_at": first_seen[user]}
            for user, lead_id in channels
        ]  # fmt: skip
        statement = insert_ignoring_conflicts(
            session, _CHANNELS, ["broker_id", "provider", "channel_user_id"]
        ).returning(_CHANNELS.c.channel_user_id)
        won = set((await _run(session, statement, values)).scalars())
        self._lead_of_user.update((user, lead_id) for user, lead_id in channels if user in won)
        return won

    # --- messages and progress --------------------------------------------------

    async def _messages(
        self, session: AsyncSession, rows: Sequence[HistoryRow], counts: ImportCounts
    ) -> None:
        if not rows:
            return
        if self.dry_run:
            present = await self._present(session, rows)
            for row in rows:
                key = (row.direction, row.channel_message_id)
                if key in present or key in self._dry_keys:
                    counts.messages_present += 1
                else:
                    self._dry_keys.add(key)
                    counts.messages_new += 1
            return
        now = utcnow()
        values = [self._values(row, now) for row in rows]
        statement = insert_ignoring_conflicts(session, _MESSAGES, IDEMPOTENCY_KEY).returning(
            _MESSAGES.c.id
        )
        result = await _run(session, statement, values)
        new = len(result.all())
        counts.messages_new += new
        counts.messages_present += len(rows) - new

    def _values(self, row: HistoryRow, now: datetime) -> dict[str, Any]:
        out = row.direction == Direction.OUT
        return {
            "lead_id": self._lead_of_user[row.channel_user_id],
            "broker_id": self.broker_id,
            "provider": self.provider,
            "channel_user_id": row.channel_user_id,
            "channel_username": row.channel_username,
            "channel_message_id": row.channel_message_id,
            "message_text": row.message_text,
            "direction": row.direction,
            "status": MessageStatus.SENT if out else MessageStatus.DELIVERED,
            "provider_metadata": dict(row.provider_metadata),
            "attachments": [],
            "ai_response_used": row.ai_response_used,
            "sent_at": row.created_at if out else None,
            "handled_at": now,  # history: never answered by the reply rules
            "created_at": row.created_at,
            "updated_at": now,
        }

    async def _present(
        self, session: AsyncSession, rows: Sequence[HistoryRow]
    ) -> set[tuple[Direction, str]]:
        """Which of these messages are stored already (a dry run's stand-in for the insert)."""
        wanted: dict[Direction, list[str]] = {}
        for row in rows:
            wanted.setdefault(row.direction, []).append(row.channel_message_id)
        present: set[tuple[Direction, str]] = set()
        for direction, keys in wanted.items():
            for chunk in chunks(keys):
                result = await _run(
                    session,
                    sa.select(_MESSAGES.c.channel_message_id).where(
                        _MESSAGES.c.broker_id == self.broker_id,
                        _MESSAGES.c.provider == self.provider,
                        _MESSAGES.c.direction == direction,
                        _MESSAGES.c.channel_message_id.in_(chunk),
                    ),
                )
                present.update((direction, key) for key in result.scalars())
        return present

    async def _save_progress(
        self, session: AsyncSession, last_legacy_id: int, imported: int, skipped: int
    ) -> None:
        module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        statement = module.insert(_PROGRESS).values(
            source=self.source,
            broker_id=self.broker_id,
            last_legacy_id=last_legacy_id,
            imported=imported,
            skipped=skipped,
            updated_at=utcnow(),
        )
        statement = statement.on_conflict_do_update(
            index_elements=["source", "broker_id"],
            set_={
                "last_legacy_id": statement.excluded.last_legacy_id,
                "imported": _PROGRESS.c.imported + statement.excluded.imported,
                "skipped": _PROGRESS.c.skipped + statement.excluded.skipped,
                "updated_at": statement.excluded.updated_at,
            },
        )
        await _run(session, statement)


async def _run(session: AsyncSession, statement: Any, params: Any = None) -> Any:
    """A Core statement on the session's connection (executemany for a list of params)."""
    return await (await session.connection()).execute(statement, params)


def _fill(found: LeadDetails, username: str | None) -> LeadDetails:
    """The legacy lead's details; its chat user's name where it has none."""
    return LeadDetails(found.name or username, found.phone, found.tags)
