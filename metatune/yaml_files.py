"""Reading YAML files for metatune: safe loading, and one ConfigError line naming the file for a
missing or unreadable file, a syntax error, a malformed value, or an alias bomb."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from metatune.errors import ConfigError

__all__ = ["MAX_YAML_VALUES", "read_yaml"]


def read_yaml(path: str | Path) -> Any:
    """Load a YAML file safely; a missing file or a syntax error is a ConfigError naming it."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("<file>", "is a folder, expected a YAML file", source=str(path))
    if not path.is_file():
        raise ConfigError("<file>", "file not found", source=str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "<file>", f"not a UTF-8 text file (byte {exc.start}): {exc.reason}", source=str(path)
        ) from None
    except OSError as exc:
        raise ConfigError("<file>", f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    try:
        data = _safe_load_unique(text)
    except DuplicateKey as exc:
        raise ConfigError(
            "<yaml>", f"key '{exc.key}' appears twice in one mapping (at lines {exc.lines[0]} and {exc.lines[1]}); "
            "YAML would silently keep the last one", source=str(path),
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError("<yaml>", f"YAML syntax error{_yaml_problem(exc)}", source=str(path)) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError("<yaml>", "YAML nested too deeply", source=str(path)) from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these for a malformed typed scalar: a date 2020-13-45, an
        # integer of 5000 digits, `!!timestamp x`.
        raise ConfigError("<yaml>", f"YAML value cannot be read: {exc}", source=str(path)) from None
    if _expands_beyond(data, MAX_YAML_VALUES):
        raise ConfigError(
            "<yaml>",
            f"expands to more than {MAX_YAML_VALUES} values (aliases of aliases, or an alias inside itself)",
            source=str(path),
        )
    return data


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: object, lines: tuple[int, int]) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last
    value without a word, so a typo'd second `training:` section would replace the first). Merge
    keys (`<<: *base`) may still be overridden: only keys written out are compared."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: PyYAML's own check reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise DuplicateKey(key, (first, key_node.start_mark.line + 1))
        return super().construct_mapping(node, deep=deep)


def _safe_load_unique(text: str) -> Any:
    """yaml.safe_load with _UniqueKeyLoader (what yaml.safe_load does with SafeLoader)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


#: Values a config file may expand to. Nested YAML aliases make a few lines expand to 10^9 values
#: (or an alias can contain itself); validating or printing such data would hang.
MAX_YAML_VALUES = 100_000


def _expands_beyond(data: Any, limit: int) -> bool:
    """Whether ``data``, with shared (aliased) nodes counted each time they appear, has more than
    ``limit`` values; stops counting at the limit."""
    stack, seen = [data], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, Mapping):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, (list, tuple, set)):
            stack.extend(node)
    return False


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """' at line L, column C: what' for any PyYAML error; its str() spans several lines."""
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, ...)
        char = f" (#x{exc.character:04x})" if isinstance(exc.character, int) else ""
        return f" at character {exc.position + 1}: {exc.reason}{char}"
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or "invalid YAML"
    return f"{where}: {problem}"
