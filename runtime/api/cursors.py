"""Opaque pagination cursors: where the last page ended, as base64 of a little JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any


class BadCursor(ValueError):
    pass


def encode(position: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode(cursor: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        found = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadCursor("not a cursor this API gave") from None
    if not isinstance(found, dict):
        raise BadCursor("not a cursor this API gave")
    return found


def lead_position(cursor: str | None) -> int:
    if cursor is None:
        return 0
    value = decode(cursor).get("id")
    if type(value) is not int or not 0 <= value < 2**63:
        raise BadCursor("not a cursor this API gave")
    return value


def message_position(cursor: str | None) -> tuple[datetime, int] | None:
    if cursor is None:
        return None
    found = decode(cursor)
    at, last = found.get("at"), found.get("id")
    try:
        when = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        when = None
    if when is None or when.tzinfo is None or type(last) is not int or not 0 <= last < 2**63:
        raise BadCursor("not a cursor this API gave")
    return when, last
