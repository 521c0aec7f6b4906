"""A small deterministic fuzzer for the providers' payload parsers."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

Junk = Callable[[random.Random], Any]


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


def mutate(payload: Any, rng: random.Random, junk: Sequence[Junk], graft: Callable[[], Any]) -> Any:
    """Replace, delete, wrap or swap one randomly chosen nested value; `graft` gives a
    piece of another valid payload to put in its place."""
    candidates = [p for p in paths(payload) if p]
    if not candidates:
        return payload
    where = rng.choice(candidates)
    parent = payload
    for step in where[:-1]:
        parent = parent[step]
    key = where[-1]
    action = rng.random()
    if action < 0.2 and isinstance(parent, dict):
        del parent[key]
    elif action < 0.3:
        parent[key] = [parent[key]]
    elif action < 0.4 and isinstance(parent[key], dict):
        parent[key] = list(parent[key].values())
    elif action < 0.5:
        parent[key] = graft()
    else:
        parent[key] = rng.choice(junk)(rng)
    return payload
