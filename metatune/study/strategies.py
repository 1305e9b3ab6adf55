"""The samplers and schedulers a study file may name: one registry table each, one entry per
name. An entry holds everything that differs by name: how to build it, which study-file rules
it adds, and (for a sampler) whether it walks a fixed grid.

Samplers are Optuna instances built here. Schedulers are Ray Tune classes, named by import
path so that only :mod:`metatune.study._ray` imports Ray. OptunaSearch ignores its own
``seed`` when given a sampler instance, so the seed goes into the sampler here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metatune.errors import ConfigError
from metatune.study.param_names import LEARNER_KEY

if TYPE_CHECKING:  # the schema imports this table for its names
    import optuna

    from metatune.study.schema import StudySpec
    from metatune.study.search_space import SearchSpace

__all__ = ["SAMPLERS", "SCHEDULERS", "SamplerEntry", "SchedulerEntry", "make_sampler"]


@dataclass(frozen=True, kw_only=True)
class SamplerEntry:
    #: (seed, space, startup_trials) -> an Optuna sampler.
    make: Callable[[int, SearchSpace, int | None], optuna.samplers.BaseSampler]
    #: Rules this sampler adds to the study file: (spec, space, where the space came from).
    check: Callable[[StudySpec, SearchSpace, str], None]
    #: Walks a fixed grid: trials default to the grid size, every grid point is validated
    #: before Ray starts, no learners-first trials, no early stopping.
    grid: bool = False


@dataclass(frozen=True, kw_only=True)
class SchedulerEntry:
    #: ``module:Class`` of the Ray Tune scheduler; None = every trial runs to the end.
    ray_class: str | None
    #: The scheduler's keyword arguments from the study spec.
    options: Callable[[StudySpec], Mapping[str, Any]]
    #: Rules this scheduler adds to the study file.
    check: Callable[[StudySpec], None]


def _startup(startup_trials: int | None) -> dict[str, Any]:
    return {} if startup_trials is None else {"n_startup_trials": startup_trials}


def _optuna() -> Any:
    import optuna  # imported on use: reading a study file needs no Optuna

    return optuna


def _tpe(seed: int, space: SearchSpace, startup_trials: int | None) -> optuna.samplers.BaseSampler:
    # Optuna 5 defaults: multivariate + constant_liar. ``group`` keeps multivariate TPE working
    # per learner branch of a conditional space instead of falling back to independent sampling.
    return _optuna().samplers.TPESampler(
        seed=seed, multivariate=True, group=space.conditional, constant_liar=True, **_startup(startup_trials)
    )


def _gp(seed: int, space: SearchSpace, startup_trials: int | None) -> optuna.samplers.BaseSampler:
    return _optuna().samplers.GPSampler(seed=seed, **_startup(startup_trials))


def _cmaes(seed: int, space: SearchSpace, startup_trials: int | None) -> optuna.samplers.BaseSampler:
    return _optuna().samplers.CmaEsSampler(seed=seed, **_startup(startup_trials))


def _random(seed: int, space: SearchSpace, startup_trials: int | None) -> optuna.samplers.BaseSampler:
    return _optuna().samplers.RandomSampler(seed=seed)


def _grid(seed: int, space: SearchSpace, startup_trials: int | None) -> optuna.samplers.BaseSampler:
    return _optuna().samplers.GridSampler(space.grid(), seed=seed)


def _check_searchable(spec: StudySpec, space: SearchSpace, space_src: str) -> None:
    if not space.params and len(space.learners) == 1:
        raise ConfigError(
            "search_space", f"nothing to search: {space_src} has no parameters and there is one learner"
        )


def _check_grid(spec: StudySpec, space: SearchSpace, space_src: str) -> None:
    for p in space.params:
        if p.kind != "categorical":
            raise ConfigError(
                "sampler.name",
                f"'grid' needs a list of values for every parameter, but {space_src} gives "
                f"'{p.name}' a range; write it as {{grid: [...]}} or use tpe/random",
            )
    if space.conditional:
        cond = next(p for p in space.params if set(p.learners) != set(space.learners))
        raise ConfigError(
            "sampler.name",
            f"'grid' needs every parameter in every learner's branch, but '{cond.name}' in "
            f"{space_src} applies only to {', '.join(cond.learners)}",
        )
    size = space.grid_size()
    if spec.trials is not None and spec.trials > size:
        raise ConfigError(
            "trials", f"the grid has {size} points; expected trials <= {size}, got {spec.trials}"
        )


def _check_cmaes(spec: StudySpec, space: SearchSpace, space_src: str) -> None:
    cats = [p.name for p in space.params if p.kind == "categorical"]
    if len(space.learners) > 1:
        cats.insert(0, LEARNER_KEY)
    if cats:
        raise ConfigError(
            "sampler.name",
            f"'cmaes' samples continuous spaces only (CMA-ES falls back to random search for "
            f"{', '.join(cats)}); use one learner and ranges only, or tpe/gp",
        )
    if not space.params:
        raise ConfigError("sampler.name", f"'cmaes' needs at least one range in {space_src}")
    try:
        import cmaes  # noqa: F401
    except ImportError:
        raise ConfigError("sampler.name", "'cmaes' needs the cmaes package (pip install 'cmaes>=0.12')") from None


#: Sampler name (``sampler.name`` in a study file) -> entry.
SAMPLERS: dict[str, SamplerEntry] = {
    "tpe": SamplerEntry(make=_tpe, check=_check_searchable),
    "cmaes": SamplerEntry(make=_cmaes, check=_check_cmaes),
    "gp": SamplerEntry(make=_gp, check=_check_searchable),
    "random": SamplerEntry(make=_random, check=_check_searchable),
    "grid": SamplerEntry(make=_grid, check=_check_grid, grid=True),
}


def _check_no_scheduler(spec: StudySpec) -> None:
    for name in ("grace_period", "max_t"):
        if getattr(spec.scheduler, name) is not None:
            raise ConfigError(f"scheduler.{name}", "only used with scheduler 'asha'")


def _asha_options(spec: StudySpec) -> dict[str, Any]:
    sch, tr = spec.scheduler, spec.training
    return {
        "time_attr": "iteration",
        "max_t": sch.max_t or tr.iterations,
        "grace_period": sch.grace_period or tr.eval_every,
        "reduction_factor": sch.reduction_factor,
    }


def _check_asha(spec: StudySpec) -> None:
    if SAMPLERS[spec.sampler.name].grid:
        raise ConfigError(
            "scheduler.name", "'asha' stops grid trials early and leaves holes in the grid table; use none"
        )
    its, every = spec.training.iterations, spec.training.eval_every
    opts = _asha_options(spec)
    max_t, grace = opts["max_t"], opts["grace_period"]
    if max_t > its:
        raise ConfigError("scheduler.max_t", f"expected <= training.iterations ({its}), got {max_t}")
    if grace >= max_t:
        raise ConfigError("scheduler.grace_period", f"expected < max_t ({max_t}), got {grace}")
    if grace < every:
        raise ConfigError(
            "scheduler.grace_period",
            f"trials report every training.eval_every = {every} "
            f"iterations; expected grace_period >= that, got {grace}",
        )


#: Scheduler name (``scheduler.name`` in a study file) -> entry.
SCHEDULERS: dict[str, SchedulerEntry] = {
    "none": SchedulerEntry(ray_class=None, options=lambda spec: {}, check=_check_no_scheduler),
    "asha": SchedulerEntry(
        ray_class="ray.tune.schedulers:ASHAScheduler", options=_asha_options, check=_check_asha
    ),
}


def make_sampler(
    name: str, *, seed: int, space: SearchSpace, startup_trials: int | None = None
) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}")
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SAMPLERS[name].make(seed, space, startup_trials)
