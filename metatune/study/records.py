"""One row per trial, built from what Ray Tune stored (config, status, last result).

The trainable's last report carries everything a view needs (training curves, robustness
curves, outcome), so MLflow runs, the Parquet file and the study table are all rebuilt from
Tune's experiment state alone. Non-finite numbers never appear: they become ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Final

from metatune.study.param_names import LEARNER_KEY, SEED_KEY, branch_name, short_name

__all__ = [
    "FINISHED",
    "OUTCOME",
    "TEST_ACCURACY",
    "TEST_LOSS",
    "TRAIN_WINDOW",
    "VAL_ACCURACY",
    "VAL_LOSS",
    "TrialRecord",
    "TrialStatus",
    "TuneStatus",
    "final_payload",
    "finite",
    "format_params",
    "intermediate_payload",
    "record_from_tune",
    "window_columns",
]

#: Metric names: the study objective is one of the val_* ones, the table shows a test_* one.
VAL_LOSS: Final = "val_loss"
VAL_ACCURACY: Final = "val_accuracy"
TEST_LOSS: Final = "test_loss"
TEST_ACCURACY: Final = "test_accuracy"
#: Key of the final report that says how training ended ("completed" | "diverged").
OUTCOME = "outcome"
#: Key of a periodic report holding the training-curve entries (one per ``log_every``
#: iterations) since the previous report, as columns: the tracker logs them live.
TRAIN_WINDOW = "train_window"


class TrialStatus(StrEnum):
    """How a trial stands in every view (a str: files and MLflow tags keep the plain words)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    #: Stopped early by the scheduler (ASHA).
    STOPPED = "stopped"
    ERROR = "error"


#: The statuses a trial ends in.
FINISHED = (TrialStatus.COMPLETED, TrialStatus.DIVERGED, TrialStatus.STOPPED, TrialStatus.ERROR)


class TuneStatus(StrEnum):
    """Ray Tune's trial statuses, as Tune stores them."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def intermediate_payload(
    metrics: Mapping[str, float],
    *,
    metric: str,
    penalty: float,
    window: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A periodic report: the trainer's finite metrics, with the study metric always present
    (a validation whose inner loop blew up reports the penalty instead of leaving it out),
    and the history entries ``window`` since the last report (see TRAIN_WINDOW)."""
    out: dict[str, Any] = {k: v for k, v in metrics.items() if finite(v) is not None}
    if metric not in out:
        out[metric] = penalty
        out["val_nonfinite"] = 1.0
    if window:
        out[TRAIN_WINDOW] = window_columns(window)
    return out


def window_columns(window: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """History entries as columns ``{"iteration": [...], "train_loss": [...], ...}`` (a
    non-finite value as None), the shape of TRAIN_WINDOW."""
    keys = list(dict.fromkeys(k for entry in window for k in entry))
    return {k: [finite(e.get(k)) for e in window] for k in keys}


#: What a trial records of its compilation (engine.CompileStats.since): graphs compiled, of
#: them loaded from the persistent cache, and seconds spent in compiling calls.
COMPILE_FIELDS = ("compile_graphs", "compile_cache_hits", "compile_seconds")


def _curve(summaries: list[Mapping[str, Any]]) -> tuple[list[float | None], list[float | None]]:
    return [finite(s.get("mean")) for s in summaries], [finite(s.get("ci95")) for s in summaries]


def final_payload(
    result: Mapping[str, Any],
    *,
    metric: str,
    penalty: float,
    validation: Mapping[str, float] | None,
) -> dict[str, Any]:
    """The last report of a trial, from ``TrainResult.to_dict()`` and a final validation."""
    status = result["status"]
    diverged = status == TrialStatus.DIVERGED
    out: dict[str, Any] = {
        OUTCOME: status,
        "diverged": 1.0 if diverged else 0.0,
        "iteration": int(result["iterations"]),
        "diverged_at": result.get("diverged_at"),
        "last_finite_loss": finite(result.get("last_finite_loss")),
        "wall_time_s": float(result.get("wall_time_s") or 0.0),
    }
    compiled = result.get("compile") or {}
    if compiled:
        out["compiled"] = 1.0 if compiled.get("compiled") else 0.0
        for key in COMPILE_FIELDS:
            if compiled.get(key) is not None:
                out[key] = compiled[key]
    val = {k: finite(v) for k, v in (validation or {}).items()}
    for k, v in val.items():
        if v is not None and not diverged:
            out[k] = v
    if diverged or out.get(metric) is None:
        out[metric] = penalty
    # Training curve (one point per log_every iterations).
    history = result.get("history") or []
    keys: list[str] = []
    for entry in history:
        for k in entry:
            if k not in keys:
                keys.append(k)
    curves: dict[str, Any] = {"train": {k: [finite(e.get(k)) for e in history] for k in keys}}
    ev = result.get("evaluation")
    if ev:
        train_k = str(result["config"]["task"].get("shots", ""))
        by_shots = ev["by_shots"]
        shots = sorted(by_shots, key=int)
        curves["shots"] = [int(k) for k in shots]
        curves["loss_by_shots"] = [finite(by_shots[k]["loss"]["mean"]) for k in shots]
        curves["loss_by_shots_ci95"] = [finite(by_shots[k]["loss"]["ci95"]) for k in shots]
        main = by_shots.get(train_k) or by_shots[shots[0]]
        curves["loss_by_step"], curves["loss_by_step_ci95"] = _curve(main["loss_by_step"])
        if main.get("accuracy"):
            curves["accuracy_by_shots"] = [
                finite((by_shots[k].get("accuracy") or {}).get("mean")) for k in shots
            ]
            out[TEST_ACCURACY] = finite(main["accuracy"]["mean"])
            out[f"{TEST_ACCURACY}_ci95"] = finite(main["accuracy"]["ci95"])
        scales = sorted(ev["lr_scale_curve"], key=float)
        curves["lr_scales"] = [float(s) for s in scales]
        curves["loss_by_lr_scale"] = [finite(ev["lr_scale_curve"][s]["mean"]) for s in scales]
        curves["loss_by_lr_scale_ci95"] = [finite(ev["lr_scale_curve"][s]["ci95"]) for s in scales]
        out[TEST_LOSS] = finite(main["loss"]["mean"])
        out[f"{TEST_LOSS}_ci95"] = finite(main["loss"]["ci95"])
        out["test_nonfinite_tasks"] = int(main["loss"].get("nonfinite", 0))
        out["test_shots"] = int(main["shots"])
        out["test_tasks"] = int(ev["tasks"])
    out["curves"] = curves
    return out


@dataclass
class TrialRecord:
    """Everything known about one trial, independent of Ray."""

    trial_id: str
    learner: str
    #: The sampled configuration (Tune's trial config).
    params: dict[str, Any]
    #: The run config the trial trained (what ``metatune export`` writes).
    run_config: dict[str, Any]
    status: TrialStatus
    tune_status: str
    objective: float | None = None
    iteration: int | None = None
    val_loss: float | None = None
    test_loss: float | None = None
    test_loss_ci95: float | None = None
    test_accuracy: float | None = None
    test_accuracy_ci95: float | None = None
    diverged_at: int | None = None
    last_finite_loss: float | None = None
    wall_time_s: float | None = None
    #: Whether the trial trained compiled; its compile counter (see COMPILE_FIELDS).
    compiled: bool | None = None
    compile_graphs: int | None = None
    compile_cache_hits: int | None = None
    compile_seconds: float | None = None
    num_failures: int = 0
    error: str | None = None
    timestamp: float | None = None
    curves: dict[str, Any] = field(default_factory=dict)
    #: The intermediate metrics of the last report (for live views).
    last_metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = TrialStatus(self.status)  # a plain word (trial.json, a test) is one too

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def name(self) -> str:
        return f"{self.learner}-{self.trial_id}"

    def value(self, key: str) -> Any:
        """A table axis: a sampled knob (plain or per-learner name) or a record field."""
        if key == LEARNER_KEY:
            return self.learner
        if key in self.params:
            return self.params[key]
        branch = branch_name(self.learner, key)
        if branch in self.params:
            return self.params[branch]
        for section in ("learner", "training"):
            sec = self.run_config.get(section) or {}
            if key in sec:
                return sec[key]
        return getattr(self, key, None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_from_tune(
    trial_id: str,
    config: Mapping[str, Any],
    tune_status: str,
    last_result: Mapping[str, Any] | None,
    *,
    run_config: Mapping[str, Any],
    metric: str,
    num_failures: int = 0,
    error: str | None = None,
) -> TrialRecord:
    """Build a record from what Tune knows about a trial (live or read back from storage)."""
    res = dict(last_result or {})
    params = {k: v for k, v in config.items()}
    outcome = res.get(OUTCOME)
    if tune_status == TuneStatus.ERROR:
        status = TrialStatus.ERROR
    elif outcome in (TrialStatus.COMPLETED, TrialStatus.DIVERGED):
        status = TrialStatus(outcome)
    elif tune_status == TuneStatus.TERMINATED:
        status = TrialStatus.STOPPED
    elif tune_status in (TuneStatus.RUNNING, TuneStatus.PAUSED):
        status = TrialStatus.RUNNING
    else:
        status = TrialStatus.PENDING
    diverged = status == TrialStatus.DIVERGED
    metrics = {k: float(v) for k, v in res.items() if finite(v) is not None and k not in ("timestamp", "pid")}
    return TrialRecord(
        trial_id=trial_id,
        learner=str(config.get(LEARNER_KEY, run_config.get("learner", {}).get("name", "?"))),
        params=params,
        run_config=dict(run_config),
        status=status,
        tune_status=tune_status,
        objective=finite(res.get(metric)),
        iteration=int(res["iteration"]) if finite(res.get("iteration")) is not None else None,
        val_loss=None if diverged or res.get("val_nonfinite") else finite(res.get(VAL_LOSS)),
        test_loss=finite(res.get(TEST_LOSS)),
        test_loss_ci95=finite(res.get(f"{TEST_LOSS}_ci95")),
        test_accuracy=finite(res.get(TEST_ACCURACY)),
        test_accuracy_ci95=finite(res.get(f"{TEST_ACCURACY}_ci95")),
        diverged_at=int(res["diverged_at"]) if res.get("diverged_at") is not None else None,
        last_finite_loss=finite(res.get("last_finite_loss")),
        wall_time_s=finite(res.get("wall_time_s")) or finite(res.get("time_total_s")),
        compiled=bool(res["compiled"]) if finite(res.get("compiled")) is not None else None,
        compile_graphs=int(res["compile_graphs"]) if finite(res.get("compile_graphs")) is not None else None,
        compile_cache_hits=(
            int(res["compile_cache_hits"]) if finite(res.get("compile_cache_hits")) is not None else None
        ),
        compile_seconds=finite(res.get("compile_seconds")),
        num_failures=num_failures,
        error=error,
        timestamp=finite(res.get("timestamp")),
        curves=dict(res.get("curves") or {}),
        last_metrics=metrics,
    )


def format_params(record: TrialRecord, *, seed: bool = True) -> str:
    """The searched hyperparameters of a trial, short (learner prefix and name dropped);
    ``seed=False`` leaves out a replicate's seed (the configuration alone)."""
    parts = []
    for k, v in record.params.items():
        if k == LEARNER_KEY or (k == SEED_KEY and not seed):
            continue
        k = short_name(k, record.learner)
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)
