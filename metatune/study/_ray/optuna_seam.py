"""The seam: the places where we touch Optuna or Ray state that they keep private.

Ray's ``OptunaSearch`` offers no public way to reach the Optuna trial it asked for a Tune trial,
and Optuna offers no public way to turn a trial's number back into a live ``optuna.Trial`` (to
report a restored trial's next intermediate values). Those reads live here and nowhere else.
Optuna's record itself lives in an RDB storage (``<study>/optuna.db``) and is read with
``optuna.load_study``; the searcher's pickled state only says which Optuna trial each Tune trial is.
"""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

__all__ = [
    "live_optuna_trial",
    "live_trials",
    "pickled_study_storage",
    "searcher_sampler",
    "searcher_study",
    "set_live_trials",
    "trial_by_number",
]


def live_optuna_trial(searcher: OptunaSearch, trial_id: str) -> optuna.Trial | None:
    """The running Optuna trial that ``searcher`` asked for Tune trial ``trial_id``.

    Private read: ``OptunaSearch._ot_trials`` (Tune trial id -> optuna.Trial)."""
    trials = live_trials(searcher)
    return trials.get(trial_id)


def live_trials(searcher: OptunaSearch) -> dict[str, optuna.Trial]:
    trials = getattr(searcher, "_ot_trials", None)
    return trials if isinstance(trials, dict) else {}


def set_live_trials(
    searcher: OptunaSearch,
    *,
    study: optuna.Study | None,
    storage: optuna.storages.BaseStorage | None,
    trials: dict[str, optuna.Trial],
) -> None:
    """Point ``searcher`` at ``study`` (in ``storage``) and its running ``trials``; ``study=None``
    detaches it, for pickling.

    Private writes: ``OptunaSearch._ot_study``, ``._storage`` and ``._ot_trials``."""
    searcher._ot_study = study  # type: ignore[assignment]
    searcher._storage = storage
    searcher._ot_trials = trials


def trial_by_number(study: optuna.Study, number: int) -> optuna.Trial:
    """A live ``optuna.Trial`` for the RUNNING trial ``number`` of ``study``.

    Private read: ``FrozenTrial._trial_id`` (the storage's id, which ``optuna.Trial`` takes)."""
    frozen = study.get_trials(deepcopy=False)[number]
    return optuna.Trial(study, frozen._trial_id)


def pickled_study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The in-memory storage of an Optuna study pickled by an earlier metatune (before the
    record moved to an RDB storage), to copy it from.

    Private read: ``Study._storage``."""
    return study._storage


def searcher_study(searcher: OptunaSearch) -> optuna.Study | None:
    """The Optuna study ``searcher`` asks and tells. Private read: ``OptunaSearch._ot_study``."""
    study = getattr(searcher, "_ot_study", None)
    return study if isinstance(study, optuna.Study) else None


def searcher_sampler(searcher: OptunaSearch) -> optuna.samplers.BaseSampler | None:
    """The sampler ``searcher`` was given. Private read: ``OptunaSearch._sampler``."""
    sampler = getattr(searcher, "_sampler", None)
    return sampler if isinstance(sampler, optuna.samplers.BaseSampler) else None
