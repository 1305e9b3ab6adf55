"""The searcher: Ray's OptunaSearch with a complete Optuna record, and a concurrency limiter
that passes on the results of re-run trials."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from metatune.study._ray.optuna_seam import live_optuna_trial
from metatune.study.records import OUTCOME, TrialStatus, finite

__all__ = ["ATTR_OUTCOME", "ATTR_RETRY_OF", "ATTR_TUNE_ID", "StudyLimiter", "StudySearch"]

#: User attributes every Optuna trial carries, so Optuna's record reads on its own.
ATTR_TUNE_ID = "metatune.trial_id"
ATTR_OUTCOME = "metatune.outcome"
ATTR_RETRY_OF = "metatune.retry_of"

Result = Mapping[str, Any]


def _outcome_attrs(result: Result | None, *, error: bool) -> dict[str, Any]:
    if error:
        return {ATTR_OUTCOME: TrialStatus.ERROR.value}
    res = result or {}
    # No outcome: the scheduler (ASHA) cut the trial short.
    attrs: dict[str, Any] = {ATTR_OUTCOME: res.get(OUTCOME) or TrialStatus.STOPPED.value}
    for key in ("iteration", "diverged_at", "last_finite_loss"):
        if res.get(key) is not None:
            attrs[f"metatune.{key}"] = res[key]
    return attrs


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch with a complete Optuna record.

    Every Optuna trial carries its Tune trial id and, once finished, how it ended (completed,
    diverged with iteration and last finite loss, stopped by the scheduler, error). Ray's
    searcher drops the result of a trial it already told as failed, so a trial that errored
    and then finished on a retry (``metatune resume`` re-runs errored trials) would stay
    invisible to the sampler: it is added as a new COMPLETE Optuna trial with the same params.
    """

    def __init__(
        self,
        *,
        space: Callable[[optuna.Trial], dict[str, Any] | None],
        metric: str,
        mode: str,
        sampler: optuna.samplers.BaseSampler,
        points_to_evaluate: list[dict[str, Any]] | None,
    ) -> None:
        super().__init__(
            space=space, metric=metric, mode=mode, sampler=sampler, points_to_evaluate=points_to_evaluate
        )
        # Ours, so no private reads: Tune trials told to Optuna, and the last step reported per
        # trial. OptunaSearch.save pickles the searcher's __dict__, so both survive a restore.
        self._told: set[str] = set()
        self._last_steps: dict[str, int] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        ot_trial = live_optuna_trial(self, trial_id)
        if config is not None and ot_trial is not None:
            ot_trial.set_user_attr(ATTR_TUNE_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._told:
            return  # progress of a retried trial: only its final result matters to Optuna
        # A trial restored from a checkpoint may report a step again; Optuna would warn.
        step = result.get("training_iteration", 0)
        if step <= self._last_steps.get(trial_id, -1):
            return
        self._last_steps[trial_id] = step
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        ot_trial = live_optuna_trial(self, trial_id)
        if ot_trial is None:
            return super().on_trial_complete(trial_id, result, error)
        attrs = _outcome_attrs(result, error=error)
        if trial_id not in self._told:
            for key, value in attrs.items():
                ot_trial.set_user_attr(key, value)
            self._told.add(trial_id)
            return super().on_trial_complete(trial_id, result, error)
        value = finite((result or {}).get(self.metric))
        if error or value is None:
            return
        study = ot_trial.study
        first = study.trials[ot_trial.number]
        study.add_trial(
            optuna.trial.create_trial(
                params=first.params,
                distributions=first.distributions,
                value=value,
                user_attrs={**first.user_attrs, **attrs, ATTR_RETRY_OF: first.number},
            )
        )


class StudyLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter drops the result of a trial it no longer counts as live, which
    is every trial re-run by ``metatune resume`` after an error; pass those on to Optuna.

    (The limiter always limits here: OptunaSearch does not take over concurrency itself.)"""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id not in self.live_trials:
            return self.searcher.on_trial_complete(trial_id, result=result, error=error)
        return super().on_trial_complete(trial_id, result=result, error=error)
