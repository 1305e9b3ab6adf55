"""Build typed, frozen dataclasses from YAML mappings, with messages that name the field.

Every configurable piece of metatune (task distributions, backbones, the training and
evaluation sections, study files, search spaces) is a keyword-only dataclass; this module turns
a plain mapping into one of them with pydantic and says exactly which field is wrong and why,
in one line: ``field 'a.b': expected ..., got ...``.

The rules are pydantic's, with its scalars made strict: an integer field takes an integer only
(not ``2.5``, ``"3"`` or ``true``), a number field takes an int or a float (finite; a numeric
string too, since YAML 1.1 reads ``1e-3`` as one) but not a bool, a bool takes ``true`` or
``false`` only, a string a string only. Structure stays lax: a nested dataclass takes a mapping
and a tuple takes a list, as a YAML file can give nothing else. Unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import pydantic
import pydantic_core

from metatune.errors import ConfigError

__all__ = ["as_plain", "build", "describe_type", "positive", "real_key", "strict_scalars"]

T = TypeVar("T")


def describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(tp))
    if origin is dict or tp is dict:
        return "a mapping"
    if origin in (tuple, list):
        args = get_args(tp)
        inner = describe_type(args[0]) if args else "any"
        return f"a list of {inner}"
    if tp is type(None):
        return "null"
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _numeric_string(value: Any) -> Any:
    """A finite numeric string as its float (YAML 1.1 reads ``1e-3`` as a string); anything
    else unchanged, for the strict float check after this to judge."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if math.isfinite(number):
            return number
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
        raise pydantic_core.PydanticCustomError("finite_number", "Input should be a finite number")
    return value


def _empty_section(value: Any) -> Any:
    return {} if value is None else value


def strict_scalars(schema: Any) -> Any:
    """A copy of a pydantic-core schema with every scalar strict and every float finite (see
    the module docstring), dataclasses closed to unknown keys, and mapping keys unchecked
    (``dict(value)`` took any key before). pydantic's own ``strict`` mode cannot say this: it
    would also refuse a mapping for a nested dataclass and a list for a tuple."""
    if isinstance(schema, list):
        return [strict_scalars(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_scalars(v) for k, v in schema.items()}
    kind = out.get("type")
    if kind in ("int", "bool", "str"):
        out["strict"] = True
    elif kind == "float":
        out.update(strict=True, allow_inf_nan=False)
        return pydantic_core.core_schema.no_info_before_validator_function(_numeric_string, out)
    elif kind == "dataclass-args":
        out.setdefault("extra_behavior", "forbid")
    elif kind == "dataclass":
        # A section left empty in YAML (``training:``) is null: it means the defaults.
        return pydantic_core.core_schema.no_info_before_validator_function(_empty_section, out)
    elif kind == "dict":
        out["keys_schema"] = pydantic_core.core_schema.any_schema()
    elif kind == "tuple" and out.get("variadic_item_index") is None and out.get("items_schema"):
        # A pair (``tuple[float, float]``) takes any length here: the class checks its length
        # in ``__post_init__``, with a message that says "a pair [low, high]".
        out.update(items_schema=out["items_schema"][:1], variadic_item_index=0)
    return out


@functools.cache
def _validator(cls: type) -> pydantic_core.SchemaValidator:
    """One validator per class, made on first use (a task or learner from a plugin too)."""
    schema = pydantic.TypeAdapter(cls).core_schema
    return pydantic_core.SchemaValidator(strict_scalars(schema))  # a patched copy: pydantic's stays


def real_key(data: Any, key: int | str) -> Any:
    """The key of mapping ``data`` that pydantic reports as ``key`` (it shows ``False`` as 0)."""
    if isinstance(data, Mapping):
        for exact in (True, False):
            for k in data:
                if k == key and (type(k) is type(key) or not exact):
                    return k
    return key


def _locate(
    tp: Any, data: Any, loc: tuple[int | str, ...], prefix: str
) -> tuple[str, Any, bool, tuple[int, ...], Any]:
    """Where pydantic's error location ``loc`` points under ``tp`` (given ``data``): the
    dotted field, the type declared there, whether the last key is one ``tp`` has no field
    for, and a sort key that orders errors as a reader goes through the file (unknown keys of
    a section before its fields, fields in declaration order)."""
    path, rank = prefix, list[int]()
    for key in loc:
        origin = get_origin(tp)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            names = [f.name for f in dataclasses.fields(tp) if f.init]
            key = real_key(data, key)
            path = f"{path}.{key}" if path else str(key)
            data = data.get(key) if isinstance(data, Mapping) else None
            if key not in names:
                return path, Any, True, (*rank, -1), data
            rank.append(names.index(str(key)))
            tp = get_type_hints(tp)[str(key)]
        elif origin in (tuple, list) and isinstance(key, int):
            items = [a for a in get_args(tp) if a is not Ellipsis]
            tp = items[min(key, len(items) - 1)] if items else Any
            path = f"{path}[{key}]"
            data = data[key] if isinstance(data, (list, tuple)) and key < len(data) else None
            rank.append(key)
        elif origin is dict or tp is dict:
            args = get_args(tp)
            tp = args[1] if len(args) == 2 else Any
            key = real_key(data, key)
            path = f"{path}.{key}" if path else str(key)
            data = data.get(key) if isinstance(data, Mapping) else None
            rank.append(0)
        else:
            break  # a union member's tag, or a check inside a scalar: the field is found
    return path or "<root>", tp, False, tuple(rank), data


def _config_error(cls: type, data: Mapping[str, Any], exc: pydantic.ValidationError, prefix: str) -> Exception:
    """The first of pydantic's errors in reading order, in metatune's words; a ValueError from
    a ``__post_init__`` that is no ConfigError is a bug, not a config error: it is returned as
    raised (pydantic would otherwise have wrapped it)."""
    located = [(error, *_locate(cls, data, tuple(error["loc"]), prefix)) for error in exc.errors(include_url=False)]
    error, path, tp, unknown, _, held = min(located, key=lambda item: item[4])
    kind, value = error["type"], error["input"]
    union = get_origin(tp) in (Union, types.UnionType)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        # A ``__post_init__`` check: its field is relative to the dataclass at ``path``.
        where = path if error["loc"] else prefix
        if where and where != "<root>" and not cause.field.startswith(f"{where}."):
            return ConfigError(f"{where}.{cause.field}", cause.detail)
        return ConfigError(cause.field, cause.detail)
    if isinstance(cause, Exception):
        return cause
    if unknown or kind == "extra_forbidden":
        known = ", ".join(sorted(f.name for f in dataclasses.fields(_owner(cls, error["loc"])) if f.init))
        return ConfigError(path, f"unknown field; expected one of: {known}")
    if kind == "missing":
        return ConfigError(path, f"missing; expected {describe_type(tp)}")
    if union:  # no member took the field's value: say what the field takes, and all of it
        return ConfigError(path, f"expected {describe_type(tp)}, got {held!r}")
    if kind == "finite_number":
        return ConfigError(path, f"expected a finite number, got {value!r}")
    return ConfigError(path, f"expected {describe_type(tp)}, got {value!r}")


def _owner(cls: type, loc: tuple[int | str, ...]) -> Any:
    """The dataclass that holds the last key of ``loc``."""
    tp: Any = cls
    for key in loc[:-1]:
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            tp = get_type_hints(tp)[str(key)]
        elif get_origin(tp) in (tuple, list):
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            tp = next(a for a in get_args(tp) if dataclasses.is_dataclass(a))
    return tp


def build(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Make ``cls`` from ``data``: unknown keys, missing required keys and wrong types raise
    :class:`ConfigError` naming ``prefix.key``. ``cls.__post_init__`` may raise ConfigError
    with a bare field name; it is qualified with ``prefix`` here."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "<root>", f"expected a mapping, got {data!r}")
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"build() makes dataclasses, not {cls!r}")
    try:
        return _validator(cls).validate_python(dict(data))
    except pydantic.ValidationError as exc:
        raise _config_error(cls, data, exc, prefix) from None


def as_plain(obj: Any) -> Any:
    """A dataclass (or nest of them) as plain YAML-able data: tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: as_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [as_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: as_plain(v) for k, v in obj.items()}
    return obj


def positive(value: float | int, field: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ConfigError(field, f"expected a {bound} number, got {value!r}")
