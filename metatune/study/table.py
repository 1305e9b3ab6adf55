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

from metatune.study.published import PublishedTable
from metatune.study.records import TrialRecord, TrialStatus

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
    published: tuple[float, float] | None = None

    def text(self) -> str:
        if self.status == TrialStatus.DIVERGED:
            return TrialStatus.DIVERGED.value
        if self.mean is None:
            return {"empty": "", TrialStatus.COMPLETED.value: "n/a"}.get(self.status, str(self.status))
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
                    ]
                )
        return buf.getvalue()

    def to_markdown(self) -> str:
        head = [self.rows_axis]
        for learner in self.learners:
            head.append(learner)
            if self.published is not None and learner in self.published.learners:
                head.append(f"{learner} (published)")
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in self.rows:
            cols = [_fmt_row(row)]
            for learner in self.learners:
                c = self.cell(row, learner)
                cols.append(c.text())
                if self.published is not None and learner in self.published.learners:
                    cols.append(f"{c.published[0]:.2f} ± {c.published[1]:.2f}" if c.published else "")
            lines.append("| " + " | ".join(cols) + " |")
        out = "\n".join(lines) + "\n"
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


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _sort_key(v: Any) -> tuple[int, Any]:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, -float(v))  # largest first, as in Table 6.2
    return (1, str(v))


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
) -> StudyTable:
    """Group trials by (row value, learner). Several trials in one cell (a sweep) show the one
    with the best objective among those that did not diverge."""
    ci_key = f"{value}_ci95"
    groups: dict[tuple[str, str], list[TrialRecord]] = {}
    row_values: dict[str, Any] = {}
    for r in records:
        rv = "best" if rows == "best" else r.value(rows)
        if rv is None:
            continue
        key = (_fmt_row(rv), r.learner)
        groups.setdefault(key, []).append(r)
        row_values.setdefault(_fmt_row(rv), rv)
    if published is not None and rows != "best":
        for pr in published.cells:
            row_values.setdefault(_fmt_row(float(pr)), float(pr))
    ordered = sorted(row_values.values(), key=_sort_key)
    table = StudyTable(
        rows_axis=rows, value=value, learners=list(learners), rows=ordered, published=published, title=title,
        baseline=baseline,
    )
    sign = 1.0 if mode == "min" else -1.0
    for row in ordered:
        for learner in learners:
            key = (_fmt_row(row), learner)
            trials = groups.get(key, [])
            cell = Cell(row, learner, trials=len(trials))
            if published is not None and rows != "best":
                cell.published = published.get(row, learner)
            done = [t for t in trials if t.status == TrialStatus.COMPLETED]
            if done:
                best = min(
                    done, key=lambda t: sign * (t.objective if t.objective is not None else math.inf * sign)
                )
                cell.mean, cell.ci95 = getattr(best, value), getattr(best, ci_key)
                cell.status, cell.trial_id = TrialStatus.COMPLETED, best.trial_id
                if cell.mean is None and best.curves.get("loss_by_shots"):
                    cell.status = TrialStatus.DIVERGED  # finished, but the test inner loop blew up
            elif trials:
                order = [
                    TrialStatus.DIVERGED,
                    TrialStatus.STOPPED,
                    TrialStatus.ERROR,
                    TrialStatus.RUNNING,
                    TrialStatus.PENDING,
                ]
                statuses = {t.status for t in trials}
                cell.status = next((s for s in order if s in statuses), "empty")
                first = next(t for t in trials if t.status == cell.status)
                cell.trial_id = first.trial_id
            table.cells[key] = cell
    return table
