"""Optuna sampler instances from the study's ``sampler`` section (a name -> factory map at the
YAML edge; everything below it passes instances). OptunaSearch ignores its own ``seed`` when
given a sampler instance, so the seed goes into the sampler here."""

from __future__ import annotations

import warnings
from typing import Any

from metatune.study.search_space import SearchSpace

__all__ = ["make_sampler"]


def make_sampler(name: str, *, seed: int, space: SearchSpace, startup_trials: int | None = None) -> Any:
    import optuna

    startup: dict[str, Any] = {} if startup_trials is None else {"n_startup_trials": startup_trials}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            # Optuna 5 defaults: multivariate + constant_liar. ``group`` keeps multivariate TPE
            # working per learner branch of a conditional space instead of falling back to
            # independent sampling.
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=space.conditional, constant_liar=True, **startup
            )
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, **startup)
        if name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **startup)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "grid":
            return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ValueError(f"unknown sampler {name!r}")
