"""Name -> class maps used only at the YAML/CLI edge; library code passes instances.

A registry holds what metatune's own modules register on import, plus what installed plugins
declare as entry points in its group (``metatune.learners``, ``metatune.tasks``). Plugins are
imported lazily -- the first time a name that is not already registered is looked up, or the
names are listed -- so a broken plugin never costs a run that does not need it.
"""

from __future__ import annotations

import importlib.metadata
import types
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from metatune.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A plain name -> class dict with a decorator to register and a lookup that names
    the valid choices when it fails.

    ``entry_point_group``: the entry-point group plugins register into. An entry point's name
    is the registered name; its value is either the class (``anil = my_pkg.anil:ANIL``) or a
    module whose import registers that name (``anil = my_pkg.anil``).
    """

    def __init__(self, kind: str, *, base: type | None = None, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.base = base
        self.entry_point_group = entry_point_group
        self._items: dict[str, type[T]] = {}
        self._plugins_loaded = entry_point_group is None
        self._plugin_error: str | None = None

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: object, *, field: str = "name") -> type[T]:
        if isinstance(name, str) and name in self._items:
            return self._items[name]
        self.load_plugins(field=field)
        if not isinstance(name, str) or name not in self._items:
            raise ConfigError(field, f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self, *, field: str = "name") -> list[str]:
        self.load_plugins(field=field)
        return sorted(self._items)

    def registered(self) -> dict[str, type[T]]:
        """What is registered so far, without importing any plugin."""
        return dict(self._items)

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    # ----------------------------------------------------------------- plugins
    def load_plugins(self, *, field: str = "name") -> None:
        """Import every entry point of this registry's group, once. A plugin that fails to
        import (or registers nothing under its name) is a ConfigError naming the entry point,
        raised again on every later lookup that needs plugins."""
        if not self._plugins_loaded:
            self._plugins_loaded = True
            for entry in _entry_points(self.entry_point_group or ""):
                problem = self._load(entry)
                if problem is not None:
                    self._plugin_error = (
                        f"{self.kind} plugin entry point '{entry.name} = {entry.value}' "
                        f"(group {self.entry_point_group}) {problem}"
                    )
                    break
        if self._plugin_error is not None:
            raise ConfigError(field, self._plugin_error)

    def _load(self, entry: importlib.metadata.EntryPoint) -> str | None:
        """Import one entry point; what went wrong, or None."""
        try:
            obj = entry.load()
        except Exception as exc:  # any error of a third-party import is reported the same way
            detail = (str(exc).strip().splitlines() or [""])[0][:200]
            return f"failed to import: {type(exc).__name__}: {detail}"
        if isinstance(obj, type):
            if self.base is not None and not issubclass(obj, self.base):
                return f"is not a {self.base.__name__} subclass"
            if obj not in self._items.values():
                try:
                    self.register(entry.name)(obj)
                except ValueError as exc:
                    return f"clashes: {exc}"
        elif not isinstance(obj, types.ModuleType):
            return f"is neither a class nor a module ({type(obj).__name__})"
        if entry.name not in self._items:
            return f"registered no {self.kind} named {entry.name!r}"
        return None


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The group's entry points, once each (a folder on both sys.path and PYTHONPATH lists its
    distributions twice), in name order so loading is deterministic."""
    unique = {(e.name, e.value): e for e in importlib.metadata.entry_points(group=group)}
    return [unique[k] for k in sorted(unique)]
