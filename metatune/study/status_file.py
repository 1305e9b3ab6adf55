"""``status.json`` in the study folder: the running driver's word on the study, for
``metatune status`` and for a rebuild that must leave a live study's runs alone.
The one module that writes or reads it."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metatune.atomic_files import write_atomic
from metatune.study.records import TrialRecord, TrialStatus

__all__ = ["STATUS_FILE", "best_record", "driver_running", "read_status", "write_status"]

STATUS_FILE = "status.json"
#: A driver on another host counts as live while its status is this fresh (seconds).
_REMOTE_FRESH_S = 120


def best_record(records: Sequence[TrialRecord], mode: str) -> TrialRecord | None:
    """The completed trial with the best objective, or None."""
    done = [r for r in records if r.status == TrialStatus.COMPLETED and r.objective is not None]
    if not done:
        return None
    return (min if mode == "min" else max)(done, key=lambda r: r.objective)  # type: ignore[arg-type,return-value]


def write_status(
    study_dir: Path,
    *,
    study: str,
    state: str,
    metric: str,
    mode: str,
    trials_planned: int,
    records: Sequence[TrialRecord],
    mlflow_errors: int,
) -> Path:
    """Replace the status file atomically (a reader never sees half of one)."""
    best = best_record(records, mode)
    data: dict[str, Any] = {
        "study": study,
        "state": state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "updated": time.time(),
        "trials_planned": trials_planned,
        "counts": {s.value: sum(r.status == s for r in records) for s in TrialStatus},
        "best": None
        if best is None
        else {"trial_id": best.trial_id, "learner": best.learner, metric: best.objective, "params": best.params},
        "mlflow_errors": mlflow_errors,
        "trials": {r.trial_id: r.status.value for r in records},
    }
    return write_atomic(study_dir / STATUS_FILE, json.dumps(data, indent=1, default=str))


def read_status(study_dir: Path) -> Mapping[str, Any] | None:
    """The last status a driver wrote; None when there is none (or it is unreadable)."""
    try:
        data = json.loads((study_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def driver_running(study_dir: Path) -> bool:
    """Whether a driver is running this study now (its status file, and its process when it
    runs on this host), so a rebuild leaves a live study's runs as they are."""
    status = read_status(study_dir)
    if status is None or status.get("state") != "running":
        return False
    if status.get("host") == socket.gethostname():
        try:
            os.kill(int(status["pid"]), 0)
        except (ProcessLookupError, KeyError, ValueError, TypeError):
            return False
        except PermissionError:
            return True
        return True
    return time.time() - float(status.get("updated", 0)) < _REMOTE_FRESH_S
