"""The searcher: Ray's OptunaSearch with a complete Optuna record kept in an RDB storage (the
study folder's ``optuna.db`` by default), and a concurrency limiter that passes on the results
of re-run trials."""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import optuna
import sqlalchemy.exc
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from metatune.study._ray.callback import driver_stop, stop_if_disk_refuses
from metatune.study._ray.optuna_seam import (
    live_optuna_trial,
    live_trials,
    pickled_study_storage,
    searcher_sampler,
    searcher_study,
    set_live_trials,
    trial_by_number,
)
from metatune.study._ray.storage import open_storage
from metatune.study.divergence import CONSTRAINT, DEFAULT_ENCODING, diverged_trial, tell_diverged
from metatune.study.records import OUTCOME, TrialStatus, finite

__all__ = [
    "ATTR_OUTCOME",
    "ATTR_RETRY_OF",
    "ATTR_TUNE_ID",
    "ATTR_WARM_START",
    "StudyLimiter",
    "StudySearch",
    "mark_lost_trials",
    "use_storage_url",
]

#: User attributes every Optuna trial carries, so Optuna's record reads on its own.
ATTR_TUNE_ID = "metatune.trial_id"
ATTR_OUTCOME = "metatune.outcome"
ATTR_RETRY_OF = "metatune.retry_of"
#: On a trial copied from another study's record (``optuna.warm_start``): that study's name.
ATTR_WARM_START = "metatune.warm_start_from"

Result = Mapping[str, Any]

#: The Optuna storage URL and study name of the study being driven (set by run_study before
#: Tune restores a searcher: a moved study folder has a new URL).
_CURRENT: list[tuple[str, str]] = []


#: The study folder of the study being driven (its disk is probed when the record fails).
_FOLDER: list[str] = []


def use_storage_url(url: str, study_name: str, *, folder: str) -> None:
    _CURRENT[:] = [(url, study_name)]
    _FOLDER[:] = [folder]


class RecordRefused(RuntimeError):
    """Optuna's record could not be written because the study folder's disk refuses writes."""


@contextlib.contextmanager
def _storage_guard() -> Iterator[None]:
    """A failed write to Optuna's record on a disk that refuses writes ends the experiment at
    once (raised through Tune's loop, which would otherwise wait forever for a trial the
    searcher cannot ask for; run_study then reports the disk); any other failure as before."""
    try:
        yield
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError, OSError) as exc:
        if not _FOLDER:
            raise
        stop_if_disk_refuses(_FOLDER[0])
        if driver_stop(_FOLDER[0]).disk_problem is None:
            raise
        raise RecordRefused(f"Optuna's record could not be written: {str(exc).splitlines()[0][:200]}") from None


def warm_start(url: str, study_name: str, *, source: str, trials: list[optuna.trial.FrozenTrial]) -> int:
    """Copy the COMPLETE and PRUNED ``trials`` of study ``source`` (params, distributions, value,
    user attributes, constraints) into this study's record, once: the sampler starts from them,
    diverged ones included. Returns how many."""
    storage = open_storage(url)
    target = optuna.load_study(study_name=study_name, storage=storage)
    if any(ATTR_WARM_START in t.user_attrs for t in target.get_trials(deepcopy=False)):
        return 0
    state = optuna.trial.TrialState
    done = [t for t in trials if (t.state == state.COMPLETE and t.value is not None) or t.state == state.PRUNED]
    target.add_trials([
        optuna.trial.create_trial(
            state=t.state, params=t.params, distributions=t.distributions, value=t.value,
            intermediate_values=t.intermediate_values,
            user_attrs={**t.user_attrs, ATTR_WARM_START: source}, constraints=t.constraints or None,
        )
        for t in done
    ])
    return len(done)


def mark_lost_trials(study: optuna.Study, *, live: set[int]) -> int:
    """Optuna trials left RUNNING that no Tune trial will finish (asked after the last Tune
    snapshot by a driver that then died, or of an experiment that started afresh) become FAIL,
    tagged ``lost``; returns how many."""
    lost = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.number in live:
            continue
        trial_by_number(study, t.number).set_user_attr(ATTR_OUTCOME, "lost")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        lost += 1
    return lost


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
    invisible to the sampler: it is added as a new Optuna trial with the same params.

    A diverged trial reaches Optuna as ``divergence`` says (metatune.study.divergence), not as
    Ray's COMPLETE at the finite penalty; the penalty is never an intermediate value.
    """

    #: Searchers pickled before ``divergence`` existed restore with the default.
    _divergence: str = DEFAULT_ENCODING

    def __init__(
        self,
        *,
        space: Callable[[optuna.Trial], dict[str, Any] | None],
        metric: str,
        mode: str,
        sampler: optuna.samplers.BaseSampler,
        points_to_evaluate: list[dict[str, Any]] | None,
        storage_url: str,
        study_name: str,
        divergence: str = DEFAULT_ENCODING,
    ) -> None:
        super().__init__(
            space=space,
            metric=metric,
            mode=mode,
            sampler=sampler,
            points_to_evaluate=points_to_evaluate,
            storage=open_storage(storage_url),
            study_name=study_name,
        )
        # Ours, so no private reads: Tune trials told to Optuna, and the last step reported per
        # trial. save() pickles them with the searcher, so both survive a restore.
        self._told: set[str] = set()
        self._last_steps: dict[str, int] = {}
        self._optuna_study_name = study_name
        self._divergence = divergence
        study = searcher_study(self)
        if study is not None:  # a new experiment: nothing of an earlier start runs on
            mark_lost_trials(study, live=set())

    # --------------------------------------------------------------- save and restore
    def save(self, checkpoint_path: str) -> None:
        """Tune's snapshot of the searcher holds no Optuna record (that is in the RDB storage),
        only which Optuna trial (by number) each running Tune trial is, and the sampler."""
        state = self.__dict__.copy()
        state["_ot_study"] = state["_storage"] = None
        state["_ot_trials"] = {tid: t.number for tid, t in live_trials(self).items()}
        with open(checkpoint_path, "wb") as out:
            pickle.dump(state, out)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if not _CURRENT:
            raise RuntimeError("the study's Optuna storage is not set (use_storage_url)")
        url, name = _CURRENT[0]
        self._optuna_study_name = name
        storage = open_storage(url)
        pickled = searcher_study(self)
        if pickled is not None and name not in optuna.get_all_study_names(storage):
            # Saved before Optuna's record moved to the RDB storage: the whole record is in the
            # pickle; copy it over once.
            optuna.copy_study(from_study_name=pickled.study_name, from_storage=pickled_study_storage(pickled),
                              to_storage=storage, to_study_name=name)
        numbers = {tid: (t.number if isinstance(t, optuna.Trial) else int(t)) for tid, t in live_trials(self).items()}
        study = optuna.load_study(study_name=name, storage=storage, sampler=searcher_sampler(self))
        trials = {tid: trial_by_number(study, n) for tid, n in numbers.items()}
        set_live_trials(self, study=study, storage=storage, trials=trials)
        mark_lost_trials(study, live=set(numbers.values()))
        # The record (an RDB) can be ahead of Tune's snapshot, which holds ``_told``: a driver
        # killed after telling Optuna and before the snapshot. Such trials count as told, once,
        # here: a replayed final report then goes to the retry path, which skips a COMPLETE one.
        finished = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._told |= {tid for tid, n in numbers.items() if n in finished}

    # --------------------------------------------------------------- Tune's calls, guarded
    # Optuna's record is a database file in the study folder: on a full or read-only disk every
    # write to it fails. Then the driver stops the study (as for any write the disk refuses);
    # `resume` replays what the record missed (a finished trial's final report is stored beside
    # its checkpoints) from the last good Tune snapshot.
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        with _storage_guard():
            return self._suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        with _storage_guard():
            self._on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        with _storage_guard():
            self._on_trial_complete(trial_id, result, error)

    def _suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        ot_trial = live_optuna_trial(self, trial_id)
        if config is not None and ot_trial is not None:
            ot_trial.set_user_attr(ATTR_TUNE_ID, trial_id)
        return config

    def _on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._told:
            return  # progress of a retried trial: only its final result matters to Optuna
        # Keyed by training iteration, not Tune's report index, so Optuna's intermediate-value
        # plot reads in iterations. A trial restored from a checkpoint may report a step again
        # (Optuna would warn). A diverged report, or one whose validation was not finite, carries
        # the finite penalty, which is no validation loss: a pruned trial's value would be it.
        if finite(result.get("diverged")) or finite(result.get("val_nonfinite")):
            return
        step = result.get("iteration", result.get("training_iteration", 0))
        ot_trial = live_optuna_trial(self, trial_id)
        value = finite(result.get(self.metric))
        if ot_trial is None or value is None or step is None or step <= self._last_steps.get(trial_id, -1):
            return
        self._last_steps[trial_id] = int(step)
        ot_trial.report(value, int(step))

    def _on_trial_complete(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> None:
        ot_trial = live_optuna_trial(self, trial_id)
        if ot_trial is None:
            return super().on_trial_complete(trial_id, result, error)
        attrs = _outcome_attrs(result, error=error)
        diverged = attrs[ATTR_OUTCOME] == TrialStatus.DIVERGED
        value = finite((result or {}).get(self.metric))
        constrained = self._divergence == "constraint"
        if trial_id not in self._told:
            for key, attr in attrs.items():
                ot_trial.set_user_attr(key, attr)
            self._told.add(trial_id)
            if diverged and value is not None:
                # Ray's OptunaSearch would tell COMPLETE at the penalty (the value reported).
                tell_diverged(ot_trial.study, ot_trial, encoding=self._divergence, penalty=value)
                return None
            if constrained and not error:
                ot_trial.set_constraint(CONSTRAINT, 0.0)  # feasible
            return super().on_trial_complete(trial_id, result, error)
        if error or value is None:
            return None
        study = ot_trial.study
        first = study.trials[ot_trial.number]
        if first.state == optuna.trial.TrialState.COMPLETE or first.user_attrs.get(ATTR_OUTCOME) == TrialStatus.DIVERGED:
            return None  # a replay of a final report Optuna already has (its Tune snapshot was older)
        user_attrs = {**first.user_attrs, **attrs, ATTR_RETRY_OF: first.number}
        if diverged:
            study.add_trial(diverged_trial(encoding=self._divergence, params=first.params,
                                           distributions=first.distributions, penalty=value, user_attrs=user_attrs))
            return None
        study.add_trial(
            optuna.trial.create_trial(
                params=first.params,
                distributions=first.distributions,
                value=value,
                user_attrs=user_attrs,
                constraints={CONSTRAINT: 0.0} if constrained else None,
            )
        )
        return None


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
