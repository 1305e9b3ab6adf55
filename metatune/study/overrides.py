"""``metatune run STUDY --set KEY=VALUE``: change a study file's settings from the command line.

Each item sets one dotted key (``training.iterations=2000``, ``trials=12``,
``search_space.params.inner_lr.high=0.5``) in the file's mapping before it is validated, so an
override goes through exactly the validation the file does; a wrong key or value is one line
naming the ``--set`` item. VALUE is read as YAML (``2000`` an integer, ``[5, 10]`` a list,
``null``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from metatune.errors import ConfigError

__all__ = ["Override", "apply_overrides", "parse_overrides"]


@dataclass(frozen=True)
class Override:
    item: str  # as given, for messages
    path: tuple[str, ...]
    value: Any

    @property
    def key(self) -> str:
        return ".".join(self.path)


def parse_overrides(items: Sequence[str]) -> list[Override]:
    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        path = tuple(key.strip().split("."))
        if not sep or not all(path):
            raise ConfigError(f"--set {item}", "expected KEY=VALUE, e.g. --set training.iterations=2000")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}", f"cannot read the value {raw!r} as YAML") from None
        out.append(Override(item, path, value))
    return out


def apply_overrides(data: Any, overrides: Sequence[Override]) -> Any:
    """``data`` (a study file's mapping) with each override set; the input is not changed."""
    if not overrides:
        return data
    if not isinstance(data, Mapping):
        return data  # the file itself is wrong: its own validation says so
    out = copy.deepcopy(dict(data))
    for o in overrides:
        node: dict[str, Any] = out
        for depth, part in enumerate(o.path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(o.path[: depth + 1])
                raise ConfigError(
                    f"--set {o.item}", f"'{where}' is {type(child).__name__} in the study file, not a mapping"
                )
            node = child
        node[o.path[-1]] = o.value
    return out


def blame(exc: ConfigError, overrides: Sequence[Override]) -> ConfigError:
    """The error re-attributed to the ``--set`` item whose key it is about, if any."""
    for o in reversed(overrides):
        # About the key itself, a part of it, or a setting it conflicts with ("expected <=
        # training.iterations" on eval_every after --set training.iterations=...).
        if (exc.field == o.key or exc.field.startswith(o.key + ".") or o.key.startswith(exc.field + ".")
                or o.key in exc.detail):
            return ConfigError(exc.field, exc.detail, source=f"--set {o.item}")
    return exc
