"""Learner settings: each learner declares its settings once, as a frozen pydantic model (a
:class:`LearnerConfig` subclass) whose fields carry the type, default, valid bounds and, through
:func:`setting`, the paper symbol, help, log scale and default search range.

That model validates a learner section (once, at the edge: :func:`metatune.config.parse_config`,
or ``Learner(..., inner_lr=0.1)`` built in Python) and the learner reads it typed
(``self.config.inner_lr``). Everything else reads :class:`HyperParameter` rows derived from the
model (:meth:`LearnerConfig.hyperparameters`): search-space checks, the runtime hyperparameter
tensors, ``metatune learners``, ``docs/learners.md`` and the JSON Schema.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self, cast, get_args, get_origin

import annotated_types
import pydantic
import pydantic_core

from metatune._fields import build
from metatune.errors import ConfigError

__all__ = [
    "COMMON", "FIRST_ORDER", "INNER_LR", "INNER_STEPS", "HyperParameter", "LearnerConfig", "Setting", "Source",
    "Value", "Settings", "config_from_rows", "setting",
]

Value = float | int | bool | str
Kind = Literal["float", "int", "bool", "categorical"]
#: Where a setting's default (its reading of the algorithm) comes from, as algorithms.md tags it:
#: stated in the paper, read in the authors' code, or our reconstruction where both are silent.
Source = Literal["paper", "code", "inferred"]


@dataclass(frozen=True)
class Setting:
    """What a learner setting says besides its type, default and bounds (pydantic metadata)."""

    symbol: str = ""
    help: str = ""
    log: bool = False
    #: The range a study samples by default (algorithms.md §10); None: a study must give one.
    search: tuple[float, float] | None = None
    #: Whether a search space may sample it at all.
    searchable: bool = True
    #: Where the default comes from (None: not declared, e.g. a plugin's setting).
    source: Source | None = None


def setting(
    default: Value | None, *, symbol: str = "", help: str = "", gt: float | None = None, ge: float | None = None,
    le: float | None = None, log: bool = False, search: tuple[float, float] | None = None,
    searchable: bool = True, source: Source | None = None,
) -> Any:
    """A :class:`LearnerConfig` field: ``default``, the valid bounds (``gt``/``ge``/``le``) as
    pydantic constraints, and the rest as a :class:`Setting`."""
    if source is not None and source not in get_args(Source):
        raise TypeError(f"source must be one of {get_args(Source)}, not {source!r}")
    field: Any = pydantic.Field(default, gt=gt, ge=ge, le=le, description=help or None)
    field.metadata.append(Setting(
        symbol=symbol, help=help, log=log, search=search, searchable=searchable, source=source,
    ))
    return field


@dataclass(frozen=True)
class HyperParameter:
    """One setting as the rest of metatune reads it: a row derived from a config class's field
    (:meth:`LearnerConfig.hyperparameters`) or a training knob (``TrainingConfig.knobs``).

    ``low``/``high`` bound the *valid* values (inclusive, ``None`` = unbounded; ``low_open``
    excludes ``low``); ``search`` is the range a study samples by default (algorithms.md §10);
    ``symbol`` is the paper's name for it; ``owner`` is the class that validates it.
    """

    name: str
    kind: Kind
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
    searchable: bool = True
    source: Source | None = None
    owner: type | None = dataclasses.field(default=None, compare=False, repr=False)

    def validate(self, value: object, *, field: str | None = None) -> Value:
        """``value`` as its owner takes it (an integral float as an int for an int setting: a
        search range's ends are read as numbers), or ConfigError naming ``field``."""
        field = field or self.name
        if self.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        try:
            if isinstance(self.owner, type) and issubclass(self.owner, Settings):
                # One value alone: its field's own rules, not the rules across settings.
                return getattr(self.owner.parse({self.name: value}, whole=False), self.name)
            if self.owner is not None:
                return getattr(build(self.owner, {self.name: value}), self.name)
        except ConfigError as exc:
            raise ConfigError(field, exc.detail) from None
        raise TypeError(f"setting {self.name!r} has no class to validate it")

    def describe(self) -> str:
        rng = ""
        if self.kind in ("float", "int"):
            lo = "(" if self.low_open else "["
            rng = f" {lo}{'-inf' if self.low is None else f'{self.low:g}'}, {'inf' if self.high is None else f'{self.high:g}'}]"
        elif self.kind == "categorical":
            rng = " {" + ", ".join(self.choices) + "}"
        sym = f" ({self.symbol})" if self.symbol else ""
        return f"{self.name}{sym}: {self.kind}{rng}, default {self.default!r}{', log scale' if self.log else ''}"


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...]]:
    if get_origin(annotation) is Literal:
        return "categorical", tuple(get_args(annotation))
    kinds: dict[Any, Kind] = {bool: "bool", int: "int", float: "float"}
    if annotation not in kinds:
        raise TypeError(f"a learner setting is a float, int, bool or Literal of strings, not {annotation!r}")
    return kinds[annotation], ()


def _row(name: str, field: pydantic.fields.FieldInfo, owner: type) -> HyperParameter:
    kind, choices = _kind(field.annotation)
    meta = next((m for m in field.metadata if isinstance(m, Setting)), Setting())
    low = high = None
    low_open = False
    for m in field.metadata:
        # The bound as declared (1, not 1.0): the JSON Schema and the docs print it.
        if isinstance(m, annotated_types.Gt):
            low, low_open = cast(float, m.gt), True
        elif isinstance(m, annotated_types.Ge):
            low = cast(float, m.ge)
        elif isinstance(m, annotated_types.Le):
            high = cast(float, m.le)
    return HyperParameter(
        name, kind, field.default, symbol=meta.symbol, help=meta.help, low=low, high=high, low_open=low_open,
        log=meta.log, search=meta.search, choices=choices, searchable=meta.searchable, source=meta.source,
        owner=owner,
    )


class Settings(pydantic.BaseModel):
    """Searchable settings declared with :func:`setting`: a learner's (:class:`LearnerConfig`)
    or the training knobs a study may sample (``metatune.config.TrainingKnobs``). Frozen,
    closed to unknown keys, strict (an int setting takes no ``"3"`` or ``true``, a float no
    bool); the YAML allowances are made before: a numeric string or an int for a float, an
    integral float (a search range's end) for an int."""

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _yaml_numbers(cls, value: Any, info: pydantic.ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if isinstance(value, bool):
            return value
        if annotation is float and isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                return value
        if annotation is float and isinstance(value, int):
            if abs(value) > sys.float_info.max:  # float() would overflow
                raise pydantic_core.PydanticCustomError("finite_number", "Input should be a finite number")
            return float(value)
        if annotation is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    @classmethod
    def hyperparameters(cls) -> tuple[HyperParameter, ...]:
        """Every setting as a :class:`HyperParameter` row, in declaration order."""
        return tuple(_row(name, field, cls) for name, field in cls.model_fields.items())

    @classmethod
    def parse(cls, values: Mapping[Any, object], *, learner: str = "", prefix: str = "", whole: bool = True) -> Self:
        """``values`` validated, or the first problem as a ConfigError naming ``prefix + key``:
        an unknown key first (in the file's order), then the fields as declared, then (when
        ``values`` is a ``whole`` section) the rules across settings, :meth:`resolved`."""
        for key in values:
            if not isinstance(key, str) or key not in cls.model_fields:
                known = ", ".join(cls.model_fields)
                raise ConfigError(
                    f"{prefix}{key}", f"unknown hyperparameter for learner '{learner}'; expected one of: {known}"
                )
        try:
            config = cls.model_validate(dict(values))
        except pydantic.ValidationError as exc:
            raise cls._config_error(exc.errors(include_url=False)[0], prefix=prefix) from None
        return config.resolved(prefix=prefix) if whole else config

    def resolved(self, *, prefix: str = "") -> Self:
        """The section after the rules that tie settings together (a subclass's: e.g. two
        settings that give one value two ways); raise ConfigError naming ``prefix + key``.
        ``model_fields_set`` says which settings the section gave. Default: as validated."""
        return self

    @classmethod
    def _config_error(cls, error: pydantic_core.ErrorDetails, *, prefix: str) -> ConfigError:
        """pydantic's error about one field, in the words ``HyperParameter`` used before."""
        key = str(error["loc"][0])
        field, kind, value = f"{prefix}{key}", error["type"], error["input"]
        bounds = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"), "less_than_equal": ("<=", "le")}
        if kind in bounds:
            op, name = bounds[kind]
            return ConfigError(field, f"expected a value {op} {float(error['ctx'][name]):g}, got {value!r}")
        annotation = cls.model_fields[str(key)].annotation
        if annotation is bool:
            return ConfigError(field, f"expected true or false, got {value!r}")
        if get_origin(annotation) is Literal:
            choices = ", ".join(map(repr, get_args(annotation)))
            return ConfigError(field, f"expected one of {choices}, got {value!r}")
        if annotation is int:
            return ConfigError(field, f"expected an integer, got {value!r}")
        if kind == "finite_number" or isinstance(value, float) and not math.isfinite(value):
            return ConfigError(field, f"expected a finite number, got {value!r}")
        return ConfigError(field, f"expected a number, got {value!r}")

    def values(self) -> dict[str, Value]:
        """Every setting by name (what ``Learner.hparams`` shows)."""
        return {name: getattr(self, name) for name in type(self).model_fields}


class LearnerConfig(Settings):
    """The settings every learner has; a learner with more subclasses this."""

    inner_lr: float = setting(
        0.01, symbol="alpha", gt=0.0, log=True, search=(1e-4, 10.0), source="paper",
        help="inner-loop (adaptation) step size",
    )
    inner_steps: int = setting(
        1, symbol="n", ge=1, le=100, search=(1, 10), source="paper", help="inner-loop steps during meta-training",
    )
    first_order: bool = setting(
        False, source="paper", help="treat inner gradients as constants (FOMAML-style)",
    )
    loss_reduction: Literal["mean", "sum"] = setting(
        "mean", source="code",
        help="a task's loss over its examples, in the inner and outer loss and the reported loss: the mean "
             "(cbfinn/maml, torch), or the sum (Wormhole eq. 8: = examples x mean)",
    )


def config_from_rows(name: str, rows: Sequence[HyperParameter]) -> type[LearnerConfig]:
    """A config class for a learner that still declares ``hyperparameters`` rows (a plugin
    written before config classes): each row becomes a field with its type, bounds and
    metadata, on top of :class:`LearnerConfig` (the base class reads its three settings)."""
    fields: dict[str, Any] = {}
    for h in rows:
        kinds: dict[str, Any] = {"float": float, "int": int, "bool": bool}
        annotation = kinds.get(h.kind) or Literal[h.choices]
        bounds = {} if h.low is None else {"gt" if h.low_open else "ge": h.low}
        fields[h.name] = (annotation, setting(
            h.default, symbol=h.symbol, help=h.help, le=h.high, log=h.log, search=h.search,
            searchable=h.searchable, source=h.source, **bounds,
        ))
    return pydantic.create_model(name, __base__=LearnerConfig, **fields)


_COMMON_ROWS = LearnerConfig.hyperparameters()
INNER_LR, INNER_STEPS, FIRST_ORDER = _COMMON_ROWS[:3]
#: The settings of every learner, as rows (kept for code that reads them by name).
COMMON: tuple[HyperParameter, ...] = _COMMON_ROWS
