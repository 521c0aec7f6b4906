"""Splitting a long text into parts a provider accepts, on word boundaries.

Providers cap one message's text: WhatsApp at 4,096 characters, Instagram at
1,000 bytes of UTF-8. A longer text goes as several messages, cut where a reader
would expect: at a paragraph, else a line, else a space; a word longer than a
whole part is cut inside (never inside a character's UTF-8 bytes).
"""

from __future__ import annotations

# Where to cut, best first: the whitespace at a cut is dropped.
_BREAKS = ("\n\n", "\n", " ", "\t")


def fits(text: str, max_chars: int | None = None, max_bytes: int | None = None) -> bool:
    if max_chars is not None and len(text) > max_chars:
        return False
    return max_bytes is None or len(text.encode("utf-8")) <= max_bytes


def split_text(text: str, max_chars: int | None = None, max_bytes: int | None = None) -> list[str]:
    """`text` as parts that each fit both limits, in order; no part is empty or blank.

    Joined with single spaces they read as the text did, save the whitespace at each cut.
    """
    if (max_chars is not None and max_chars < 1) or (max_bytes is not None and max_bytes < 4):
        raise ValueError("a part must hold at least one character")
    parts: list[str] = []
    rest = text.strip()
    while rest and not fits(rest, max_chars, max_bytes):
        head = _longest_prefix(rest, max_chars, max_bytes)
        cut = _best_cut(rest, len(head))
        part, rest = (head[:cut], rest[cut:]) if cut else (head, rest[len(head) :])
        parts.append(part.rstrip())
        rest = rest.lstrip()
    if rest:
        parts.append(rest)
    return parts


def _longest_prefix(text: str, max_chars: int | None, max_bytes: int | None) -> str:
    head = text[:max_chars] if max_chars is not None else text
    if max_bytes is not None:
        # Bytes cut mid-character are dropped by the decoder: whole characters remain.
        head = head.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    return head


def _best_cut(text: str, end: int) -> int:
    """Where to cut `text` so the part before fits in `end` characters; 0 for nowhere.
    A paragraph or line break is preferred when it keeps at least half of the room, so
    parts stay near full; a separator may begin right at `end`."""
    found = [text.rfind(separator, 0, end + len(separator)) for separator in _BREAKS]
    for cut in found:
        if cut >= end // 2:
            return cut
    return max(0, *found)
