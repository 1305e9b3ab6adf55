"""Copy a nested config mapping with one field replaced or deleted (for bad-input tests)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

DELETE = object()


def mutate(base: Mapping[str, Any], path: Sequence[str] | str, value: Any) -> dict[str, Any]:
    """``base`` deep-copied with ``path`` (keys, or a dotted string) set to ``value``, or removed
    when ``value`` is :data:`DELETE`; missing intermediate mappings are created."""
    keys = path.split(".") if isinstance(path, str) else list(path)
    data = copy.deepcopy(dict(base))
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is DELETE:
        node.pop(keys[-1])
    else:
        node[keys[-1]] = value
    return data
