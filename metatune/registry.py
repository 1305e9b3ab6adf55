"""Name -> class maps used only at the YAML/CLI edge; library code passes instances."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from metatune.errors import ConfigError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A plain name -> class dict with a decorator to register and a lookup that names
    the valid choices when it fails."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._items and self._items[name] is not cls:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: object, *, field: str = "name") -> type[T]:
        if not isinstance(name, str) or name not in self._items:
            raise ConfigError(field, f"unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
