"""Tune's trials as study records (live in the callback, or read back from storage)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray.tune.experiment import Trial

from metatune.errors import ConfigError
from metatune.study._ray.storage import error_marker, local_trial_dir, snapshot_trials
from metatune.study.param_names import LEARNER_KEY
from metatune.study.records import TrialRecord, TuneStatus, record_from_tune
from metatune.study.resolved import Study

__all__ = ["read_records", "record", "records"]


def _error_text(trial: Trial) -> str | None:
    """The last line of the trial's error file (live: Tune's staging copy; read back: the
    trial folder in storage, as Tune's own property needs a running Ray there)."""
    md = getattr(trial, "run_metadata", None)
    name = getattr(md, "error_filename", None) if md is not None else None
    candidates = []
    d = local_trial_dir(trial)
    if d is not None and name:
        candidates.append(d / name)
    if ray.is_initialized():
        # A missing staging dir just means no text.
        with contextlib.suppress(Exception):
            candidates.append(trial.error_file)
    for path in candidates:
        try:
            text = Path(path).read_text(errors="replace").strip()
        except (OSError, TypeError):
            continue
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Failure # ")]
        # One line for the terminal and the records; the whole error stays in the file. A
        # traceback ends with the exception; Ray's own errors (a dead worker) open with theirs.
        line = (lines[-1] if "Traceback" in text else lines[0]) if lines else "trial failed"
        last = line.strip()[:200]
        where = candidates[0] if d is not None and name else path
        return f"{last} (full error: {where})"
    return "trial failed" + (f" (see {name})" if name else "")


def record(
    study: Study, trial: Trial, *, status: str | None = None, result: Mapping[str, Any] | None = None
) -> TrialRecord | None:
    """The record of one Tune trial; None before it has been suggested a config."""
    config = dict(trial.config or {})
    if LEARNER_KEY not in config:
        return None  # not yet suggested
    try:
        run_config = study.plan.run_config_for(config)
    except ConfigError:
        return None
    tune_status = status or trial.status
    md = getattr(trial, "run_metadata", None)
    num_failures = int(getattr(md, "num_failures", 0) or 0)
    error = _error_text(trial) if tune_status == TuneStatus.ERROR else None
    marker = error_marker(trial)
    # Tune's snapshot can be stale for a trial whose worker died (see storage.mark_error).
    if (
        status is None
        and tune_status not in (TuneStatus.TERMINATED, TuneStatus.ERROR)
        and marker
        and marker["time"] >= float(getattr(md, "last_result_time", 0) or 0)
    ):
        tune_status, error = TuneStatus.ERROR, marker["error"]
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


def records(study: Study, trials: Iterable[Trial]) -> list[TrialRecord]:
    return [r for r in (record(study, t) for t in trials) if r is not None]


def read_records(study: Study) -> list[TrialRecord]:
    """Every trial of the study, read from the Tune experiment (no Ray instance needed)."""
    return records(study, snapshot_trials(study))
