"""Registries for explainers, metrics, datasets, models, zoo entries and baselines.

Every registry key is unique (a duplicate raises), lookups of unknown keys raise
``KeyError`` with close matches, and ``list_*`` filter by glob. Plugins, built-in wings
included, register through the entry-point group ``xaibench.plugins``; they are imported
lazily on the first lookup, so the core never imports a wing.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
ENTRY_POINT_GROUP = "xaibench.plugins"
_DISABLE_ENV = "XAIBENCH_DISABLE_PLUGINS"

_plugins_loaded = False
_plugins_loading = False
_plugin_lock = threading.RLock()
_loaded_plugins: dict[str, str] = {}


def load_plugins(force: bool = False) -> dict[str, str]:
    """Import every module named in the ``xaibench.plugins`` entry-point group.

    Plugins named in the environment variable ``XAIBENCH_DISABLE_PLUGINS``
    (comma-separated entry-point names) are skipped.

    Returns:
        entry-point name -> module path of the plugins loaded so far.

    Raises:
        ImportError: a plugin failed to import (its name and the cause are in the message;
            disable it with ``XAIBENCH_DISABLE_PLUGINS=<name>``).
    """
    global _plugins_loaded, _plugins_loading
    with _plugin_lock:
        if (_plugins_loaded and not force) or _plugins_loading:
            return dict(_loaded_plugins)
        _plugins_loading = True
        try:
            disabled = {s.strip() for s in os.environ.get(_DISABLE_ENV, "").split(",") if s.strip()}
            eps = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
            for ep in eps:
                if ep.name in disabled or ep.name in _loaded_plugins:
                    continue
                try:
                    obj = ep.load()
                except Exception as exc:  # re-raised with the plugin's name
                    raise ImportError(
                        f"xaibench plugin {ep.name!r} ({ep.value}) failed to load: "
                        f"{type(exc).__name__}: {exc}. Fix or uninstall it, or skip it with "
                        f"{_DISABLE_ENV}={ep.name}"
                    ) from exc
                if callable(obj) and not isinstance(obj, type(importlib)):
                    obj()  # an entry point may name a register() function
                _loaded_plugins[ep.name] = ep.value
            _plugins_loaded = True
        finally:
            _plugins_loading = False
        return dict(_loaded_plugins)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered object with its metadata."""

    name: str
    obj: T
    info: Any = None
    module: str = ""


@dataclass
class Registry(Generic[T]):
    """A named, glob-searchable registry whose keys are unique."""

    what: str
    _entries: dict[str, Entry[T]] = field(default_factory=dict)

    def add(self, name: str, obj: T, info: Any = None) -> T:
        if not isinstance(name, str) or not name:
            raise ValueError(f"register {self.what}: name must be a non-empty str, got {name!r}")
        if name in self._entries:
            prev = self._entries[name]
            raise ValueError(
                f"register {self.what}: {name!r} is already registered (by {prev.module or '?'}); "
                "pick another name or unregister the old one first"
            )
        module = getattr(obj, "__module__", "") or ""
        self._entries[name] = Entry(name, obj, info, module)
        return obj

    def remove(self, name: str) -> None:
        """Unregister ``name`` (used by tests and by plugins that replace an entry)."""
        self._entries.pop(name, None)

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self._unknown(name)) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def info(self, name: str) -> Any:
        return self.entry(name).info

    def names(self, pattern: str | None = None) -> list[str]:
        load_plugins()
        keys = sorted(self._entries)
        if pattern:
            keys = [k for k in keys if fnmatch.fnmatchcase(k, pattern)]
        return keys

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _unknown(self, name: str) -> str:
        keys = sorted(self._entries)
        close = difflib.get_close_matches(name, keys, n=5, cutoff=0.5)
        if not close and isinstance(name, str) and "." in name:
            fam = name.split(".", 1)[0] + ".*"
            close = [k for k in keys if fnmatch.fnmatchcase(k, fam)][:8]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        avail = f" ({len(keys)} registered; list them with xaibench.list_{self.what}s())"
        return f"unknown {self.what} {name!r}{hint}{avail}"


EXPLAINERS: Registry[Any] = Registry("explainer")
METRICS: Registry[Any] = Registry("metric")
DATASETS: Registry[Any] = Registry("dataset")
MODELS: Registry[Any] = Registry("model")
ZOO: Registry[Any] = Registry("zoo_model")
BASELINES: Registry[Any] = Registry("baseline")
FIXTURES: Registry[Any] = Registry("fixture")


def _decorator(reg: Registry[Any], name: str, info: Any = None) -> Callable[[T], T]:
    def deco(obj: T) -> T:
        return reg.add(name, obj, info)
    return deco
