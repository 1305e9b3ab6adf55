"""Live view of a running study: progress lines (running / done / diverged, best so far), a
the study folder's status file (:mod:`.status_file`) for ``metatune status``, and refreshed
views (MLflow, Parquet, table) each time a trial finishes. Driven by the Tune callback in
``_ray``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from metatune.study.records import (
    FINISHED,
    TRAIN_WINDOW,
    TrialRecord,
    TrialStatus,
    format_params,
    window_columns,
)
from metatune.study.report import Views
from metatune.study.resolved import Study
from metatune.study.status_file import best_record, write_status

__all__ = ["StudyMonitor", "format_params", "progress_line"]  # format_params re-exported from records


def progress_line(study: Study, records: Sequence[TrialRecord], elapsed_s: float) -> str:
    n = {s: sum(r.status == s for r in records) for s in TrialStatus}
    finished = sum(n[s] for s in FINISHED)
    mins, secs = divmod(int(elapsed_s), 60)
    line = (
        f"[{mins:02d}:{secs:02d}] trials: {n[TrialStatus.RUNNING]} running, {finished}/{study.num_trials} done "
        f"({n[TrialStatus.COMPLETED]} completed, {n[TrialStatus.DIVERGED]} diverged, "
        f"{n[TrialStatus.STOPPED]} stopped, {n[TrialStatus.ERROR]} failed)"
    )
    if study.spec.replicate_seeds:  # a configuration is its mean over seeds, not its luckiest seed
        from metatune.study.export import best_configs

        ranked = [g[0] for g in best_configs(records, mode=study.mode).values()]
        sign = 1.0 if study.mode == "min" else -1.0
        top = min(ranked, key=lambda g: sign * (g.objective() or 0.0), default=None)
        if top is not None and top.objective() is not None:
            rep = top.representative
            line += (f" | best {study.metric} {top.objective():.4g} over {len(top.completed)} seeds "
                     f"({rep.learner}: {format_params(rep, seed=False) or 'defaults'})")
        return line
    best = best_record(records, study.mode)
    if best is not None:
        line += f" | best {study.metric} {best.objective:.4g} ({best.name}: {format_params(best)})"
    return line


class StudyMonitor:
    def __init__(
        self, study: Study, views: Views, *, out: TextIO | None = None, interval_s: float = 20.0
    ) -> None:
        self.study = study
        self.views = views
        self.out = out or sys.stdout
        self.interval_s = interval_s
        self.start = time.monotonic()
        self._last_print = 0.0
        self._last_line = ""
        self._announced: set[str] = set()
        self.records: dict[str, TrialRecord] = {}

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def write_status(self, state: str) -> None:
        write_status(
            self.study.dir,
            study=self.study.name,
            state=state,
            metric=self.study.metric,
            mode=self.study.mode,
            trials_planned=self.study.num_trials,
            records=list(self.records.values()),
            mlflow_errors=self.views.mlflow_errors,
        )

    # ------------------------------------------------------------------ events from Tune
    def trial_result(self, record: TrialRecord, metrics: dict[str, Any]) -> None:
        self.records[record.trial_id] = record
        if record.trial_id not in self._announced:
            self._announced.add(record.trial_id)
            self._print(f"  > {record.name} started ({format_params(record)})")
        window = metrics.get(TRAIN_WINDOW)
        self.views.progress(
            record,
            {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            window if isinstance(window, dict) else None,
        )

    def trial_log(self, record: TrialRecord, entries: Sequence[Mapping[str, Any]]) -> None:
        """History entries a running trial pushed between its reports: the live training curve."""
        self.views.progress(record, {}, window_columns(entries))

    def trial_finished(self, record: TrialRecord, records: Sequence[TrialRecord]) -> None:
        for r in records:
            self.records[r.trial_id] = r
        self.records[record.trial_id] = record
        self._print("  " + self.describe(record))
        self.views.trial(record)
        self.views.refresh_study(list(self.records.values()))
        self.views.write_guarded(self.write_status, "running")

    def describe(self, r: TrialRecord) -> str:
        where = f"{r.name} ({format_params(r)})"
        wall = f" in {r.wall_time_s:.0f} s" if r.wall_time_s else ""
        if r.status == TrialStatus.COMPLETED:
            test = (
                f", test loss {r.test_loss:.4g} ± {r.test_loss_ci95 or 0:.2g}"
                if r.test_loss is not None
                else ""
            )
            return f"done {where}{wall}: {self.study.metric} {r.objective:.4g}{test}"
        if r.status == TrialStatus.DIVERGED:
            return (
                f"DIVERGED {where} at iteration {r.diverged_at} (last finite loss "
                f"{r.last_finite_loss if r.last_finite_loss is None else f'{r.last_finite_loss:.4g}'}); "
                f"reported {self.study.metric} = {self.study.penalty:g}"
            )
        if r.status == TrialStatus.STOPPED:
            return (
                f"stopped {where} by the scheduler at iteration {r.iteration}: "
                f"{self.study.metric} {r.objective}"
            )
        return f"FAILED {where}: {(r.error or 'see the Tune trial folder').splitlines()[0][:400]}"

    def tick(self, records: Callable[[], Sequence[TrialRecord]]) -> None:
        now = time.monotonic()
        if now - self._last_print < self.interval_s:
            return
        self._last_print = now
        for r in records():
            self.records[r.trial_id] = r
        line = progress_line(self.study, list(self.records.values()), now - self.start)
        if line != self._last_line:
            self._print(line)
            self._last_line = line
        self.views.write_guarded(self.write_status, "running")

    def end(self, records: Sequence[TrialRecord], state: str) -> None:
        for r in records:
            self.records[r.trial_id] = r
        self._print(progress_line(self.study, list(self.records.values()), time.monotonic() - self.start))
        self.write_status(state)
