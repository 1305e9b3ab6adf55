"""Copy a nested config mapping with one field replaced or deleted (for bad-input tests)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

DELETE = object()


def mutate(base: Mapping[str, Any], path: Sequence[str] | str, value: Any) -> dict[str, Any]:
    """``base`` deep-copied with ``path`` (keys, or a dotted string) set to ``value``, or removed
    when ``value`` is :data:`DELETE`; see :func:`set_path`."""
    return set_path(copy.deepcopy(dict(base)), path, value)


def set_path(data: dict[str, Any], path: Sequence[str] | str, value: Any) -> dict[str, Any]:
    """``data`` itself, with ``path`` set to ``value`` (or removed for :data:`DELETE`); missing
    intermediate mappings are created, and one that is not a mapping is replaced by one."""
    keys = path.split(".") if isinstance(path, str) else list(path)
    node = data
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if value is DELETE:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return data
