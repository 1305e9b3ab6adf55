"""Search spaces: ``search_spaces/*.yaml`` -> an Optuna define-by-run function.

```yaml
description: inner and outer rates on sine
learners: [maml, metasgd, mtnet]   # optional: the learners the file is written for
params:                            # tried for every learner that has the knob
  inner_lr: {low: 1.0e-4, high: 10, log: true}
  outer_lr: {}                     # {} = the declared search range
  meta_batch: [2, 4, 8]            # a list = categorical choices
per_learner:                       # conditional on the learner (own Optuna names)
  mtnet:
    mask_temperature: {low: 0.1, high: 10, log: true}
grid:                              # (alternative) grid axes, for sampler: grid
```

A parameter under ``params`` keeps its plain name (``inner_lr``); one under
``per_learner.L`` is named ``L.knob`` (``mtnet.inner_lr``), so a branch whose range differs
never shares an Optuna distribution with another (a changed range silently degrades TPE);
:mod:`metatune.study.param_names` owns that rule. ``{grid: [...]}`` makes a grid axis for the grid sampler. Knob names are checked against
each learner's declared hyperparameters; ``outer_lr``, ``meta_batch`` and ``grad_clip`` are
training-level and allowed for every learner. The define-by-run function does no work
beyond ``suggest_*`` calls (Ray warns if it is slow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from metatune._fields import build
from metatune.config import TrainingConfig
from metatune.errors import ConfigError
from metatune.learners import LEARNERS, HyperParameter
from metatune.study.param_names import LEARNER_KEY, SEED_KEY, branch_learner, branch_name, split_trial_name

__all__ = ["Param", "SearchSpace", "parse_search_space", "split_trial_name"]

#: Knobs that live in the run config's ``training`` section and apply to every learner.
@dataclass(frozen=True, kw_only=True)
class _ParamFile:
    low: float | None = None
    high: float | None = None
    log: bool | None = None
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    grid: tuple[Any, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class _SpaceFile:
    description: str = ""
    learners: tuple[str, ...] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    per_learner: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Param:
    """One suggested parameter: ``name`` in the trial config, ``knob`` in the run config."""

    name: str
    knob: str
    learners: tuple[str, ...]
    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    is_grid: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None  # a range (categoricals returned above)
        if self.kind == "int":
            step = int(self.step) if self.step else 1
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        where = f" [{', '.join(self.learners)}]"
        if self.kind == "categorical":
            what = ("grid " if self.is_grid else "") + "{" + ", ".join(f"{c!r}" for c in self.choices) + "}"
        else:
            what = f"{self.kind} [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")
        return f"{self.name}: {what}{where}"


@dataclass(frozen=True)
class SearchSpace:
    """A picklable define-by-run function: ``space(trial) -> constants``."""

    learners: tuple[str, ...]
    params: tuple[Param, ...]
    description: str = ""
    #: Training seeds of the study's replicates (``seeds:``), a grid axis; () = none. Not part
    #: of the file form: the study file holds them.
    seeds: tuple[int, ...] = ()

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        if len(self.learners) > 1:
            learner = trial.suggest_categorical(LEARNER_KEY, list(self.learners))
        else:
            learner = self.learners[0]
        for p in self.params:
            if learner in p.learners:
                p.suggest(trial)
        if self.seeds:
            trial.suggest_categorical(SEED_KEY, list(self.seeds))
        return {LEARNER_KEY: learner} if len(self.learners) == 1 else None

    def for_learner(self, learner: str) -> list[Param]:
        return [p for p in self.params if learner in p.learners]

    @property
    def conditional(self) -> bool:
        return any(set(p.learners) != set(self.learners) for p in self.params)

    def grid(self) -> dict[str, list[Any]]:
        """Axes for Optuna's GridSampler (the learner is one when there are several)."""
        axes: dict[str, list[Any]] = {}
        if len(self.learners) > 1:
            axes[LEARNER_KEY] = list(self.learners)
        for p in self.params:
            axes[p.name] = list(p.choices)
        if self.seeds:
            axes[SEED_KEY] = list(self.seeds)
        return axes

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def grid_points(self) -> list[dict[str, Any]]:
        """Every grid point as a trial config (for validating each before Ray starts)."""
        points: list[dict[str, Any]] = [{}]
        for name, values in self.grid().items():
            points = [{**pt, name: v} for pt in points for v in values]
        if len(self.learners) == 1:
            points = [{LEARNER_KEY: self.learners[0], **pt} for pt in points]
        return points

    def corners(self) -> list[dict[str, Any]]:
        """Trial configs at the ends of every range (to validate run configs before Ray starts)."""
        out = []
        for learner in self.learners:
            for pick in (0, -1):
                cfg: dict[str, Any] = {LEARNER_KEY: learner}
                for p in self.for_learner(learner):
                    if p.kind == "categorical":
                        cfg[p.name] = p.choices[pick]
                    else:
                        cfg[p.name] = p.low if pick == 0 else p.high
                        if p.kind == "int":
                            cfg[p.name] = int(cfg[p.name])
                out.append(cfg)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The space in file form (inline), so a frozen study needs no other file."""
        shared: dict[str, Any] = {}
        per: dict[str, dict[str, Any]] = {}
        for p in self.params:
            body: dict[str, Any]
            if p.is_grid:
                body = {"grid": list(p.choices)}
            elif p.kind == "categorical":
                body = {"choices": list(p.choices)}
            else:
                body = {"low": p.low, "high": p.high, "log": p.log}
                if p.step is not None:
                    body["step"] = p.step
            if p.name == p.knob:
                shared[p.knob] = body
            else:
                per.setdefault(branch_learner(p.name) or p.learners[0], {})[p.knob] = body
        out: dict[str, Any] = {"params": shared}
        if per:
            out["per_learner"] = per
        if self.description:
            out["description"] = self.description
        return out


def _declared_by(learner: str) -> dict[str, HyperParameter]:
    return {**TrainingConfig.knobs(), **LEARNERS.get(learner).declared()}


def _param(
    name: str, knob: str, learners: Sequence[str], raw: Any, decl: HyperParameter, field_: str
) -> Param:
    if not decl.searchable:
        raise ConfigError(
            field_, f"'{knob}' is not searchable; a fixed value belongs in the study's 'learners' section"
        )
    if isinstance(raw, (list, tuple)):
        raw = {"choices": list(raw)}
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            field_,
            "expected a range mapping ({low, high, log}, {choices: [...]} or {grid: [...]}), "
            f"got {raw!r}; "
            "a fixed value belongs in the study's 'learners' section",
        )
    spec = build(_ParamFile, raw, prefix=field_)
    values = spec.grid if spec.grid is not None else spec.choices
    if spec.grid is not None and spec.choices is not None:
        raise ConfigError(f"{field_}.grid", "give either 'grid' or 'choices', not both")
    if values is not None:
        if spec.low is not None or spec.high is not None:
            raise ConfigError(f"{field_}.low", "a list of values and a range cannot be mixed")
        if not values:
            raise ConfigError(
                f"{field_}.{'grid' if spec.grid is not None else 'choices'}", "expected at least one value"
            )
        checked = []
        for i, v in enumerate(values):
            f = f"{field_}.{'grid' if spec.grid is not None else 'choices'}[{i}]"
            if decl.kind == "categorical":
                if v not in decl.choices:
                    raise ConfigError(f, f"expected one of {', '.join(map(repr, decl.choices))}, got {v!r}")
                checked.append(v)
            else:
                checked.append(decl.validate(v, field=f))
        if len(set(map(repr, checked))) != len(checked):
            raise ConfigError(field_, f"duplicate values in {checked}")
        return Param(
            name, knob, tuple(learners), "categorical", choices=tuple(checked), is_grid=spec.grid is not None
        )
    # A range.
    if decl.kind in ("bool", "categorical"):
        choices = (False, True) if decl.kind == "bool" else decl.choices
        if spec.low is not None or spec.high is not None or spec.log is not None:
            raise ConfigError(field_, f"'{knob}' is {decl.kind}: give 'choices', not a range")
        return Param(name, knob, tuple(learners), "categorical", choices=tuple(choices))
    low = spec.low if spec.low is not None else (decl.search[0] if decl.search else None)
    high = spec.high if spec.high is not None else (decl.search[1] if decl.search else None)
    if low is None or high is None:
        raise ConfigError(field_, f"'{knob}' declares no default search range: give 'low' and 'high'")
    low_value, high_value = decl.validate(low, field=f"{field_}.low"), decl.validate(high, field=f"{field_}.high")
    assert isinstance(low_value, (int, float)) and isinstance(high_value, (int, float))  # an int or float knob here
    low, high = low_value, high_value
    if not low < high:
        raise ConfigError(f"{field_}.high", f"expected high > low, got low={low:g}, high={high:g}")
    log = decl.log if spec.log is None else spec.log
    if log and low <= 0:
        raise ConfigError(f"{field_}.low", f"a log-scale range needs low > 0, got {low:g}")
    if spec.step is not None:
        if spec.step <= 0:
            raise ConfigError(f"{field_}.step", f"expected a positive step, got {spec.step:g}")
        if log:
            raise ConfigError(f"{field_}.step", "'step' cannot be combined with a log scale")
    kind: Literal["int", "float"] = "int" if decl.kind == "int" else "float"
    return Param(name, knob, tuple(learners), kind, low=low, high=high, log=bool(log), step=spec.step)


def parse_search_space(
    data: Any,
    *,
    study_learners: Sequence[str],
    kinds: Mapping[str, str] | None = None,
    source: str | None = None,
    prefix: str = "",
) -> SearchSpace:
    """Validate a search-space mapping against the study's learners and their declarations.

    ``kinds`` maps a learner label of the study (a variant such as ``wormhole_tanh``) to the
    registered learner it trains; ``prefix`` qualifies field names when the space is inline in
    a study file."""
    kinds = dict(kinds or {})

    def _declared(learner: str) -> dict[str, HyperParameter]:
        return _declared_by(kinds.get(learner, learner))

    try:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                prefix or "<root>", f"expected a mapping with 'params', got {type(data).__name__}"
            )
        dot = f"{prefix}." if prefix else ""
        spec = build(_SpaceFile, data, prefix=prefix)
        learners = tuple(study_learners)
        if not learners:
            raise ConfigError(f"{dot}learners", "expected at least one learner")
        # ``learners`` says which learners a file is written for (documentation; checked to exist).
        for i, name in enumerate(spec.learners or ()):
            LEARNERS.get(name, field=f"{dot}learners[{i}]")
        params: list[Param] = []
        overridden: dict[str, set[str]] = {}
        for learner, knobs in spec.per_learner.items():
            field_ = f"{dot}per_learner.{learner}"
            LEARNERS.get(kinds.get(learner, learner), field=field_)
            if not isinstance(knobs, Mapping):
                raise ConfigError(field_, f"expected a mapping of hyperparameter ranges, got {knobs!r}")
            if learner not in learners:
                continue  # a branch for a learner this study does not compare
            declared = _declared(learner)
            for knob, raw in knobs.items():
                if knob not in declared:
                    raise ConfigError(
                        f"{field_}.{knob}",
                        f"not a hyperparameter of learner '{learner}'; "
                        f"expected one of: {', '.join(sorted(declared))}",
                    )
                params.append(
                    _param(branch_name(learner, knob), knob, [learner], raw, declared[knob], f"{field_}.{knob}")
                )
                overridden.setdefault(knob, set()).add(learner)
        shared: list[Param] = []
        for knob, raw in spec.params.items():
            field_ = f"{dot}params.{knob}"
            having = [n for n in learners if knob in _declared(n) and n not in overridden.get(knob, set())]
            if not any(knob in _declared(n) for n in learners):
                known = sorted(set().union(*(_declared(n) for n in learners)))
                raise ConfigError(
                    field_,
                    f"not a hyperparameter of {', '.join(learners)}; expected one of: {', '.join(known)}",
                )
            if not having:
                continue  # every learner that has it overrides it under per_learner
            decls = {n: _declared(n)[knob] for n in having}
            first = decls[having[0]]
            for n, d in decls.items():
                if (d.kind, d.low, d.high, d.choices) != (first.kind, first.low, first.high, first.choices):
                    raise ConfigError(
                        field_,
                        f"'{knob}' is declared differently by {having[0]} and {n}: give it under per_learner",
                    )
            shared.append(_param(knob, knob, having, raw, first, field_))
        space = SearchSpace(learners=learners, params=tuple(shared + params), description=spec.description)
        return space
    except ConfigError as exc:
        raise (exc.with_source(source) if source else exc) from None


def load_search_space_file(
    path: Path, *, study_learners: Sequence[str], kinds: Mapping[str, str] | None = None
) -> SearchSpace:
    from metatune.config import read_yaml

    return parse_search_space(read_yaml(path), study_learners=study_learners, kinds=kinds, source=str(path))
