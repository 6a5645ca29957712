"""Registries for explainers, metrics, datasets, models, zoo entries and baselines.

Every registry key is unique (a duplicate raises), lookups of unknown keys raise
``KeyError`` with close matches, and ``list_*`` filter by glob. Plugins, built-in wings
included, register through the entry-point group ``xaibench.plugins``; they are imported
lazily on the first lookup, so the core never imports a wing.
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
import os
import re
import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from .errors import UnknownNameError
from .settings import Settings, settings_from_signature
from .util import close_matches

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
    """A registered object with its metadata and its settings model."""

    name: str
    obj: T
    info: Any = None
    module: str = ""
    settings: Any = None  # type[xaibench.settings.Settings] | None


class Registry(Generic[T]):
    """A named, glob-searchable registry that owns registration, lookup, suggestions and listing.

    Args:
        what: what it holds, singular (``"explainer"``): used in messages and ``list_<what>s``.
        base: registered classes must subclass it (functions are accepted when None or when
            ``functions=True``).
        key_pattern: a regular expression every key must match; ``key_form`` says it in words.
        check_meta: ``check_meta(name, **meta)`` validates the metadata as soon as
            :meth:`register` is called (before the decorated object exists).
        make_info: ``make_info(name, obj, **meta) -> info`` builds (and checks) the metadata
            given to :meth:`register`; without it the metadata dict is stored as is.
        settings: derive each entry's settings model at registration (classes: their nested
            ``Settings``; functions: their typed keyword-only parameters).
        functions: whether plain functions (not classes) may be registered.
        list_hint: how a user lists the entries (for the unknown-name message).

    Example:
        >>> WIDGETS = Registry("widget")
        >>> @WIDGETS.register("blue")
        ... def blue(*, shade: float = 0.5): ...
    """

    def __init__(self, what: str, *, base: type | None = None, key_pattern: str | None = None,
                 key_form: str = "", check_meta: Callable[..., None] | None = None,
                 make_info: Callable[..., Any] | None = None, settings: bool = True,
                 functions: bool = True, settings_skip: tuple[str, ...] = (), list_hint: str = "") -> None:
        self.what = what
        self.base = base
        self.key_pattern = re.compile(key_pattern) if key_pattern else None
        self.key_form = key_form or (key_pattern or "")
        self.check_meta = check_meta
        self.make_info = make_info
        self.derive_settings = settings
        self.functions = functions
        self.settings_skip = settings_skip
        self.list_hint = list_hint or f"`xaibench list {what}s`"
        self._entries: dict[str, Entry[T]] = {}

    # ------------------------------------------------------------------ registration
    def register(self, name: str, /, **meta: Any) -> Callable[[T], T]:
        """Decorator registering a class or function under ``name`` with metadata ``meta``.

        Raises:
            ValueError: malformed or duplicate key, bad metadata.
            TypeError: the object is not of the registry's base class.
        """
        self._check_key(name)
        if self.check_meta is not None:
            self.check_meta(name, **meta)

        def deco(obj: T) -> T:
            if isinstance(obj, type):
                if self.base is not None and not issubclass(obj, self.base):
                    raise TypeError(f"register {self.what} {name!r}: expected a subclass of "
                                    f"{self.base.__name__}, got {obj!r}")
            elif not self.functions or not callable(obj):
                raise TypeError(f"register {self.what} {name!r}: expected a "
                                f"{self.base.__name__ if self.base else 'class'} subclass, got {obj!r}")
            info = self.make_info(name, obj, **meta) if self.make_info else (meta or None)
            return self.add(name, obj, info)

        return deco

    def _check_key(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"register {self.what}: name must be a non-empty str, got {name!r}")
        if self.key_pattern is not None and not self.key_pattern.fullmatch(name):
            raise ValueError(f"register {self.what}: key must be {self.key_form}, got {name!r}")

    def _settings_of(self, name: str, obj: Any) -> Any:
        if not self.derive_settings or not (isinstance(obj, type) or inspect.isroutine(obj)):
            return None
        if isinstance(obj, type):
            model = getattr(obj, "Settings", None)
            if not (isinstance(model, type) and issubclass(model, Settings)):
                raise TypeError(f"register {self.what} {name!r}: {obj.__name__}.Settings must subclass "
                                "xaibench.Settings")
            return model
        return settings_from_signature(obj, name=name, skip=self.settings_skip)

    def add(self, name: str, obj: T, info: Any = None) -> T:
        """Register ``obj`` under ``name`` (what :meth:`register` calls).

        Raises:
            ValueError: the name is taken (the message names the module that took it).
        """
        self._check_key(name)
        if name in self._entries:
            prev = self._entries[name]
            raise ValueError(
                f"register {self.what}: {name!r} is already registered (by {prev.module or '?'}); "
                "pick another name or unregister the old one first"
            )
        module = getattr(obj, "__module__", "") or ""
        self._entries[name] = Entry(name, obj, info, module, self._settings_of(name, obj))
        return obj

    def remove(self, name: str) -> None:
        """Unregister ``name`` (used by tests and by plugins that replace an entry)."""
        self._entries.pop(name, None)

    # ------------------------------------------------------------------ lookup
    def entry(self, name: str) -> Entry[T]:
        """The entry of ``name``; plugins are loaded on the first miss.

        Raises:
            UnknownNameError: (a ``KeyError``) with close matches.
        """
        if name not in self._entries:
            load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self._unknown(name)) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def info(self, name: str) -> Any:
        return self.entry(name).info

    def settings(self, name: str) -> Any:
        """The settings model (a :class:`xaibench.Settings` subclass) of ``name``."""
        return self.entry(name).settings

    def names(self, pattern: str | None = None, exclude: str | Sequence[str] | None = None) -> list[str]:
        """Registered keys, sorted, filtered by a glob and minus those matching ``exclude`` globs."""
        load_plugins()
        keys = sorted(self._entries)
        if pattern:
            keys = [k for k in keys if fnmatch.fnmatchcase(k, pattern)]
        if exclude:
            excl = [exclude] if isinstance(exclude, str) else list(exclude)
            keys = [k for k in keys if not any(fnmatch.fnmatchcase(k, e) for e in excl)]
        return keys

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _unknown(self, name: str) -> str:
        keys = sorted(self._entries)
        close = close_matches(name, keys)
        if not close and isinstance(name, str) and "." in name:
            fam = name.split(".", 1)[0] + ".*"
            close = [k for k in keys if fnmatch.fnmatchcase(k, fam)][:8]
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        avail = f" ({len(keys)} registered; list them with {self.list_hint})"
        return f"unknown {self.what} {name!r}{hint}{avail}"


#: Registries of the core. Explainers, metrics and datasets get their base class and metadata
#: builder from the modules that define them (xaibench.explainers, .metric, .data).
FAMILY_KEY = r"_?[a-z][a-z0-9_]*\.[a-z0-9_]+"
