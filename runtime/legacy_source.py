"""A legacy bot's database, read-only: its `telegram_messages` and `leads` tables.

Given as a URL (`sqlite:///path/legacy.db`, `postgresql://user@host/db`, or the
same with an async driver); opened read-only (SQLite) or outside any transaction
(PostgreSQL), never written. Its rows are read in legacy-id order, a batch at a
time, and each is checked and keyed here (`check_row`), forgivingly: what cannot
be imported is a `Skip` with its reason, never an error.

A message with a Telegram message id is keyed as the live Telegram adapter keys a
private chat's message, `"{chat id}:{message id}"` with the chat id being the user
id, so history that Leadline also received live is the same row; one without is
keyed `"legacy:{source digest}:{id}"`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from leadline.config.vocabulary import Direction
from leadline.runtime.sanitize import MAX_ID, clean_text
from leadline.storage.engine import safe_url, url_secrets
from leadline.storage.importing import LEGACY, HistoryRow, LeadDetails, LeadKey

TABLE = "telegram_messages"
LEADS_TABLE = "leads"
REQUIRED = ("id", "telegram_user_id", "direction", "created_at")
OPTIONAL = ("lead_id", "telegram_username", "telegram_message_id", "message_text")
AI_COLUMNS = ("ai_response_used", "ai_used")  # either name; the first one found
LEAD_COLUMNS = ("name", "phone", "tags")
DIRECTIONS = {
    **dict.fromkeys(("in", "incoming", "inbound", "user"), Direction.IN),
    **dict.fromkeys(("out", "outgoing", "outbound", "bot", "assistant"), Direction.OUT),
}
TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
MAX_PHONE = 64  # leads.phone
CHUNK = 400  # values per IN list
CONNECT_SECONDS = 10
_NUMBER = re.compile(r"[+-]?[0-9]{1,20}")


class LegacyError(Exception):
    """The legacy database cannot be read as asked (a bad URL, no such table, …)."""


# --- the URL -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LegacyUrl:
    url: sa.URL  # with the async driver this process has (aiosqlite or asyncpg)
    label: str  # as given, for people's eyes: the password hidden

    @property
    def source(self) -> str:
        return fingerprint(self.url)


def legacy_url(raw: str) -> LegacyUrl:
    """The legacy database's URL: SQLite or PostgreSQL, with any driver named."""
    try:
        given = sa.make_url(raw.strip())
    except sa.exc.ArgumentError:
        raise LegacyError(
            "--from is not a database URL (sqlite:///path or postgresql://…)"
        ) from None
    return LegacyUrl(_async_url(given), safe_url(given))


def _async_url(url: sa.URL) -> sa.URL:
    backend = url.get_backend_name()
    if backend == "postgres":  # what Heroku and others print
        backend = "postgresql"
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise LegacyError("--from: a SQLite URL needs a file path (sqlite:///path/legacy.db)")
        return url.set(drivername="sqlite+aiosqlite", query={})
    if backend == "postgresql":
        return url.set(drivername="postgresql+asyncpg")
    raise LegacyError(f"--from must be a sqlite:// or postgresql:// URL, not {backend}://")


def fingerprint(url: sa.URL, table: str = TABLE) -> str:
    """The legacy source's name in `legacy_imports` and in metadata: the table and a digest
    of where it lives (backend, user, host, port, database; never the password)."""
    backend = url.get_backend_name()
    database = url.database or ""
    if backend == "sqlite":
        database = os.path.realpath(database)
    port = url.port or (5432 if backend == "postgresql" else "")
    where = f"{backend}|{url.username or ''}|{(url.host or '').lower()}|{port}|{database}"
    digest = hashlib.sha256(f"{where}|{table}".encode()).hexdigest()[:16]
    return f"{table}@{digest}"


# --- the database ------------------------------------------------------------------


@dataclass
class LegacyDatabase:
    """An open legacy database whose message table was found with the columns it needs."""

    where: LegacyUrl
    engine: AsyncEngine
    conn: AsyncConnection
    columns: dict[str, str]  # our name → the table's own spelling
    ai_column: str | None
    lead_columns: dict[str, str] | None  # None: no usable legacy leads table
    lead_ids_are_numbers: bool = True

    @classmethod
    async def open(cls, where: LegacyUrl) -> LegacyDatabase:
        url, label = where.url, where.label
        engine = _engine(url, label)
        try:
            conn = await engine.connect()
        except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
            await engine.dispose()
            raise LegacyError(
                f"cannot open the legacy database {label}: {_why(exc, url)}"
            ) from None
        try:
            tables = await conn.run_sync(_describe)
        except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
            await conn.close()
            await engine.dispose()
            raise LegacyError(
                f"cannot read the legacy database {label}: {_why(exc, url)}"
            ) from None
        messages, leads, numbered = tables
        problem = None
        if messages is None:
            problem = f"no table {TABLE} in the legacy database {label}"
        elif missing := [c for c in REQUIRED if c not in messages]:
            problem = f"the legacy table {TABLE} has no column {', '.join(missing)}"
        if problem is not None or messages is None:
            await conn.close()
            await engine.dispose()
            raise LegacyError(problem)
        ai_column = next((c for c in AI_COLUMNS if c in messages), None)
        lead_columns = leads if leads is not None and "id" in leads else None
        return cls(where, engine, conn, messages, ai_column, lead_columns, numbered)

    async def close(self) -> None:
        await self.conn.close()
        await self.engine.dispose()

    def _messages(self) -> sa.TableClause:
        return sa.table(TABLE, *(sa.column(name) for name in self.columns.values()))

    async def count_after(self, after: int) -> int:
        table = self._messages()
        id_column = table.c[self.columns["id"]]
        query = sa.select(sa.func.count()).select_from(table).where(id_column > after)
        return int((await self.conn.execute(query)).scalar_one())

    async def rows_after(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` rows with an id above `after`, in id order, by our column names."""
        table = self._messages()
        wanted = [*REQUIRED, *OPTIONAL]
        picked = [
            table.c[self.columns[name]].label(name) if name in self.columns else _none(name)
            for name in wanted
        ]
        ai = table.c[self.ai_column].label("ai") if self.ai_column else _none("ai")
        id_column = table.c[self.columns["id"]]
        query = sa.select(*picked, ai).where(id_column > after).order_by(id_column).limit(limit)
        return [dict(row._mapping) for row in await self.conn.execute(query)]

    async def lead_details(self, keys: Sequence[LeadKey]) -> dict[LeadKey, LeadDetails]:
        """The legacy `leads` rows of these legacy lead ids (none without that table)."""
        if self.lead_columns is None or not keys:
            return {}
        columns = self.lead_columns
        table = sa.table(LEADS_TABLE, *(sa.column(name) for name in columns.values()))
        picked = [
            table.c[columns[name]].label(name) if name in columns else _none(name)
            for name in ("id", *LEAD_COLUMNS)
        ]
        # As the column holds them: PostgreSQL compares no text to a number.
        if self.lead_ids_are_numbers:
            keys = [key for key in keys if isinstance(key, int)]
        else:
            keys = [str(key) for key in keys]
        found: dict[LeadKey, LeadDetails] = {}
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            query = sa.select(*picked).where(table.c[columns["id"]].in_(chunk))
            for row in await self.conn.execute(query):
                key = lead_key(row.id)
                if key is not None:
                    found[key] = LeadDetails(
                        name=_text(row.name), phone=_phone(row.phone), tags=parse_tags(row.tags)
                    )
        return found


def _engine(url: sa.URL, label: str) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "").expanduser()
        if not path.is_file():
            raise LegacyError(f"cannot open the legacy database {label}: no such file")
        # Read-only: nothing of this database is ever written, its journal mode included.
        readonly = url.set(
            database=f"file:{quote(str(path.resolve()))}?mode=ro", query={"uri": "true"}
        )
        return create_async_engine(readonly, isolation_level="AUTOCOMMIT")
    return create_async_engine(
        url, isolation_level="AUTOCOMMIT", connect_args={"timeout": CONNECT_SECONDS}
    )


Columns = dict[str, str]


def _describe(sync: sa.Connection) -> tuple[Columns | None, Columns | None, bool]:
    """The columns of the message table and of the leads table, by lower-case name, and
    whether the legacy lead ids are numbers."""
    inspector = sa.inspect(sync)
    names = set(inspector.get_table_names())
    found: dict[str, list[Any]] = {
        table: inspector.get_columns(table) for table in (TABLE, LEADS_TABLE) if table in names
    }

    def columns(table: str) -> Columns | None:
        if table not in found:
            return None
        return {column["name"].lower(): column["name"] for column in found[table]}

    lead_id = [c for c in found.get(LEADS_TABLE, []) if c["name"].lower() == "id"]
    numbered = not lead_id or isinstance(lead_id[0]["type"], sa.Integer)
    return columns(TABLE), columns(LEADS_TABLE), numbered


def _none(name: str) -> Any:
    return sa.null().label(name)


def _why(exc: BaseException, url: sa.URL) -> str:
    """A driver's reason, on one line, without the URL's password."""
    reason = getattr(exc, "orig", None) or exc
    text = " ".join(str(reason).split()) or reason.__class__.__name__
    for secret in url_secrets(url):
        text = text.replace(secret, "***")
    return text


# --- one row -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Skip:
    """A legacy row that cannot be imported: its id, why (`kind`, then the detail)."""

    legacy_id: int
    kind: str
    detail: str


def check_row(raw: Mapping[str, Any], legacy_id: int, source: str) -> HistoryRow | Skip:
    """A legacy row as a history row, or why it cannot be one."""
    user = _number(raw.get("telegram_user_id"))
    if user is None:
        value = raw.get("telegram_user_id")
        if value is None or (isinstance(value, str) and not value.strip()):
            return Skip(legacy_id, "no telegram_user_id", "no telegram_user_id")
        return Skip(
            legacy_id, "bad telegram_user_id", f"telegram_user_id {_show(value)} is no number"
        )
    direction = DIRECTIONS.get(str(raw.get("direction") or "").strip().lower())
    if direction is None:
        return Skip(
            legacy_id, "unknown direction", f"unknown direction {_show(raw.get('direction'))}"
        )
    created_at = parse_time(raw.get("created_at"))
    if created_at is None:
        return Skip(legacy_id, "bad created_at", f"bad created_at {_show(raw.get('created_at'))}")
    metadata: dict[str, Any] = {"source": source, "id": legacy_id}
    message_id = _number(raw.get("telegram_message_id"))
    if message_id is not None:
        key = f"{user}:{message_id}"  # the live adapter's key of a private chat's message
    else:
        # Named by its source too: two legacy databases may both hold an id 5.
        key = f"legacy:{source.rsplit('@', 1)[-1]}:{legacy_id}"
        if (kept := _text(raw.get("telegram_message_id"))) is not None:
            metadata["telegram_message_id"] = kept
    username = (_text(raw.get("telegram_username")) or "").lstrip("@")[:MAX_ID]
    return HistoryRow(
        legacy_id=legacy_id,
        channel_user_id=user,
        channel_username=username or None,
        legacy_lead_id=lead_key(raw.get("lead_id")),
        channel_message_id=key,
        message_text=_text(raw.get("message_text"), strip=False),
        direction=direction,
        ai_response_used=parse_flag(raw.get("ai")),
        created_at=created_at,
        provider_metadata={LEGACY: metadata},
    )


def legacy_id_of(raw: Mapping[str, Any]) -> int:
    """A row's legacy id: the order of the import and its progress, so it must be a number."""
    value = _number(raw.get("id"))
    if value is None:
        raise LegacyError(f"the legacy table {TABLE} has a non-integer id {_show(raw.get('id'))}")
    return int(value)


def parse_time(value: Any) -> datetime | None:
    """A datetime or an ISO 8601 string; naive means UTC."""
    if isinstance(value, datetime):
        found = value
    elif isinstance(value, date):
        found = datetime(value.year, value.month, value.day)
    elif isinstance(value, str) and value.strip():
        try:
            found = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    else:
        return None
    return found.replace(tzinfo=UTC) if found.tzinfo is None else found.astimezone(UTC)


def parse_flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in TRUE
    return False


def parse_tags(value: Any) -> tuple[str, ...]:
    """Tags as a JSON list (or a PostgreSQL array), else a comma-separated string."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("[", '"')):
            try:
                value = json.loads(text)
            except ValueError:
                value = text.strip("[]")
        if isinstance(value, str):
            value = value.split(",")
    if not isinstance(value, list | tuple):
        value = [value]
    tags = (_text(tag) for tag in value if tag is not None and not isinstance(tag, dict | list))
    return tuple(dict.fromkeys(tag.strip("\"' ") for tag in tags if tag and tag.strip("\"' ")))


def lead_key(value: Any) -> LeadKey | None:
    """A legacy lead id: a number where it is one, else its text; None for none."""
    if value is None or isinstance(value, bool):
        return None
    number = _number(value)
    if number is not None:
        return int(number)
    text = _text(value)
    return text or None


def _number(value: Any) -> str | None:
    """An integer id as Telegram's are written (`"123"`, `"-100123"`); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return str(int(value.strip()))
    return None


def _text(value: Any, strip: bool = True) -> str | None:
    """Text that both databases can hold (NULs repaired); None for none or blank."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = clean_text(value if isinstance(value, str) else str(value), "legacy value")
    if text is None or not text.strip():
        return None
    return text.strip() if strip else text


def _phone(value: Any) -> str | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = _text(value)
    return text[:MAX_PHONE] if text else None


def _show(value: Any) -> str:
    """A bad value in a report line: short, on one line."""
    if value is None:
        return "(none)"
    text = repr(value) if isinstance(value, str) else repr(str(value))
    return text if len(text) <= 40 else text[:37] + "...'"
