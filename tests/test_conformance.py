"""Every built-in adapter through the conformance suite (adapters/conformance.py), one test
per adapter and check, so a failure names both; and no built-in left without a kit."""

from __future__ import annotations

import pytest

from leadline.adapters.base import Adapter
from leadline.adapters.conformance import CHECKS, Check
from leadline.adapters.registry import discover
from tests.conformance_kits import KITS, WITHOUT_KIT


@pytest.mark.parametrize(
    ("name", "check"),
    [(name, check) for name in KITS for check in CHECKS],
    ids=[f"{name}-{check.__name__}" for name in KITS for check in CHECKS],
)
async def test_builtin_adapter_passes_check(name: str, check: Check) -> None:
    await check(KITS[name]())


def builtin_adapters() -> dict[str, type[Adapter]]:
    found = discover(use_entry_points=False)  # no plugins folder: not tests/fakes' `signed`
    return {e.name: e.adapter for e in found.entries.values() if e.source == "builtin"}


def test_every_builtin_adapter_has_a_kit() -> None:
    builtins = builtin_adapters()
    missing = sorted(set(builtins) - set(KITS) - set(WITHOUT_KIT))
    assert not missing, f"no conformance kit in tests/conformance_kits.py for {missing}"


def test_adapters_left_without_a_kit_take_no_webhooks() -> None:
    builtins = builtin_adapters()
    for name in WITHOUT_KIT:
        adapter = builtins.get(name)
        assert adapter is not None, f"{name} is no built-in adapter any more: drop it"
        assert not adapter.capabilities.webhooks, f"{name} takes webhooks: give it a kit"
        assert adapter.verify is Adapter.verify, f"{name} verifies requests: give it a kit"
        assert adapter.parse is Adapter.parse, f"{name} parses deliveries: give it a kit"


def test_every_kit_is_for_the_adapter_of_its_name() -> None:
    for name, kit in KITS.items():
        assert kit().adapter.name == name
