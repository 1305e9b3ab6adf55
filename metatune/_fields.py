"""Build typed, frozen dataclasses from YAML mappings, with messages that name the field.

Every configurable piece of metatune (task distributions, backbones, the training and
evaluation sections) is a keyword-only dataclass; this module is the one place that turns a
plain mapping into one of them and says exactly which field is wrong and why.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from metatune.errors import ConfigError

__all__ = ["as_plain", "build", "check_value", "describe_type", "finite_float", "positive"]

T = TypeVar("T")


def describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(a) for a in get_args(tp))
    if origin is dict:
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
    return getattr(tp, "__name__", str(tp))


def finite_float(value: int | float, field: str) -> float:
    """``value`` as a float, or ConfigError if it is infinite, NaN, or an integer too large for
    a float (float() of an integer beyond ~1.8e308 raises OverflowError)."""
    if isinstance(value, int) and abs(value) > sys.float_info.max or not math.isfinite(value):
        raise ConfigError(field, f"expected a finite number, got {value!r}")
    return float(value)


def check_value(value: Any, tp: Any, field: str) -> Any:
    """Return ``value`` coerced to ``tp`` (ints to floats, lists to tuples) or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ConfigError(field, f"expected {describe_type(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return check_value(value, arg, field)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(field, f"expected {describe_type(tp)}, got {value!r}")
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(field, f"expected a mapping, got {value!r}")
        return dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(field, f"expected {describe_type(tp)}, got {value!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        return tuple(check_value(v, inner, f"{field}[{i}]") for i, v in enumerate(value))
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(field, f"expected null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(field, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(field, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return finite_float(value, field)
        # YAML 1.1 reads "1e-3" as a string; accept numeric strings, as users expect.
        if isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(out):
                    return out
        raise ConfigError(field, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(field, f"expected a string, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, prefix=field)
    raise TypeError(f"unsupported field type {tp!r} for {field}")


def build(cls: type[T], data: Mapping[str, Any] | None, *, prefix: str = "") -> T:
    """Make ``cls`` from ``data``: unknown keys, missing required keys and wrong types raise
    :class:`ConfigError` naming ``prefix.key``. ``cls.__post_init__`` may raise ConfigError
    with a bare field name; it is qualified with ``prefix`` here."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "<root>", f"expected a mapping, got {data!r}")
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"build() makes dataclasses, not {cls!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    dot = f"{prefix}." if prefix else ""
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{dot}{key}", f"unknown field; expected one of: {known}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = check_value(data[name], hints[name], f"{dot}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{dot}{name}", f"missing; expected {describe_type(hints[name])}")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if prefix and not exc.field.startswith(dot):
            raise ConfigError(f"{dot}{exc.field}", exc.detail) from None
        raise


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

