"""Finding leads by a piece of their name, phone, or a channel's username or user id,
whatever its case and accents ("angela", "ÁNGELA" and "Angela" all find "Ángela Núñez").

SQLite's `lower()` folds ASCII only, and PostgreSQL's depends on the collation, so neither
database folds: Python does, once per write. `leads.search_text` holds the lead's folded
name, its phone's digits, and each of its channels' folded username and user id, one per
line, and every write of those fields brings it up to date (`compose`, `refresh`).

A search is a substring search of `search_text` for the folded query, served by:
- PostgreSQL: a pg_trgm GIN index on the column (`ix_leads_search_text`), which serves
  `LIKE '%…%'`. Where the role may not create the extension, migration 0005 leaves the
  index out and says so: the search still works, scanning the broker's leads.
- SQLite: an FTS5 table with the trigram tokenizer (`leads_search`, its rowid the lead's
  id), kept equal to the column by triggers on `leads`; its index serves `GLOB '*…*'`.
  A migration that rebuilds `leads` (Alembic's batch mode copies the table) drops those
  triggers: it must create them again (tests/test_lead_search.py checks them at head).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection, Iterable
from typing import Any

import sqlalchemy as sa
from sqlmodel.ext.asyncio.session import AsyncSession

from leadline.storage.models import Lead, LeadChannel

SEPARATOR = "\n"  # between the parts of `search_text`; never in a folded query
PHONE_MARKS = frozenset("+-()./ ")  # what a phone number is written with, besides digits
SQLITE_TABLE = "leads_search"
SQLITE_TRIGGERS = ("leads_search_insert", "leads_search_update", "leads_search_delete")
POSTGRES_INDEX = "ix_leads_search_text"
CHUNK = 400  # leads per statement, well under both databases' parameter limits

Channel = tuple[str | None, str]  # a channel's username and user id

_LEADS = Lead.__table__  # type: ignore[attr-defined]
_CHANNELS = LeadChannel.__table__  # type: ignore[attr-defined]


# --- the normalizer ----------------------------------------------------------------------


def fold(text: str) -> str:
    """`text` without case, accents or compatibility forms, its spaces collapsed to one:
    "  Ángela  NÚÑEZ" -> "angela nunez", "Straße" -> "strasse", "ﬁ" -> "fi"."""
    # Compatibility decomposition before and after casefold: casefold may map to letters
    # that decompose further (U+01F0), and decomposing may give letters with a case
    # (U+210C, a black-letter H, decomposes to "H").
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    kept = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(kept.split())


def digits(text: str) -> str:
    """The decimal digits of `text` as ASCII, whatever their script (Arabic-Indic ones
    too): "+54 9 (11) 55" -> "5491155"."""
    return "".join(
        str(unicodedata.decimal(ch)) for ch in unicodedata.normalize("NFKD", text) if ch.isdecimal()
    )


def looks_like_phone(text: str) -> bool:
    """Digits written the way phone numbers are: "+54 9 11", "(11) 5555-0000"."""
    return any(ch.isdecimal() for ch in text) and all(
        ch.isdecimal() or ch in PHONE_MARKS for ch in text
    )


def needle(query: str) -> str:
    """What `query` is looked for as in `search_text`: a phone's digits alone (so
    "+54 9 11" finds "5491 1…" however it was written), else the folded text, without a
    leading "@" (usernames are searched with or without it)."""
    folded = fold(query)
    if looks_like_phone(folded):
        return digits(folded)
    return folded.lstrip("@").strip()


def compose(name: str | None, phone: str | None, channels: Iterable[Channel]) -> str:
    """A lead's `search_text`."""
    parts = [fold(name or "")]
    if phone:
        folded = fold(phone)
        # Digits alone for the usual phone; the folded text too when it says more ("ext").
        parts += [digits(folded)] if looks_like_phone(folded) else [digits(folded), folded]
    for username, user_id in channels:
        parts += [fold(username or ""), fold(user_id)]
    return SEPARATOR.join(part for part in dict.fromkeys(parts) if part)


# --- keeping the column up to date ---------------------------------------------------------


async def refresh(session: AsyncSession, lead_ids: Collection[int]) -> dict[int, str]:
    """Compose again the `search_text` of these leads from what the database holds now,
    after a write of their name, phone or channels in this transaction; returns it by
    lead id. Rows whose text is unchanged are not written."""
    composed: dict[int, str] = {}
    wanted = sorted({lead_id for lead_id in lead_ids if lead_id > 0})
    if not wanted:
        return composed
    conn = await session.connection()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        # The lead's row is locked before its channels are read: a writer changing a
        # channel meanwhile then waits, and composes the text again after this one.
        # FOR NO KEY UPDATE, as the UPDATE itself would take: rows naming the lead
        # (messages, replies) are still inserted meanwhile.
        leads = await conn.execute(
            sa.select(_LEADS.c.id, _LEADS.c.name, _LEADS.c.phone, _LEADS.c.search_text)
            .where(_LEADS.c.id.in_(chunk))
            .order_by(_LEADS.c.id)
            .with_for_update(key_share=True)
        )
        channels: dict[int, list[Channel]] = {}
        found = await conn.execute(
            sa.select(
                _CHANNELS.c.lead_id, _CHANNELS.c.channel_username, _CHANNELS.c.channel_user_id
            )
            .where(_CHANNELS.c.lead_id.in_(chunk))
            .order_by(_CHANNELS.c.id)
        )
        for lead_id, username, user_id in found:
            channels.setdefault(lead_id, []).append((username, user_id))
        changed: list[dict[str, Any]] = []
        for lead_id, name, phone, before in leads:
            text = composed[lead_id] = compose(name, phone, channels.get(lead_id, []))
            if text != before:
                changed.append({"lead": lead_id, "text": text})
        if changed:
            await conn.execute(_SET_TEXT, changed)
    return composed


_SET_TEXT = (
    sa.update(_LEADS)
    .where(_LEADS.c.id == sa.bindparam("lead"))
    .values(search_text=sa.bindparam("text"))
)


# --- the condition a query becomes ----------------------------------------------------------


def matching(dialect: str, query: str) -> sa.ColumnElement[bool] | None:
    """The condition on `leads` for the leads `query` finds; None when the query folds to
    nothing (only spaces or accents), which filters nothing."""
    wanted = needle(query)
    if not wanted:
        return None
    if dialect == "sqlite":
        found = (
            sa.select(sa.literal_column("rowid"))
            .select_from(sa.table(SQLITE_TABLE))
            .where(sa.literal_column("search_text").op("GLOB")(_glob(wanted)))
        )
        return _LEADS.c.id.in_(found)
    return _LEADS.c.search_text.like(_like(wanted))


async def plan_for_the_pattern(session: AsyncSession, query: str) -> None:
    """On PostgreSQL, plan this transaction's statements for their values: a prepared
    statement's generic plan, blind to the pattern, the cursor and the limit, reads the
    leads in id order (29 ms among 50,000 for a pattern found nowhere) rather than ask
    the trigram index (under 1 ms)."""
    if session.get_bind().dialect.name == "postgresql" and needle(query):
        await session.exec(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))


def _glob(text: str) -> str:
    # GLOB, not LIKE: the trigram index serves GLOB when case-sensitive (the text is
    # folded already) and a LIKE with an ESCAPE clause not at all. `[x]` quotes x.
    return "*" + "".join(f"[{ch}]" if ch in "*?[" else ch for ch in text) + "*"


def _like(text: str) -> str:
    # Backslash is PostgreSQL's default LIKE escape: no ESCAPE clause, a plain pattern
    # pg_trgm reads as it is.
    quoted = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{quoted}%"


# --- what Alembic's comparison of models and database leaves alone ----------------------------


def is_search_structure(name: str | None, type_: str, _parents: Any = None) -> bool:
    """The FTS5 table (and its shadow tables) and the trigram index: made by migration 0005
    with SQL the models cannot express."""
    if name is None:
        return False
    if type_ == "table":
        return name == SQLITE_TABLE or name.startswith(SQLITE_TABLE + "_")
    return type_ == "index" and name == POSTGRES_INDEX


def include_name(name: str | None, type_: str, parents: Any) -> bool:
    """Alembic's `include_name` hook: everything but the search structures."""
    return not is_search_structure(name, type_, parents)
