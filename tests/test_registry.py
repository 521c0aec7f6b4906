"""Finding adapters: built-ins, a plugins folder, and the `leadline.adapters` entry point."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from leadline.adapters import registry as registry_module
from leadline.adapters.registry import discover
from tests.conftest import PLUGINS

PLUGIN_SOURCE = """
from leadline.adapters.base import Adapter

class EchoAdapter(Adapter):
    name = "{name}"
"""


def test_builtin_web_chat_is_found():
    found = discover(use_entry_points=False)
    entry = found.entries["webchat"]
    assert entry.source == "builtin"
    assert entry.origin.endswith("webchat/__init__.py")


def test_adapter_dropped_into_the_plugins_folder_is_found():
    found = discover(PLUGINS, use_entry_points=False)
    assert found.entries["signed"].source == "plugin"
    assert found.entries["signed"].origin == str(PLUGINS / "signed.py")
    assert "secret" in found.config_models()["signed"].model_fields


def test_plugin_that_fails_to_import_is_reported_and_the_rest_load(tmp_path: Path):
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    (tmp_path / "echo.py").write_text(PLUGIN_SOURCE.format(name="echo"))
    found = discover(tmp_path, use_entry_points=False)
    assert "echo" in found.entries
    assert any("broken.py" in p and "boom" in p for p in found.problems)


def test_plugin_cannot_replace_a_builtin_adapter(tmp_path: Path):
    (tmp_path / "fake_webchat.py").write_text(PLUGIN_SOURCE.format(name="webchat"))
    found = discover(tmp_path, use_entry_points=False)
    assert found.entries["webchat"].source == "builtin"
    assert any("ignored" in p and "fake_webchat.py" in p for p in found.problems)


def test_missing_plugins_folder_is_reported(tmp_path: Path):
    found = discover(tmp_path / "nope", use_entry_points=False)
    assert any("does not exist" in p for p in found.problems)


def test_entry_point_adapter_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package = tmp_path / "leadline_ep_demo.py"
    package.write_text(PLUGIN_SOURCE.format(name="epdemo"))
    monkeypatch.syspath_prepend(str(tmp_path))
    point = EntryPoint("epdemo", "leadline_ep_demo:EchoAdapter", "leadline.adapters")

    def fake_entry_points(group: str) -> list[EntryPoint]:
        return [point] if group == "leadline.adapters" else []

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    found = discover()
    assert found.entries["epdemo"].source == "entry point"
    sys.modules.pop("leadline_ep_demo", None)


def test_entry_point_that_is_not_an_adapter_is_reported(monkeypatch: pytest.MonkeyPatch):
    point = EntryPoint("bad", "json:dumps", "leadline.adapters")
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [point])
    found = discover()
    assert "bad" not in found.entries
    assert any("not an Adapter" in p for p in found.problems)
