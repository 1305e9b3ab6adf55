"""Hyperparameter declarations: each learner states its knobs once; validation, search
spaces and docs read them from here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metatune._fields import finite_float
from metatune.errors import ConfigError

__all__ = ["HyperParameter", "Value", "INNER_LR", "INNER_STEPS", "FIRST_ORDER", "COMMON"]

Value = float | int | bool | str


@dataclass(frozen=True)
class HyperParameter:
    """One tunable knob of a learner.

    ``low``/``high`` bound the *valid* values (inclusive, ``None`` = unbounded; ``low_open``
    excludes ``low``); ``search`` is the range a study samples by default (algorithms.md §10);
    ``symbol`` is the paper's name for it.
    """

    name: str
    kind: Literal["float", "int", "bool", "categorical"]
    #: None only for a setting that is off by default (the training knob ``grad_clip``).
    default: Value | None
    symbol: str = ""
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    log: bool = False
    search: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()

    def validate(self, value: object, *, field: str | None = None) -> Value:
        field = field or self.name
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(field, f"expected true or false, got {value!r}")
            return value
        if self.kind == "categorical":
            if value not in self.choices:
                raise ConfigError(field, f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str) and self.kind == "float":
                try:
                    value = float(value)
                except ValueError:
                    raise ConfigError(field, f"expected a number, got {value!r}") from None
            else:
                raise ConfigError(field, f"expected {'an integer' if self.kind == 'int' else 'a number'}, got {value!r}")
        if self.kind == "int":
            # Not float(value).is_integer(): float() of an integer beyond ~1.8e308 overflows.
            if isinstance(value, float) and not value.is_integer():
                raise ConfigError(field, f"expected an integer, got {value!r}")
            value = int(value)
        else:
            value = finite_float(value, field)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            op = ">" if self.low_open else ">="
            raise ConfigError(field, f"expected a value {op} {self.low:g}, got {value!r}")
        if self.high is not None and value > self.high:
            raise ConfigError(field, f"expected a value <= {self.high:g}, got {value!r}")
        return value

    def describe(self) -> str:
        rng = ""
        if self.kind in ("float", "int"):
            lo = "(" if self.low_open else "["
            rng = f" {lo}{'-inf' if self.low is None else f'{self.low:g}'}, {'inf' if self.high is None else f'{self.high:g}'}]"
        elif self.kind == "categorical":
            rng = " {" + ", ".join(self.choices) + "}"
        sym = f" ({self.symbol})" if self.symbol else ""
        return f"{self.name}{sym}: {self.kind}{rng}, default {self.default!r}{', log scale' if self.log else ''}"


INNER_LR = HyperParameter(
    "inner_lr", "float", 0.01, symbol="alpha", low=0.0, low_open=True, log=True, search=(1e-4, 10.0),
    help="inner-loop (adaptation) step size",
)
INNER_STEPS = HyperParameter(
    "inner_steps", "int", 1, symbol="n", low=1, high=100, search=(1, 10),
    help="inner-loop steps during meta-training",
)
FIRST_ORDER = HyperParameter(
    "first_order", "bool", False, help="treat inner gradients as constants (FOMAML-style)",
)
COMMON: tuple[HyperParameter, ...] = (INNER_LR, INNER_STEPS, FIRST_ORDER)
