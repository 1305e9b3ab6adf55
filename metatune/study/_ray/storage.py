"""What a study keeps in Tune's storage, read and written here: a trial's final report
(replayed if the trial runs again), our error marker, Tune's experiment snapshot, the
checkpoints to prune, and Optuna's record in the saved searcher state."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
from ray import tune
from ray.tune.experiment import Trial

from metatune.atomic_files import write_atomic
from metatune.study.records import OUTCOME, TrialRecord, TuneStatus
from metatune.study.resolved import Study

__all__ = [
    "ERROR_MARKER",
    "FINAL_FILE",
    "OPTUNA_FILE",
    "ErrorMarker",
    "can_resume",
    "error_marker",
    "local_trial_dir",
    "mark_error",
    "open_storage",
    "optuna_storage_url",
    "optuna_trials",
    "prune_checkpoints",
    "snapshot_trials",
    "store_final",
    "store_latest_checkpoint",
    "stored_final",
    "stored_latest_checkpoint",
]

log = logging.getLogger(__name__)

#: In a finished trial's storage folder: its final report, replayed if the trial runs again.
FINAL_FILE = "final.json"
#: In a trial's storage folder: the checkpoint of its latest report, written before the report.
#: Tune can hand a retried worker an older checkpoint than the last result it logged (seen: a
#: worker killed right after reporting iteration 250 was retried from 200), so a restart
#: takes whichever of the two is further on: nothing is trained twice.
LATEST_CHECKPOINT_FILE = "latest_checkpoint.pt"
#: In the study folder: Optuna's record of the study (an RDB storage; optuna-dashboard reads it).
OPTUNA_FILE = "optuna.db"
#: Written into a trial's folder when it ends in error (see mark_error).
ERROR_MARKER = "metatune_error.json"
#: What the error marker holds: when, retries so far, the error's last line.
ErrorMarker = dict[str, Any]


# ---------------------------------------------------------------------- inside a trial
def _trial_storage() -> tuple[pafs.FileSystem, str]:
    """The storage filesystem (local, NFS or object store, as pyarrow sees it) and this trial's
    folder on it: the same place Tune persists the trial's checkpoints."""
    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def _store(name: str, data: bytes) -> None:
    """Write ``name`` into the trial's storage folder whole or not at all."""
    fs, trial_dir = _trial_storage()
    fs.create_dir(trial_dir, recursive=True)
    tmp = f"{trial_dir}/.{name}.tmp"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        # A rename: a reader never sees half a file (object stores copy; still one visible write).
        fs.move(tmp, f"{trial_dir}/{name}")
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)  # a full disk needs that space back
        raise


def store_final(text: str) -> None:
    _store(FINAL_FILE, text.encode())


def store_latest_checkpoint(data: bytes) -> None:
    _store(LATEST_CHECKPOINT_FILE, data)


def stored_latest_checkpoint(dest: Path) -> bool:
    """Copy the trial's latest checkpoint to ``dest``; False when there is none."""
    fs, trial_dir = _trial_storage()
    path = f"{trial_dir}/{LATEST_CHECKPOINT_FILE}"
    if fs.get_file_info(path).type != pafs.FileType.File:
        return False
    with fs.open_input_stream(path) as f:
        dest.write_bytes(f.read())
    return True


def stored_final() -> dict[str, Any] | None:
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


# ---------------------------------------------------------------------- the error marker
def local_trial_dir(trial: Trial) -> Path | None:
    path = getattr(trial, "path", None)
    return Path(path) if path and "://" not in str(path) and os.path.isdir(path) else None


def mark_error(trial: Trial, record: TrialRecord) -> None:
    """Ray 2.60 leaves a trial whose worker process died out of its next experiment snapshot
    (``TuneController._schedule_trial_stop`` returns before marking it), so storage keeps
    saying RUNNING and the error is lost when the study is read back. Record it ourselves."""
    d = local_trial_dir(trial)
    if d is None:
        return
    data = {"time": time.time(), "num_failures": record.num_failures, "error": record.error}
    write_atomic(d / ERROR_MARKER, json.dumps(data))


def error_marker(trial: Trial) -> ErrorMarker | None:
    d = local_trial_dir(trial)
    if d is None or not (d / ERROR_MARKER).is_file():
        return None
    try:
        data = json.loads((d / ERROR_MARKER).read_text())
        return {"time": float(data["time"]), "num_failures": int(data["num_failures"]), "error": data["error"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------- the experiment
def can_resume(study: Study) -> bool:
    return bool(tune.Tuner.can_restore(study.tune_path))


def snapshot_trials(study: Study) -> list[Trial]:
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


def prune_checkpoints(study: Study, *, keep: int = 2) -> int:
    """Delete old checkpoints of every trial (local storage, driver stopped); returns how many.

    A trial that Tune may run again (unfinished, or errored: `resume` retries it) restores
    from the checkpoint Tune's last snapshot records as its latest, which must stay, with any
    newer ones: those exist when the driver stopped before Tune registered them, and Tune
    writes over them as the trial runs again. Of a finished trial the newest ``keep`` stay."""
    if "://" in str(study.tune_path):
        return 0
    try:
        trials = snapshot_trials(study)
    except Exception as exc:  # noqa: BLE001 - unsure what resume restores from: delete nothing
        log.warning("checkpoints not pruned: Tune's experiment snapshot unreadable (%s)", exc)
        return 0
    restorable: dict[str, str | None] = {}
    for trial in trials:
        if trial.status == TuneStatus.TERMINATED:
            continue
        if trial.storage is None:
            continue  # (a trial read back from a snapshot always has its storage)
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


# ---------------------------------------------------------------------- Optuna's record
def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``; on sqlite, wait for a lock rather than fail at once
    (the dashboard may be reading)."""
    kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def optuna_storage_url(study: Study) -> str:
    """Where the study keeps Optuna's record: the study file's ``optuna.storage``, else
    ``<study>/optuna.db`` (sqlite), resolved from the study folder each time, so a moved or
    copied folder uses its own."""
    return study.spec.optuna.storage or f"sqlite:///{Path(study.dir) / OPTUNA_FILE}"


def optuna_trials(study: Study) -> list[optuna.trial.FrozenTrial]:
    """Optuna's record of the study (FrozenTrials), read from its RDB storage; [] before the
    first trial was asked for."""
    if study.spec.optuna.storage is None and not (Path(study.dir) / OPTUNA_FILE).is_file():
        return []
    storage = open_storage(optuna_storage_url(study))
    try:
        if study.name not in optuna.get_all_study_names(storage):
            return []
        return list(optuna.load_study(study_name=study.name, storage=storage).trials)
    finally:
        storage.remove_session()
        storage.engine.dispose()
