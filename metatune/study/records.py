"""One row per trial, built from what Ray Tune stored (config, status, last result).

The trainable's last report carries everything a view needs (training curves, robustness
curves, outcome), so MLflow runs, the Parquet file and the study table are all rebuilt from
Tune's experiment state alone. Non-finite numbers never appear: they become ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TrialRecord", "final_payload", "finite", "format_params", "intermediate_payload", "record_from_tune"]

#: Key of the final report that says how training ended ("completed" | "diverged").
OUTCOME = "outcome"


def finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def intermediate_payload(metrics: Mapping[str, float], *, metric: str, penalty: float) -> dict[str, Any]:
    """A periodic report: the trainer's finite metrics, with the study metric always present
    (a validation whose inner loop blew up reports the penalty instead of leaving it out)."""
    out = {k: v for k, v in metrics.items() if finite(v) is not None}
    if metric not in out:
        out[metric] = penalty
        out["val_nonfinite"] = 1.0
    return out


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
    diverged = status == "diverged"
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
            out["test_accuracy"] = finite(main["accuracy"]["mean"])
            out["test_accuracy_ci95"] = finite(main["accuracy"]["ci95"])
        scales = sorted(ev["lr_scale_curve"], key=float)
        curves["lr_scales"] = [float(s) for s in scales]
        curves["loss_by_lr_scale"] = [finite(ev["lr_scale_curve"][s]["mean"]) for s in scales]
        curves["loss_by_lr_scale_ci95"] = [finite(ev["lr_scale_curve"][s]["ci95"]) for s in scales]
        out["test_loss"] = finite(main["loss"]["mean"])
        out["test_loss_ci95"] = finite(main["loss"]["ci95"])
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
    #: pending | running | completed | diverged | stopped (by ASHA) | error
    status: str
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

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "diverged", "stopped", "error")

    @property
    def name(self) -> str:
        return f"{self.learner}-{self.trial_id}"

    def value(self, key: str) -> Any:
        """A table axis: a sampled knob (plain or per-learner name) or a record field."""
        if key == "learner":
            return self.learner
        if key in self.params:
            return self.params[key]
        branch = f"{self.learner}.{key}"
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
    if tune_status == "ERROR":
        status = "error"
    elif outcome in ("completed", "diverged"):
        status = outcome
    elif tune_status == "TERMINATED":
        status = "stopped"
    elif tune_status in ("RUNNING", "PAUSED"):
        status = "running"
    else:
        status = "pending"
    diverged = status == "diverged"
    metrics = {k: float(v) for k, v in res.items() if finite(v) is not None and k not in ("timestamp", "pid")}
    return TrialRecord(
        trial_id=trial_id,
        learner=str(config.get("learner", run_config.get("learner", {}).get("name", "?"))),
        params=params,
        run_config=dict(run_config),
        status=status,
        tune_status=tune_status,
        objective=finite(res.get(metric)),
        iteration=int(res["iteration"]) if finite(res.get("iteration")) is not None else None,
        val_loss=None if diverged or res.get("val_nonfinite") else finite(res.get("val_loss")),
        test_loss=finite(res.get("test_loss")),
        test_loss_ci95=finite(res.get("test_loss_ci95")),
        test_accuracy=finite(res.get("test_accuracy")),
        test_accuracy_ci95=finite(res.get("test_accuracy_ci95")),
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


def format_params(record: TrialRecord) -> str:
    """The searched hyperparameters of a trial, short (learner prefix and name dropped)."""
    parts = []
    for k, v in record.params.items():
        if k == "learner":
            continue
        k = k.split(".", 1)[1] if k.startswith(f"{record.learner}.") else k
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)
