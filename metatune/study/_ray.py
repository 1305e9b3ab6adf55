"""The only module that imports Ray. Everything Ray-specific lives here: the trainable, the
Tuner (OptunaSearch + optional ASHA + failure/checkpoint config + storage), restore, the
driver-side callback, reading trials back from storage, and ``ray.init``.

Traps avoided (shared/docs/ecosystem.md §0): Tune classes come from ``ray.tune`` (never
``ray.train``); metric/mode are set on both OptunaSearch and TuneConfig (define-by-run); no
NaN ever reaches Tune, Optuna or ASHA (diverged trials report a finite penalty plus
``diverged=1``); a private local instance uses ``address="local"``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

# Set before Ray reads them: only the loggers we add (no TensorBoard for list-valued results),
# no warning about frequent experiment snapshots (we keep few checkpoints on purpose).
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Snapshot the experiment (trial states + searcher) every second instead of Tune's adaptive
# 10 s or more: a driver killed with SIGKILL then loses at most a second of bookkeeping, so a
# trial that finished is not run again and a started one is not forgotten. Remote storage
# still uploads on its own, slower sync period.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

import optuna  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from metatune.errors import ConfigError  # noqa: E402
from metatune.study.records import (  # noqa: E402
    OUTCOME,
    TrialRecord,
    finite,
    final_payload,
    intermediate_payload,
    record_from_tune,
)
from metatune.study.spec import FROZEN_FILE, TUNE_NAME, Study, parse_study  # noqa: E402

__all__ = ["StudySearch", "can_resume", "init_ray", "optuna_trials", "prune_checkpoints", "read_records", "run_study", "shutdown_ray"]

#: In a finished trial's storage folder: its final report, replayed if the trial runs again.
FINAL_FILE = "final.json"

log = logging.getLogger(__name__)

#: Live monitors by study folder: the callback (pickled with the experiment) finds its
#: monitor here, so a restored experiment reports to the new driver's monitor.
_MONITORS: dict[str, Any] = {}


# ---------------------------------------------------------------------- the trainable
def _run_trial(frozen: dict[str, Any], config: dict[str, Any]) -> None:
    from metatune.config import parse_config
    from metatune.trial import CHECKPOINT_FILE, Trainer, to_json

    study = parse_study(frozen, source=FROZEN_FILE)
    if os.path.isdir(study.cwd):
        os.chdir(study.cwd)  # relative task paths resolve as in the driver
    components = parse_config(study.run_config_for(config))
    stored = _stored_final()
    if stored is not None:
        # The trial had finished, but the driver died before Tune's experiment snapshot
        # recorded it (or even before the final result reached the driver): report the stored
        # outcome again instead of training again.
        tune.report({**stored, "replayed": 1.0})
        return
    checkpoint = tune.get_checkpoint()
    trainer = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer = Trainer.restore(Path(d) / CHECKPOINT_FILE, components)
    if trainer is None:
        trainer = Trainer(components)

    def report(metrics: dict[str, float], tr: Any) -> None:
        if tr.iteration >= components.config.training.iterations:
            # The final report below carries this validation. Sent twice, ASHA would stop the
            # trial at max_t before its test evaluation arrives.
            return
        payload = intermediate_payload(metrics, metric=study.metric, penalty=study.penalty)
        with tempfile.TemporaryDirectory(prefix="metatune-ckpt-") as d:
            tr.save(Path(d) / CHECKPOINT_FILE)
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(d))

    result = trainer.train(report=report)
    validation = None
    if result.status == "completed":
        last = result.history[-1] if result.history else {}
        if last.get("iteration") == result.iterations and "val_loss" in last:
            validation = {k: last[k] for k in ("val_loss", "val_loss_ci95", "val_accuracy") if k in last}
        else:
            validation = trainer.validate()
    payload = final_payload(result.to_dict(), metric=study.metric, penalty=study.penalty, validation=validation)
    # Stored before it is reported: Tune records a trial's end (and its latest checkpoint) only
    # at its next experiment snapshot, so a driver killed in between would restart the trial
    # from an earlier checkpoint and train its last stretch again.
    _store_final(to_json(payload))
    tune.report(payload)


def _trial_storage() -> tuple[Any, str]:
    """The storage filesystem (local, NFS or object store, as pyarrow sees it) and this trial's
    folder on it: the same place Tune persists the trial's checkpoints."""
    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def _store_final(text: str) -> None:
    fs, trial_dir = _trial_storage()
    fs.create_dir(trial_dir, recursive=True)
    tmp = f"{trial_dir}/.{FINAL_FILE}.tmp"
    with fs.open_output_stream(tmp) as out:
        out.write(text.encode())
    # A rename: a reader never sees half a file (object stores copy; still one visible write).
    fs.move(tmp, f"{trial_dir}/{FINAL_FILE}")


def _stored_final() -> dict[str, Any] | None:
    import pyarrow.fs as pafs

    fs, trial_dir = _trial_storage()
    path = f"{trial_dir}/{FINAL_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        text = f.read().decode(errors="replace")
    try:
        stored = json.loads(text)
    except json.JSONDecodeError:
        log.warning("%s is not JSON; the trial trains again", path)
        return None
    return stored if isinstance(stored, dict) and OUTCOME in stored else None


def make_trainable(study: Study) -> Any:
    frozen = study.frozen()

    def metatune_trial(config: dict[str, Any]) -> None:
        _run_trial(frozen, config)

    res = study.spec.resources
    resources = {"cpu": res.cpus}
    if res.gpus:
        resources["gpu"] = res.gpus
    return tune.with_resources(metatune_trial, resources)


# ---------------------------------------------------------------------- records
def _error_text(trial: Any) -> str | None:
    """The last line of the trial's error file (live: Tune's staging copy; read back: the
    trial folder in storage, as Tune's own property needs a running Ray there)."""
    md = getattr(trial, "run_metadata", None)
    name = getattr(md, "error_filename", None) if md is not None else None
    candidates = []
    d = _local_trial_dir(trial)
    if d is not None and name:
        candidates.append(d / name)
    if ray.is_initialized():
        try:
            candidates.append(trial.error_file)
        except Exception:  # noqa: BLE001 - a missing staging dir just means no text
            pass
    for path in candidates:
        try:
            text = Path(path).read_text(errors="replace").strip()
        except (OSError, TypeError):
            continue
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else text
    return "trial failed" + (f" (see {name})" if name else "")


def _record(
    study: Study, trial: Any, *, status: str | None = None, result: dict | None = None
) -> TrialRecord | None:
    config = dict(trial.config or {})
    if "learner" not in config:
        return None  # not yet suggested
    try:
        run_config = study.run_config_for(config)
    except ConfigError:
        return None
    tune_status = status or trial.status
    md = getattr(trial, "run_metadata", None)
    num_failures = int(getattr(md, "num_failures", 0) or 0)
    error = _error_text(trial) if tune_status == "ERROR" else None
    marker = _error_marker(trial)
    if status is None and tune_status not in ("TERMINATED", "ERROR") and marker:
        # Tune's snapshot can be stale for a trial whose worker died (see _mark_error).
        if marker["time"] >= float(getattr(md, "last_result_time", 0) or 0):
            tune_status, error = "ERROR", marker["error"]
            num_failures = max(num_failures, int(marker["num_failures"]))
    return record_from_tune(
        trial.trial_id,
        config,
        tune_status,
        result if result is not None else trial.last_result,
        run_config=run_config,
        metric=study.metric,
        num_failures=num_failures,
        error=error,
    )


#: Written into a trial's folder when it ends in error (see _mark_error).
ERROR_MARKER = "metatune_error.json"


def _local_trial_dir(trial: Any) -> Path | None:
    path = getattr(trial, "path", None)
    return Path(path) if path and "://" not in str(path) and os.path.isdir(path) else None


def _mark_error(trial: Any, record: TrialRecord) -> None:
    """Ray 2.60 leaves a trial whose worker process died out of its next experiment snapshot
    (``TuneController._schedule_trial_stop`` returns before marking it), so storage keeps
    saying RUNNING and the error is lost when the study is read back. Record it ourselves."""
    d = _local_trial_dir(trial)
    if d is None:
        return
    data = {"time": time.time(), "num_failures": record.num_failures, "error": record.error}
    tmp = d / f".{ERROR_MARKER}.tmp"
    tmp.write_text(json.dumps(data))
    os.replace(tmp, d / ERROR_MARKER)


def _error_marker(trial: Any) -> dict[str, Any] | None:
    d = _local_trial_dir(trial)
    if d is None or not (d / ERROR_MARKER).is_file():
        return None
    try:
        data = json.loads((d / ERROR_MARKER).read_text())
        return {"time": float(data["time"]), "num_failures": int(data["num_failures"]), "error": data["error"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _records(study: Study, trials: list[Any]) -> list[TrialRecord]:
    return [r for r in (_record(study, t) for t in trials) if r is not None]


def _guarded(method: Any) -> Any:
    """A bug or an outage in a view must never stop the study: log it and go on."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:  # noqa: BLE001
            log.exception(
                "metatune: updating the study views failed (the study goes on; "
                "`metatune report` rebuilds them)"
            )

    wrapper.__name__ = method.__name__
    return wrapper


class StudyCallback(tune.Callback):
    """Driver-side: forwards Tune events to the study's monitor (progress, MLflow, files)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _monitor(self) -> Any:
        return _MONITORS.get(self.key)

    @_guarded
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        mon = self._monitor()
        if mon is None:
            return
        rec = _record(mon.study, trial, result=result)
        if rec is not None:
            mon.trial_result(rec, result)

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finished(trials, trial, "TERMINATED")

    @_guarded
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        mon = self._monitor()
        rec = _record(mon.study, trial, status="ERROR") if mon is not None else None
        if rec is not None:
            _mark_error(trial, rec)
        self._finished(trials, trial, "ERROR")

    def _finished(self, trials: list, trial: Any, status: str) -> None:
        mon = self._monitor()
        if mon is None:
            return
        rec = _record(mon.study, trial, status=status)
        if rec is not None:
            others = [r for r in _records(mon.study, trials) if r.trial_id != rec.trial_id]
            mon.trial_finished(rec, others)

    @_guarded
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        mon = self._monitor()
        if mon is not None:
            mon.tick(lambda: _records(mon.study, trials))


def _trial_name(trial: Any) -> str:
    return f"{(trial.config or {}).get('learner', 'trial')}-{trial.trial_id}"


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


# ---------------------------------------------------------------------- the searcher
#: User attributes every Optuna trial carries, so Optuna's record reads on its own.
ATTR_TUNE_ID = "metatune.trial_id"
ATTR_OUTCOME = "metatune.outcome"
ATTR_RETRY_OF = "metatune.retry_of"


def _outcome_attrs(result: dict | None, *, error: bool) -> dict[str, Any]:
    if error:
        return {ATTR_OUTCOME: "error"}
    res = result or {}
    attrs: dict[str, Any] = {ATTR_OUTCOME: res.get(OUTCOME) or "stopped"}  # no outcome: ASHA cut it
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

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if config is not None and ot_trial is not None:
            ot_trial.set_user_attr(ATTR_TUNE_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:
            return  # progress of a retried trial: only its final result matters to Optuna
        # A trial restored from a checkpoint may report a step again; Optuna would warn.
        last = getattr(self, "_last_steps", None)
        if last is None:
            last = self._last_steps = {}
        step = result.get("training_iteration", 0)
        if step <= last.get(trial_id, -1):
            return
        last[trial_id] = step
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return super().on_trial_complete(trial_id, result, error)
        attrs = _outcome_attrs(result, error=error)
        if trial_id not in self._completed_trials:
            for key, value in attrs.items():
                ot_trial.set_user_attr(key, value)
            return super().on_trial_complete(trial_id, result, error)
        value = finite((result or {}).get(self.metric))
        if error or value is None:
            return
        first = self._ot_study.trials[ot_trial.number]
        self._ot_study.add_trial(
            optuna.trial.create_trial(
                params=first.params,
                distributions=first.distributions,
                value=value,
                user_attrs={**first.user_attrs, **attrs, ATTR_RETRY_OF: first.number},
            )
        )


class StudyLimiter(ConcurrencyLimiter):
    """Tune's ConcurrencyLimiter drops the result of a trial it no longer counts as live, which
    is every trial re-run by ``metatune resume`` after an error; pass those on to Optuna."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self._limit_concurrency and trial_id not in self.live_trials:
            return self.searcher.on_trial_complete(trial_id, result=result, error=error)
        return super().on_trial_complete(trial_id, result=result, error=error)


# ---------------------------------------------------------------------- the tuner
def build_tuner(study: Study, trainable: Any) -> Any:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from metatune.study.sampler import make_sampler

    s = study.spec
    sampler = make_sampler(
        s.sampler.name, seed=study.sampler_seed, space=study.space, startup_trials=s.sampler.startup_trials
    )
    searcher = StudySearch(
        space=study.space,
        metric=study.metric,
        mode=study.mode,
        sampler=sampler,
        points_to_evaluate=study.initial_points or None,
    )
    scheduler = None
    if s.scheduler.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="iteration",
            max_t=s.scheduler.max_t or s.training.iterations,
            grace_period=s.scheduler.grace_period or s.training.eval_every,
            reduction_factor=s.scheduler.reduction_factor,
        )
    tune_config = tune.TuneConfig(
        metric=study.metric,
        mode=study.mode,
        search_alg=StudyLimiter(searcher, max_concurrent=s.max_concurrent_trials)
        if s.max_concurrent_trials
        else searcher,
        scheduler=scheduler,
        num_samples=study.num_trials,
        max_concurrent_trials=None,  # StudyLimiter above
        trial_name_creator=_trial_name,
        trial_dirname_creator=_trial_dirname,
        reuse_actors=True,  # a new trial skips the worker start-up (torch import) when it can
    )
    run_config = tune.RunConfig(
        name=TUNE_NAME,
        storage_path=study.tune_root,
        failure_config=tune.FailureConfig(max_failures=s.max_failures),
        # Tune would delete old checkpoints itself (num_to_keep), but after a killed driver its
        # restored list can name a folder already deleted, and Tune then fails to register the
        # new checkpoint (FileNotFoundError). We prune after each driver run instead.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        callbacks=[StudyCallback(str(study.dir)), JsonLoggerCallback(), CSVLoggerCallback()],
        verbose=0,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def can_resume(study: Study) -> bool:
    return bool(tune.Tuner.can_restore(study.tune_path))


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    verbose: bool = False,
) -> None:
    """A private local instance (``address="local"``: never a cluster an earlier ``ray start``
    left behind) unless an address is given."""
    _quiet_libraries(verbose)
    if ray.is_initialized():
        return
    common: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.WARNING,
    )
    if address in (None, "", "local"):
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **common)
    else:
        ray.init(address=address, **common)


def _quiet_libraries(verbose: bool) -> None:
    import optuna

    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Ray logs this when the grid sampler has handed out every point: expected, harmless.
        logging.getLogger("ray.tune.search.optuna.optuna_search").addFilter(
            lambda record: "Study.stop" not in record.getMessage()
        )


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


def run_study(study: Study, monitor: Any, *, resume: bool = False) -> dict[str, int]:
    """Run (or resume) the study's Tune experiment to the end. Returns counts of Tune statuses."""
    trainable = make_trainable(study)
    key = str(study.dir)
    _MONITORS[key] = monitor
    try:
        if resume and can_resume(study):
            tuner = tune.Tuner.restore(
                study.tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = build_tuner(study, trainable)
        grid = tuner.fit()
    finally:
        _MONITORS.pop(key, None)
        prune_checkpoints(study)
    counts: dict[str, int] = {}
    for res in grid:
        status = "ERROR" if res.error else "TERMINATED"
        counts[status] = counts.get(status, 0) + 1
    return counts


def prune_checkpoints(study: Study, *, keep: int = 2) -> int:
    """Delete old checkpoints of every trial (local storage, driver stopped); returns how many.

    A trial that Tune may run again (unfinished, or errored: `resume` retries it) restores
    from the checkpoint Tune's last snapshot records as its latest, which must stay, with any
    newer ones: those exist when the driver stopped before Tune registered them, and Tune
    writes over them as the trial runs again. Of a finished trial the newest ``keep`` stay."""
    if "://" in str(study.tune_path):
        return 0
    try:
        trials = _snapshot_trials(study)
    except Exception as exc:  # noqa: BLE001 - unsure what resume restores from: delete nothing
        log.warning("checkpoints not pruned: Tune's experiment snapshot unreadable (%s)", exc)
        return 0
    restorable: dict[str, str | None] = {}
    for trial in trials:
        if trial.status == "TERMINATED":
            continue
        path = Path(trial.checkpoint.path) if trial.checkpoint is not None else None
        restorable[Path(trial.storage.trial_fs_path).name] = path.name if path else None
    removed = 0
    for trial_dir in Path(study.tune_path).glob("trial-*"):
        checkpoints = sorted(trial_dir.glob("checkpoint_*"))
        if trial_dir.name in restorable:
            latest = restorable[trial_dir.name]
            if latest is None:  # it starts over: whatever is here gets written over
                continue
            checkpoints = [c for c in checkpoints if c.name <= latest]
        # (A folder the snapshot never saw is a trial Tune will not run: nothing to restore.)
        for old in checkpoints[:-keep] if keep else checkpoints:
            shutil.rmtree(old, ignore_errors=True)
            removed += 1
    return removed


# ---------------------------------------------------------------------- reading storage
def read_records(study: Study) -> list[TrialRecord]:
    """Every trial of the study, read from the Tune experiment (no Ray instance needed)."""
    return _records(study, _snapshot_trials(study))


def _snapshot_trials(study: Study) -> list[Any]:
    """Tune's trials as its last experiment snapshot has them; [] before the first one."""
    from ray.tune import ExperimentAnalysis

    try:
        if not tune.Tuner.can_restore(study.tune_path):
            return []
    except Exception:  # noqa: BLE001 - a missing or unreachable folder means no trials yet
        return []
    # We use the trials' last results and checkpoints. Tune also reads every result.json into
    # dataframes we never use, and warns about one a killed driver never wrote; that warning
    # would only alarm the user.
    quiet = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        analysis = ExperimentAnalysis(study.tune_path, default_metric=study.metric, default_mode=study.mode)
    finally:
        quiet.setLevel(level)
    return list(analysis.trials)


def optuna_trials(study: Study) -> list[Any]:
    """Optuna's record of the study (FrozenTrials), read from the searcher state Tune saved with
    its last experiment snapshot. Local storage only; [] before the first snapshot."""
    if "://" in str(study.tune_path):
        return []
    # One file per driver run, named by its start time (Tune rewrites them all, so no mtimes).
    states = sorted(Path(study.tune_path).glob("searcher-state-*.pkl"))
    if not states:
        return []
    with open(states[-1], "rb") as f:
        state = pickle.load(f)  # noqa: S301 - written by Tune for this study, like its own restore
    ot_study = state.get("_ot_study") if isinstance(state, dict) else None
    return list(ot_study.trials) if ot_study is not None else []
