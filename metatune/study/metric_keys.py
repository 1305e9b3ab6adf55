"""What a trial's MLflow run shows: metric keys, their steps, and where a curve stops.

MLflow's chart view groups metrics by the prefix before ``/`` and puts the groups in name
order, with unprefixed metrics last; its runs table sorts columns by name too. So the keys are
chosen to sort: ``main/`` (the objective and the test and training loss: three charts, one row)
leads, then ``main_ci95/`` (their 95 % CIs) and the diagnostics ``robust/`` (robustness curves),
``run/`` (how the trial ran: divergence, time, compilation) and ``stats/`` (the learners'
per-step statistics).

Robustness curves are one metric each, against a meaningful integer step:

- ``robust/loss_vs_K``: step = K, the support shots;
- ``robust/loss_vs_inner_step`` and ``robust/log10_loss_vs_inner_step``: step = inner step;
- ``robust/loss_vs_lr_scale`` and ``robust/log10_loss_vs_lr_scale``: step = the inner learning
  rate in percent of the trained one, round(100 s) for scale s (100 is the trained rate, 10 a
  tenth of it, 1000 ten times it). MLflow steps are integers, and it draws a metric as a line
  only when a run's last step is at least 1 (else as one bar per run), so the steps stay
  positive; the chart's x axis can then be switched to a log scale.

A curve stops at its first point that is not finite or at least ``BLOWUP``, and that point is
returned as a note (the tracker tags it), so a diverged trial stretches no axis and nothing
ends silently. The log10 curves stop only where the loss is not finite or not positive.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "BLOWUP",
    "TEST_KEY",
    "diverged_key",
    "lead_first",
    "lr_scale_step",
    "mlflow_key",
    "progress_points",
    "trial_points",
]

Point = tuple[str, float, int]

#: Beyond this a loss has blown up (the default divergence penalty): no chart shows it.
BLOWUP = 1e6

MAIN = "main/"
MAIN_CI = "main_ci95/"
ROBUST = "robust/"
RUN = "run/"
#: The report keys that lead every view, in the ``main/`` group; their 95 % CIs
#: (``val_loss_ci95``) form the group after it, ``main_ci95/`` (``main_ci95/val_loss``).
_MAIN = ("train_loss", "val_loss", "val_accuracy", "test_loss", "test_accuracy")
#: How a trial ran: the ``run/`` group.
_RUN = (
    "diverged", "diverged_at", "last_finite_loss", "wall_time_s", "iterations",
    "compiled", "compile_graphs", "compile_cache_hits", "compile_seconds",
)


def mlflow_key(name: str) -> str:
    """The MLflow metric key of a report key (``val_loss`` -> ``main/val_loss``)."""
    if name in _MAIN:
        return MAIN + name
    if name.endswith("_ci95") and name[: -len("_ci95")] in _MAIN:
        return MAIN_CI + name[: -len("_ci95")]
    if name in _RUN:
        return RUN + name
    return name


TEST_KEY = mlflow_key("test_loss")


def diverged_key() -> str:
    return mlflow_key("diverged")


def lead_first(points: Sequence[Point]) -> list[Point]:
    """Validation, then test, then the other keys (stable). MLflow lists a run's metrics in
    the order each key was first logged, and its compare-runs page plots the first one the
    runs share: the objective, logged first."""

    def rank(point: Point) -> int:
        key = point[0]
        return 0 if key.startswith(MAIN + "val_") else 1 if key.startswith(MAIN + "test_") else 2

    return sorted(points, key=rank)


def lr_scale_step(scale: float) -> int:
    """The step of inner-lr scale ``scale``: percent of the trained rate."""
    return round(100 * scale)


def _bad(value: Any, *, log: bool = False) -> str | None:
    """Why ``value`` ends a curve, or None."""
    if value is None or not math.isfinite(value):
        return "not finite"
    if log and value <= 0:
        return "not positive"
    if not log and abs(value) >= BLOWUP:
        return f"{value:.3g} >= {BLOWUP:g}"
    return None


def _curve(
    key: str, pairs: Iterable[tuple[int, Any]], notes: list[str], *, log: bool = False
) -> list[Point]:
    """(step, value) pairs in order, up to the first bad one (noted)."""
    out: list[Point] = []
    for step, value in pairs:
        why = _bad(value, log=log)
        if why is not None:
            notes.append(f"{key} stops at step {step} ({why})")
            break
        out.append((key, math.log10(value) if log else float(value), int(step)))
    return out


def _log_too(
    key: str, pairs: Sequence[tuple[int, Any]], notes: list[str]
) -> list[Point]:
    """The curve on a linear axis and its log10 twin (a blow-up spans decades)."""
    log_key = key.replace(ROBUST, ROBUST + "log10_", 1)
    return _curve(key, pairs, notes) + _curve(log_key, pairs, notes, log=True)


def progress_points(entries: Mapping[str, Sequence[Any]], notes: list[str]) -> list[Point]:
    """Training-curve points from columns ``{"iteration": [...], "train_loss": [...], ...}``:
    every key's values against the iteration (a report's window, or the whole history)."""
    its = list(entries.get("iteration") or [])
    points: list[Point] = []
    for key, values in entries.items():
        if not (mlflow_key(key).startswith((MAIN, MAIN_CI)) or key.startswith("stats/")):
            continue
        pairs = [(int(it), v) for it, v in zip(its, values) if it is not None]
        points += _curve(mlflow_key(key), pairs, notes)
    return points


def trial_points(
    curves: Mapping[str, Any], finals: Mapping[str, tuple[Any, int]], notes: list[str]
) -> list[Point]:
    """A finished trial's points: training curve, robustness curves, and the final values
    as ``{name: (value, step)}`` (None skipped, a blown-up one left out and noted)."""
    points = progress_points(curves.get("train") or {}, notes)
    shots = list(curves.get("shots") or [])
    points += _curve(ROBUST + "loss_vs_K", zip(shots, curves.get("loss_by_shots") or []), notes)
    points += _curve(ROBUST + "loss_vs_K_ci95", zip(shots, curves.get("loss_by_shots_ci95") or []), notes)
    steps = list(enumerate(curves.get("loss_by_step") or []))
    points += _log_too(ROBUST + "loss_vs_inner_step", steps, notes)
    scales = [lr_scale_step(s) for s in curves.get("lr_scales") or []]
    by_scale = sorted(zip(scales, curves.get("loss_by_lr_scale") or []), key=lambda p: p[0])
    points += _log_too(ROBUST + "loss_vs_lr_scale", by_scale, notes)
    for name, (value, step) in finals.items():
        if value is not None:
            points += _curve(mlflow_key(name), [(step, value)], notes)
    return points
