"""Splitting long texts for providers' length limits (adapters/text.py)."""

from __future__ import annotations

import random

import pytest

from leadline.adapters.text import fits, split_text

WORDS = ["casa", "departamento", "año", "über", "🏠", "m²", "precio", "x" * 30]


def random_text(rng: random.Random) -> str:
    separators = [" ", " ", " ", "\n", "\n\n", "  ", "\t"]
    return "".join(rng.choice(WORDS) + rng.choice(separators) for _ in range(rng.randint(0, 400)))


@pytest.mark.parametrize("seed", range(40))
def test_parts_fit_keep_every_word_in_order_and_are_never_blank(seed: int) -> None:
    rng = random.Random(seed)
    text = random_text(rng)
    max_chars = rng.choice([None, 40, 100, 4096])
    max_bytes = rng.choice([None, 50, 1000]) if max_chars is None or rng.random() < 0.5 else None
    parts = split_text(text, max_chars, max_bytes)
    assert all(fits(p, max_chars, max_bytes) and p.strip() == p and p for p in parts)
    # Words longer than a part are cut, so compare the letters, not the words.
    assert "".join("".join(parts).split()) == "".join(text.split())


def test_a_text_that_fits_is_one_part_unchanged_but_for_outer_blanks() -> None:
    assert split_text("  Hola, ¿cómo estás?\n") == ["Hola, ¿cómo estás?"]
    assert split_text("   ") == []


def test_cuts_prefer_paragraphs_then_lines_then_spaces() -> None:
    text = "First paragraph here.\n\nSecond one, a bit longer than the first."
    assert split_text(text, 40) == [
        "First paragraph here.",
        "Second one, a bit longer than the first.",
    ]
    assert split_text("one two three four", 9) == ["one two", "three", "four"]
    assert split_text("aaaa bbbb cccc", 9) == ["aaaa bbbb", "cccc"]  # a cut right at the limit


def test_a_word_longer_than_a_part_is_cut_inside() -> None:
    assert split_text("x" * 10, 4) == ["xxxx", "xxxx", "xx"]


def test_bytes_limits_never_cut_a_character_apart() -> None:
    parts = split_text("é" * 7 + " 🏠🏠", max_bytes=5)
    assert parts == ["éé", "éé", "éé", "é", "🏠", "🏠"]
    assert all(len(p.encode()) <= 5 for p in parts)


def test_limits_too_small_to_hold_a_character_are_refused() -> None:
    with pytest.raises(ValueError):
        split_text("text", 0)
    with pytest.raises(ValueError):
        split_text("text", max_bytes=3)
