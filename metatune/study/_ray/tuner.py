"""The Tuner (searcher + optional scheduler + failure/checkpoint config + storage), restore,
and starting and stopping Ray.

Traps avoided (shared/docs/ecosystem.md §0): Tune classes come from ``ray.tune`` (never
``ray.train``); metric/mode are set on both OptunaSearch and TuneConfig (define-by-run); no
NaN ever reaches Tune, Optuna or ASHA (diverged trials report a finite penalty plus
``diverged=1``); a private local instance uses ``address="local"``.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from metatune.errors import ConfigError
from metatune.study._ray.callback import (
    StudyCallback,
    attach_monitor,
    detach_monitor,
    driver_stop,
    stop_if_disk_refuses,
)
from metatune.study._ray.live import LiveLog
from metatune.study._ray.searcher import StudyLimiter, StudySearch, use_storage_url, warm_start
from metatune.study._ray.snapshot import SnapshotCopier
from metatune.study._ray.storage import can_resume, optuna_storage_url, optuna_trials, prune_checkpoints
from metatune.study._ray.trainable import StudyTrainable, make_trainable
from metatune.study._ray.tune_logs import RestoreFailed, tune_logs_for_a_study
from metatune.study.param_names import LEARNER_KEY
from metatune.study.records import TuneStatus
from metatune.study.resolve import warm_start_source
from metatune.study.resolved import Study
from metatune.study.schema import TUNE_NAME
from metatune.study.strategies import SCHEDULERS, make_sampler

if TYPE_CHECKING:
    from metatune.study.monitor import StudyMonitor

__all__ = ["StudyRun", "build_tuner", "init_ray", "run_study", "shutdown_ray", "wait_for_a_node_that_fits"]

#: Tune settings, applied (unless the user set them) before a Tuner starts, never on import.
_TUNE_ENV = (
    # Only the loggers we add (no TensorBoard for list-valued results).
    ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1"),
    # No warning about frequent experiment snapshots (we keep few checkpoints on purpose).
    ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0"),
    ("RAY_AIR_NEW_OUTPUT", "0"),
    # Snapshot the experiment (trial states + searcher) every second instead of Tune's adaptive
    # 10 s or more: a driver killed with SIGKILL then loses at most a second of bookkeeping, so
    # a trial that finished is not run again and a started one is not forgotten. Remote
    # storage still uploads on its own, slower sync period.
    ("TUNE_GLOBAL_CHECKPOINT_S", "1"),
    # A failed trial is one line from the study monitor, naming its error file, not Tune's
    # traceback (a lost worker's ActorDiedError runs to dozens of lines).
    ("TUNE_PRINT_ALL_TRIAL_ERRORS", "0"),
)


def configure_tune_env() -> None:
    """Apply _TUNE_ENV; Tune reads these when a Tuner runs, so this runs before ray.init."""
    for key, value in _TUNE_ENV:
        os.environ.setdefault(key, value)


def _trial_name(trial: Trial) -> str:
    return f"{(trial.config or {}).get(LEARNER_KEY, 'trial')}-{trial.trial_id}"


def _trial_dirname(trial: Trial) -> str:
    return f"trial-{trial.trial_id}"


def _scheduler(study: Study) -> TrialScheduler | None:
    entry = SCHEDULERS[study.spec.scheduler.name]
    if entry.ray_class is None:
        return None
    module, _, name = entry.ray_class.partition(":")
    cls = getattr(importlib.import_module(module), name)
    scheduler: TrialScheduler = cls(**entry.options(study.spec))
    return scheduler


def build_tuner(study: Study, trainable: StudyTrainable) -> tune.Tuner:
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

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
        storage_url=optuna_storage_url(study),
        study_name=study.name,
        divergence=s.optuna.divergence,
    )
    source = warm_start_source(study)
    if source is not None:
        copied = warm_start(optuna_storage_url(study), study.name, source=source.name, trials=optuna_trials(source))
        print(f"  warm start: {copied} finished trial(s) of study '{source.name}' seed the sampler", flush=True)
    tune_config = tune.TuneConfig(
        metric=study.metric,
        mode=study.mode,
        search_alg=StudyLimiter(searcher, max_concurrent=s.max_concurrent_trials)
        if s.max_concurrent_trials
        else searcher,
        scheduler=_scheduler(study),
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


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    verbose: bool = False,
) -> None:
    """A private local instance (``address="local"``: never a cluster an earlier ``ray start``
    left behind) unless an address is given."""
    configure_tune_env()  # before ray.init: the local workers inherit the environment
    _quiet_libraries(verbose)
    if ray.is_initialized():
        return
    common: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    if address in (None, "", "local"):
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, **common)
    else:
        ray.init(address=address, **common)


def wait_for_a_node_that_fits(*, cpus: float, gpus: float, wait_s: float, poll_s: float = 5.0) -> None:
    """On a cluster: wait (bounded, saying so) until some alive node can run one trial; Tune
    itself would wait forever without a word. ConfigError (one line) once ``wait_s`` is up."""

    def largest() -> tuple[float, float, bool]:
        best_cpu = best_gpu = 0.0
        fits = False
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            cpu, gpu = float(res.get("CPU", 0)), float(res.get("GPU", 0))
            best_cpu, best_gpu = max(best_cpu, cpu), max(best_gpu, gpu)
            fits = fits or (cpu >= cpus and gpu >= gpus)
        return best_cpu, best_gpu, fits

    need = f"{cpus:g} CPU(s)" + (f" and {gpus:g} GPU(s)" if gpus else "")
    best_cpu, best_gpu, fits = largest()
    if fits:
        return
    print(f"  no node of the cluster has {need} for a trial yet (largest: {best_cpu:g} CPU, {best_gpu:g} GPU); "
          f"waiting up to {wait_s:.0f} s for one to join", flush=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        best_cpu, best_gpu, fits = largest()
        if fits:
            print("  a node that fits has joined", flush=True)
            return
    raise ConfigError(
        "resources.gpus" if best_cpu >= cpus else "resources.cpus",
        f"no node of the cluster provides {need} per trial after {wait_s:.0f} s (largest node: {best_cpu:g} CPU, "
        f"{best_gpu:g} GPU); lower `resources`, add nodes, or raise --wait-for-node",
    )


def _quiet_libraries(verbose: bool) -> None:
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Ray logs this when the grid sampler has handed out every point: expected, harmless.
        logging.getLogger("ray.tune.search.optuna.optuna_search").addFilter(
            lambda record: "Study.stop" not in record.getMessage()
        )
        # Ray announces, on every start, that token authentication is on by default: it stays
        # on (it guards the local instance against other users); the notice is dropped.
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
            lambda record: not record.getMessage().startswith("Token authentication is enabled")
        )


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True)
class StudyRun:
    """How one driver run of the study's Tune experiment ended."""

    #: Tune statuses of the trials and their counts; empty when Tune could not say (disk).
    counts: dict[str, int]
    #: Stopped by Ctrl-C.
    interrupted: bool = False
    #: Stopped because the study folder's disk refused writes: why.
    disk_problem: str | None = None


def run_study(study: Study, monitor: StudyMonitor, *, resume: bool = False) -> StudyRun:
    """Run (or resume) the study's Tune experiment until it ends or is stopped.

    Raises RestoreFailed when ``resume`` finds a snapshot Tune cannot read (Tune would start a
    new experiment); call ``repair_snapshot`` first, which puts the last good copy back."""
    configure_tune_env()
    live = LiveLog()
    trainable = make_trainable(study, live=live.sender())
    use_storage_url(optuna_storage_url(study), study.name, folder=str(study.dir))  # a restored searcher reopens it
    key = str(study.dir)
    attach_monitor(key, monitor, live=live)
    copier = SnapshotCopier(study)
    grid = None
    try:
        with tune_logs_for_a_study(resuming=resume, on_snapshot_failure=lambda: stop_if_disk_refuses(key)):
            if resume and can_resume(study):
                tuner = tune.Tuner.restore(
                    study.tune_path, trainable=trainable, resume_unfinished=True, resume_errored=True
                )
            else:
                tuner = build_tuner(study, trainable)
            try:
                grid = tuner.fit()
            except RestoreFailed:
                raise
            except Exception:
                # Once the disk refused writes, Tune's last steps (its final snapshot, reading
                # trial errors back into the result grid) fail too; the experiment is over and
                # what it recorded is on disk.
                if driver_stop(key).disk_problem is None:
                    raise
    finally:
        stop = driver_stop(key)
        detach_monitor(key)
        live.close()
        if grid is not None:
            copier.maybe_copy(force=True)  # Tune's final snapshot, whole
        if stop.disk_problem is None:
            prune_checkpoints(study)
    counts: dict[str, int] = {}
    for res in (grid[i] for i in range(len(grid))) if grid is not None else ():
        status = TuneStatus.ERROR if res.error else TuneStatus.TERMINATED
        counts[status.value] = counts.get(status.value, 0) + 1
    return StudyRun(counts=counts, interrupted=stop.interrupted, disk_problem=stop.disk_problem)
