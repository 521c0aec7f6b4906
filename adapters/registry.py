"""Finding adapters: built-ins, modules dropped into `adapters/` or a plugins folder,
and installed packages that declare the `leadline.adapters` entry point.

A module provides an adapter by defining a subclass of `Adapter` with a `name`.
The first adapter found for a name wins; later ones are reported, not loaded.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import pkgutil
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from leadline.adapters.base import Adapter
from leadline.config.providers import ProviderConfig

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "leadline.adapters"
# Modules of this package that are infrastructure, not providers.
_NOT_PROVIDERS = frozenset(
    {"base", "registry", "conformance", "meta", "payload", "text", "parts", "pacing"}
    | {"graph_messaging"}
)


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    name: str
    adapter: type[Adapter]
    source: str  # "builtin", "plugin" or "entry point"
    origin: str  # the module path or the distribution


@dataclass(frozen=True, slots=True)
class Registry:
    entries: Mapping[str, AdapterEntry]
    # Modules that failed to import or clashed with an earlier name, with why.
    problems: tuple[str, ...] = field(default=())

    def get(self, name: str) -> type[Adapter] | None:
        entry = self.entries.get(name)
        return entry.adapter if entry else None

    def config_models(self) -> dict[str, type[ProviderConfig]]:
        return {name: entry.adapter.config_model for name, entry in self.entries.items()}


def adapters_in(module: ModuleType) -> list[type[Adapter]]:
    """The adapter classes a module defines itself (not those it imports)."""
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Adapter)
        and obj is not Adapter
        and obj.name
        and obj.__module__ == module.__name__
    ]


def discover(plugins_dir: Path | None = None, *, use_entry_points: bool = True) -> Registry:
    entries: dict[str, AdapterEntry] = {}
    problems: list[str] = []

    def add(found: Iterable[tuple[type[Adapter], str, str]]) -> None:
        for adapter, source, origin in found:
            if adapter.name in entries:
                kept = entries[adapter.name]
                problems.append(
                    f"adapter {adapter.name!r} from {origin} ignored: "
                    f"already provided by {kept.origin}"
                )
                continue
            entries[adapter.name] = AdapterEntry(adapter.name, adapter, source, origin)

    add(_builtin(problems))
    if plugins_dir is not None:
        add(_plugins(plugins_dir, problems))
    if use_entry_points:
        add(_entry_points(problems))
    for problem in problems:
        log.warning("%s", problem)
    return Registry(entries, tuple(problems))


def _builtin(problems: list[str]) -> Iterator[tuple[type[Adapter], str, str]]:
    package = importlib.import_module("leadline.adapters")
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_PROVIDERS or info.name.startswith("_"):
            continue
        module_name = f"leadline.adapters.{info.name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            problems.append(f"adapter module {module_name} failed to import: {exc!r}")
            continue
        for adapter in adapters_in(module):
            yield adapter, "builtin", module.__file__ or module_name


def _plugins(folder: Path, problems: list[str]) -> Iterator[tuple[type[Adapter], str, str]]:
    if not folder.is_dir():
        problems.append(f"plugins folder {folder} does not exist")
        return
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        module_name = f"leadline_plugin_{path.stem}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            problems.append(f"plugin {path} failed to import: {exc!r}")
            continue
        for adapter in adapters_in(module):
            yield adapter, "plugin", str(path)


def _entry_points(problems: list[str]) -> Iterator[tuple[type[Adapter], str, str]]:
    for point in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"{point.dist.name if point.dist else '?'} ({point.value})"
        try:
            loaded = point.load()
        except Exception as exc:
            problems.append(f"entry point {point.name} of {origin} failed to load: {exc!r}")
            continue
        found = adapters_in(loaded) if isinstance(loaded, ModuleType) else [loaded]
        for adapter in found:
            if not (inspect.isclass(adapter) and issubclass(adapter, Adapter) and adapter.name):
                problems.append(f"entry point {point.name} of {origin} is not an Adapter")
                continue
            yield adapter, "entry point", origin
