"""The study table in the MT-net style: rows = a chosen axis (alpha), columns = learners,
cells = post-adaptation test loss mean ± 95 % CI, ``diverged`` where training diverged, with
published numbers beside ours when the study names a published table.

Pure Python: CSV (long form, one line per cell) and markdown (wide form) come from here; the
plot lives in :mod:`metatune.study.plots`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from metatune.study.param_names import SEED_KEY
from metatune.study.published import PublishedTable
from metatune.study.records import TrialRecord, TrialStatus
from metatune.study.replicates import config_key, seed_of, spread

__all__ = ["Cell", "StudyTable", "build_table"]


@dataclass
class Cell:
    row: Any
    learner: str
    mean: float | None = None
    ci95: float | None = None
    #: The status of the trial shown, or "empty" when the cell has none.
    status: TrialStatus | Literal["empty"] = "empty"
    trials: int = 0
    trial_id: str | None = None
    published: tuple[float, float | None] | None = None
    #: Seed replicates: the completed seeds averaged, their sd (n - 1), the trials shown, and
    #: how many seeds of the configuration diverged. ``ci95`` is then the mean per-seed CI.
    seeds: int = 1
    seed_sd: float | None = None
    trial_ids: list[str] = field(default_factory=list)
    diverged_seeds: int = 0
    seeded: bool = False

    def text(self) -> str:
        if self.status == TrialStatus.DIVERGED:
            return TrialStatus.DIVERGED.value
        if self.mean is None:
            return {"empty": "", TrialStatus.COMPLETED.value: "n/a"}.get(self.status, str(self.status))
        if self.seeded:  # "0.575 ± 0.055 (3 seeds, CI ± 0.060)": ± is the across-seed sd
            sd = f" ± {self.seed_sd:.3f}" if self.seed_sd is not None else ""
            ci = f", CI ± {self.ci95:.3f}" if self.ci95 is not None else ""
            div = f", {self.diverged_seeds} diverged" if self.diverged_seeds else ""
            seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
            return f"{self.mean:.3f}{sd} ({seeds}{ci}{div})" if abs(self.mean) < 1000 else f"{self.mean:.4g}{sd} ({seeds}{div})"
        ci = f" ± {_fmt_value(self.ci95)}" if self.ci95 is not None else ""
        return f"{_fmt_value(self.mean)}{ci}"


def _fmt_value(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 1000 else f"{v:.3g}"


def _fmt_row(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


@dataclass
class StudyTable:
    rows_axis: str
    value: str
    learners: list[str]
    rows: list[Any]
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    published: PublishedTable | None = None
    title: str = ""
    #: What a predictor that learns nothing scores, as (what it is, value).
    baseline: tuple[str, float] | None = None
    #: Every value of ours (and the baseline) was multiplied by this (``table.scale``).
    scale: float = 1.0

    def _compared(self, learner: str) -> bool:
        return self.published is not None and self.published.key_for(learner) is not None

    def cell(self, row: Any, learner: str) -> Cell:
        return self.cells.get((_fmt_row(row), learner)) or Cell(row, learner)

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                self.rows_axis,
                "learner",
                f"{self.value}_mean",
                f"{self.value}_ci95",
                "status",
                "trials",
                "trial_id",
                "published_mean",
                "published_ci95",
                "seeds",
                f"{self.value}_seed_sd",
                "diverged_seeds",
                "trial_ids",
            ]
        )
        for row in self.rows:
            for learner in self.learners:
                c = self.cell(row, learner)
                pub = c.published or (None, None)
                w.writerow(
                    [
                        _fmt_row(row),
                        learner,
                        _num(c.mean),
                        _num(c.ci95),
                        c.status,
                        c.trials,
                        c.trial_id or "",
                        _num(pub[0]),
                        _num(pub[1]),
                        c.seeds if c.mean is not None else 0,
                        _num(c.seed_sd),
                        c.diverged_seeds,
                        " ".join(c.trial_ids),
                    ]
                )
        return buf.getvalue()

    def to_markdown(self) -> str:
        head = [self.rows_axis]
        for learner in self.learners:
            head.append(learner)
            if self._compared(learner):
                head.append(f"{learner} (published)")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cols = [_fmt_row(row)]
            for learner in self.learners:
                c = self.cell(row, learner)
                cols.append(c.text())
                if self._compared(learner):
                    cols.append(_fmt_published(c.published))
            lines.append("| " + " | ".join(cols) + " |")
        out = "\n".join(lines) + "\n"
        if any(c.seeded for c in self.cells.values()):
            out += (
                "\nOurs: mean over training seeds ± the across-seed standard deviation (n - 1), with the "
                "number of seeds and the mean per-seed 95% CI over test tasks; published: as the paper "
                "gives them (below).\n"
            )
        if self.title:
            out = f"**{self.title}**\n\n" + out
        if self.baseline is not None:
            out += f"\nTrivial baseline: {self.baseline[0]} scores {self.baseline[1]:.3g} {self.value}.\n"
        if self.published is not None:
            out += (
                f"\nPublished: {self.published.title} ({self.published.source}); "
                f"trained with {self.published.budget}.\n"
            )
        return out


def _fmt_published(p: tuple[float, float | None] | None) -> str:
    if p is None:
        return ""
    return f"{p[0]:.2f}" + (f" ± {p[1]:.2f}" if p[1] is not None else "")


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _sort_key(v: Any) -> tuple[int, Any]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, -float(v))  # largest first, as in Table 6.2
    return (1, str(v))


def _observations(
    records: Sequence[TrialRecord], *, rows: str, value: str, scale: float = 1.0, shots: Sequence[int] = ()
) -> list[tuple[Any, TrialRecord, float | None, float | None]]:
    """(row value, trial, its value, its 95 % CI) for every cell a trial contributes to:
    one for a searched knob or 'best', one per test K for 'shots' (a trial not evaluated, such
    as a diverged seed, in each of ``shots`` and the Ks other trials have); values times ``scale``."""
    if scale != 1.0:
        return [
            (rv, r, None if v is None else v * scale, None if c is None else c * scale)
            for rv, r, v, c in _observations(records, rows=rows, value=value, shots=shots)
        ]
    out: list[tuple[Any, TrialRecord, float | None, float | None]] = []
    every_k = (
        sorted({int(k) for k in shots} | {int(k) for r in records for k in (r.curves or {}).get("shots") or []})
        if rows == "shots" else []
    )
    for r in records:
        if rows == "shots":
            curves = r.curves or {}
            ks = curves.get("shots") or []
            means = curves.get("accuracy_by_shots" if value == "test_accuracy" else "loss_by_shots") or []
            cis = [] if value == "test_accuracy" else curves.get("loss_by_shots_ci95") or []
            for i, k in enumerate(ks):
                out.append((int(k), r, means[i] if i < len(means) else None, cis[i] if i < len(cis) else None))
            # Not evaluated (running, diverged): it still counts in its learner's cells, so a
            # diverged seed is said, not silently left out of the K rows.
            out.extend((k, r, None, None) for k in ([] if ks else every_k))
            continue
        rv = "best" if rows == "best" else r.value(rows)
        if rv is not None:
            out.append((rv, r, getattr(r, value), getattr(r, f"{value}_ci95", None)))
    return out


_STATUS_ORDER = [TrialStatus.DIVERGED, TrialStatus.STOPPED, TrialStatus.ERROR, TrialStatus.RUNNING, TrialStatus.PENDING]


def _fill(cell: Cell, obs: list[tuple[TrialRecord, float | None, float | None]], *, sign: float) -> None:
    """A cell from its trials: the configuration with the best mean objective over its
    completed seeds, shown as its mean over seeds; else the most telling unfinished status."""
    by_config: dict[str, list[tuple[TrialRecord, float | None, float | None]]] = {}
    for o in obs:
        by_config.setdefault(config_key(o[0]), []).append(o)
    scored = []
    for key, items in by_config.items():
        done = [o for o in items if o[0].status == TrialStatus.COMPLETED]
        objs = [o[0].objective for o in done if o[0].objective is not None and math.isfinite(o[0].objective)]
        if done:
            scored.append((sign * (sum(objs) / len(objs)) if objs else math.inf, key, items, done))
    if scored:
        _, _, items, done = min(scored, key=lambda t: (t[0], t[1]))
        sp = spread((v, c) for _, v, c in done)
        cell.status = TrialStatus.COMPLETED
        cell.trial_ids = [o[0].trial_id for o in sorted(done, key=lambda o: (seed_of(o[0]) or 0))]
        cell.trial_id = cell.trial_ids[0]
        cell.diverged_seeds = sum(o[0].status == TrialStatus.DIVERGED for o in items)
        cell.seeded = any(SEED_KEY in o[0].params for o in items)
        if sp is None:
            if any(o[0].curves.get("loss_by_shots") for o in done):
                cell.status = TrialStatus.DIVERGED  # finished, but the test inner loop blew up
            return
        cell.mean, cell.ci95, cell.seed_sd, cell.seeds = sp.mean, sp.ci95, sp.sd, sp.seeds
        return
    statuses = {o[0].status for o in obs}
    cell.status = next((st for st in _STATUS_ORDER if st in statuses), "empty")
    first = next((o[0] for o in obs if o[0].status == cell.status), None)
    cell.trial_id = first.trial_id if first is not None else None
    cell.diverged_seeds = sum(o[0].status == TrialStatus.DIVERGED for o in obs)


def build_table(
    records: Sequence[TrialRecord],
    *,
    rows: str,
    learners: Sequence[str],
    value: str = "test_loss",
    mode: str = "min",
    published: PublishedTable | None = None,
    title: str = "",
    baseline: tuple[str, float] | None = None,
    scale: float = 1.0,
    planned_rows: Sequence[Any] | None = None,
) -> StudyTable:
    """Group trials by (row value, learner). Seed replicates of one configuration are one
    value (mean over seeds ± across-seed sd); several configurations in one cell (a sweep)
    show the one with the best mean objective. Rows are ``planned_rows`` (the study's grid)
    plus any other row a trial has; without a plan, the published table's rows too."""
    groups: dict[tuple[str, str], list[tuple[TrialRecord, float | None, float | None]]] = {}
    row_values: dict[str, Any] = {}
    planned_shots = [int(k) for k in planned_rows or ()] if rows == "shots" else []
    for rv, r, v, c in _observations(records, rows=rows, value=value, scale=scale, shots=planned_shots):
        if rv is None:
            continue
        groups.setdefault((_fmt_row(rv), r.learner), []).append((r, v, c))
        row_values.setdefault(_fmt_row(rv), rv)
    if planned_rows is not None:  # the study's own rows (its grid), trained yet or not
        for pr in planned_rows:
            row_values.setdefault(_fmt_row(pr), pr)
    elif published is not None and rows != "best":
        for pr in published.cells:
            row_values.setdefault(_fmt_row(float(pr) if rows != "shots" else int(pr)), float(pr) if rows != "shots" else int(pr))
    # Counts (K, inner steps) read upwards as in the papers; rates largest first (Table 6.2).
    counts = all(isinstance(v, int) and not isinstance(v, bool) for v in row_values.values())
    ordered = sorted(row_values.values(), key=(lambda v: (0, float(v))) if counts else _sort_key)
    table = StudyTable(
        rows_axis=rows, value=value, learners=list(learners), rows=ordered, published=published, title=title,
        baseline=None if baseline is None else (baseline[0], baseline[1] * scale), scale=scale,
    )
    sign = 1.0 if mode == "min" else -1.0
    for row in ordered:
        for learner in learners:
            key = (_fmt_row(row), learner)
            obs = groups.get(key, [])
            cell = Cell(row, learner, trials=len(obs))
            if published is not None and rows != "best":
                cell.published = published.get(row, learner)
            if obs:
                _fill(cell, obs, sign=sign)
            table.cells[key] = cell
    return table
