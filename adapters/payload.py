"""Typed reads of an untrusted, decoded JSON payload: shared by the providers' parsers.

Webhook bodies are the provider's to shape and anybody's to forge. These
helpers turn a value of unknown type into the type a parser wants, or None,
and never raise; a parser then decides whether the item is skipped or kept raw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from leadline.adapters.base import MalformedPayload


def decode_json(body: bytes) -> Any:
    """The decoded body; MalformedPayload for anything that is not JSON bytes."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise MalformedPayload("body is not bytes")
    try:
        return json.loads(bytes(body))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise MalformedPayload("body is not valid JSON") from exc
    except RecursionError as exc:  # Python's parser stops near 1,000 levels
        raise MalformedPayload("body is nested too deeply") from exc


def obj(value: Any) -> Mapping[str, Any] | None:
    # type() first: decoded JSON holds plain dicts, and the ABC check is slow.
    return value if type(value) is dict or isinstance(value, Mapping) else None


# The longest id a parser keeps. Storage holds 255 characters; the runtime keeps a
# longer id under its sha256 digest (runtime/sanitize.py), so only garbage is refused.
MAX_ID_LENGTH = 4096


def ident(value: Any) -> str | None:
    """An id: a non-empty printable string (or an int) of at most MAX_ID_LENGTH chars.

    One bad id must not make the runtime refuse a whole batch that a provider then
    retries for days: an unfit id is None, and the parser skips or keeps the item raw.
    An id over 255 characters is no unfit id: it is stored under its digest.
    """
    if type(value) is int:  # never a bool; providers send strings, but a number is plain
        if value.bit_length() > 3 * MAX_ID_LENGTH:  # str() refuses past 4,300 digits
            return None
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        return None
    # isprintable() also refuses NUL and lone surrogates, which storage cannot hold.
    return value if value.isprintable() else None


def text(value: Any) -> str | None:
    """A non-empty string."""
    return value if isinstance(value, str) and value else None


def finite(value: Any) -> float | None:
    """A finite number as float; None for bools, NaN, infinities and huge ints."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def utc_from_unix(seconds: float) -> datetime | None:
    """Unix seconds as an aware UTC datetime; None when out of the platform's range."""
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def put(target: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` only when there is a value: metadata keeps no empty keys."""
    if value is not None:
        target[key] = value
