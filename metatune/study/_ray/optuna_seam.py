"""The seam: the two places where we read Optuna state that Ray keeps private.

Ray's ``OptunaSearch`` offers no public way to reach the Optuna trial it asked for a Tune
trial, nor the Optuna study inside its saved state. Both reads live here and nowhere else.
The next step keeps Optuna's record in an RDB storage (``OptunaSearch(storage=...,
study_name=...)``): then ``optuna.load_study(study_name=..., storage=...)`` reads the record
without the pickle, and a trial is found by its ``metatune.trial_id`` user attribute.
"""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

__all__ = ["live_optuna_trial", "saved_optuna_study"]


def live_optuna_trial(searcher: OptunaSearch, trial_id: str) -> optuna.Trial | None:
    """The running Optuna trial that ``searcher`` asked for Tune trial ``trial_id``.

    Private read: ``OptunaSearch._ot_trials`` (Tune trial id -> optuna.Trial)."""
    trials = getattr(searcher, "_ot_trials", None)
    return trials.get(trial_id) if isinstance(trials, dict) else None


def saved_optuna_study(state: object) -> optuna.Study | None:
    """Optuna's study inside a pickled ``OptunaSearch`` state (``searcher-state-*.pkl``).

    Private read: ``OptunaSearch.save`` pickles the searcher's ``__dict__``, whose
    ``_ot_study`` holds the in-memory Optuna study."""
    ot_study = state.get("_ot_study") if isinstance(state, dict) else None
    return ot_study if isinstance(ot_study, optuna.Study) else None
