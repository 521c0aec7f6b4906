"""Every built-in adapter through the conformance suite (adapters/conformance.py), one test
per adapter and check, so a failure names both; and no built-in left without a kit."""

from __future__ import annotations

import dataclasses
import re

import pytest

from leadline.adapters.base import Adapter
from leadline.adapters.conformance import CHECKS, Check, ConformanceError, start_only_looks
from leadline.adapters.messenger import MessengerAdapter
from leadline.adapters.registry import discover
from leadline.adapters.telegram import TelegramAdapter
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


class SubscribingAtStart(MessengerAdapter):
    """A Messenger adapter that re-subscribes its Page in `start`, as a check must not."""

    async def start(self) -> None:
        await super().start()
        await self.subscribe()


class SettingTheWebhookAtStart(TelegramAdapter):
    """Telegram as it was: `start` set the webhook, so a check overwrote it."""

    async def start(self) -> None:
        await super().start()
        await self.set_webhook(self.webhook_url())


@pytest.mark.parametrize(
    ("name", "adapter", "call"),
    [
        ("messenger", SubscribingAtStart, "POST .../subscribed_apps"),
        ("telegram", SettingTheWebhookAtStart, "POST .../setWebhook"),
    ],
)
async def test_a_start_that_changes_the_provider_fails_start_only_looks(
    name: str, adapter: type[Adapter], call: str
) -> None:
    kit = dataclasses.replace(KITS[name](), adapter=adapter)
    with pytest.raises(ConformanceError, match=re.escape(call)):
        await start_only_looks(kit)
