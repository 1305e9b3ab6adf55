"""The study's views (Parquet, study table, MLflow runs), rebuilt from trial records.

Ray Tune's experiment storage is the source of truth; everything here can be thrown away and
rebuilt with ``metatune report STUDY``. Rebuilding is idempotent: MLflow runs are found again
by their trial-id tag and only missing metric points are logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from metatune.atomic_files import write_atomic
from metatune.config import EvaluationConfig
from metatune.study._mlflow import Tracker, redact_uri
from metatune.study.export import trainable_config
from metatune.study.published import PUBLISHED
from metatune.study.records import FINISHED, TrialRecord, TrialStatus
from metatune.study.resolved import Study
from metatune.study.results import write_trials
from metatune.study.status_file import driver_running
from metatune.study.table import StudyTable, build_table
from metatune.study.ui import VIEW_KEY, runs_view_state

__all__ = ["Views", "rebuild", "study_table"]

log = logging.getLogger(__name__)

TABLE_FILES = {"csv": "table/study_table.csv", "md": "table/study_table.md", "png": "table/study_plot.png"}


def study_table(study: Study, records: Sequence[TrialRecord]) -> StudyTable:
    ev = study.spec.evaluation
    shots = study.base[study.learners[0]]["task"].get("shots", "K")
    at = "K = " + "/".join(str(k) for k in ev.shots) if study.table_rows == "shots" and ev.shots else f"K={shots}"
    seeds = study.spec.replicate_seeds
    spread = (
        f"mean over {len(seeds)} training seeds ± seed sd" if seeds else f"mean ± 95% CI over {ev.tasks} test tasks"
    )
    title = f"{study.name}: {study.spec.table.value} at {at} after {ev.inner_steps or 'training'} inner steps, {spread}"
    pub = PUBLISHED.get(study.spec.table.published) if study.spec.table.published else None
    first = study.base[study.learners[0]]
    baseline = _baseline(
        first["task"], ev, value=study.spec.table.value, reduction=first["learner"].get("loss_reduction", "mean")
    )
    return build_table(
        records,
        rows=study.table_rows,
        learners=study.learners,
        value=study.spec.table.value,
        mode=study.mode,
        published=pub,
        title=title + (f" (x {study.spec.table.scale:g})" if study.spec.table.scale != 1 else ""),
        baseline=baseline,
        scale=study.spec.table.scale,
        planned_rows=_planned_rows(study),
    )


def _planned_rows(study: Study) -> list[Any] | None:
    """The rows the study will fill: its test shots, or the values of its grid axis."""
    rows = study.table_rows
    if rows == "shots":
        return list(study.spec.evaluation.shots or [])
    if not study.grid:
        return None
    for p in study.space.params:
        if rows in (p.name, p.knob):
            return list(p.choices)
    return None


_BASELINES: dict[str, tuple[str, float] | None] = {}


def _baseline(
    task: dict[str, Any], ev: EvaluationConfig, *, value: str, reduction: Literal["mean", "sum"] = "mean"
) -> tuple[str, float] | None:
    """The best trivial predictor on the study's own test tasks (same stream, seed, split and
    K as the table), computed once per task and evaluation (an image task scans folders)."""
    key = json.dumps([task, ev.tasks, ev.seed, ev.split, value, reduction], sort_keys=True, default=str)
    if key not in _BASELINES:
        from metatune.baselines import trivial_baselines
        from metatune.tasks import build_task

        try:
            dist = build_task(dict(task))
            found = trivial_baselines(
                dist, tasks=ev.tasks, shots=dist.shots, seed=ev.seed, split=ev.split, reduction=reduction
            )
            if value == "test_accuracy":
                best = max((b for b in found if b.accuracy is not None), key=lambda b: b.accuracy or 0.0)
                _BASELINES[key] = (best.name, float(best.accuracy or 0.0))
            else:
                best = min(found, key=lambda b: b.loss)
                _BASELINES[key] = (f"{best.name}, on the same {ev.tasks} test tasks", best.loss)
        except Exception:  # noqa: BLE001 - a frame for the table, never a reason to fail it
            log.warning("no trivial baseline for task %s", task.get("name"), exc_info=True)
            _BASELINES[key] = None
    return _BASELINES[key]


class Views:
    """Writes the local files and (optionally) MLflow. Neither stops a study when it fails:
    an MLflow failure is logged once and MLflow skipped for a minute; a local write that fails
    (a full or read-only disk) is logged and counted. ``metatune report`` catches up later,
    since the Tune storage holds every result."""

    def __init__(self, study: Study, *, tracker: Tracker | None = None, retry_after_s: float = 60.0) -> None:
        self.study = study
        self.tracker = tracker
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self.mlflow_errors = 0
        self.last_error: str | None = None
        self.write_errors = 0
        self.last_write_error: str | None = None

    def write_guarded(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn`` writing local view files; an OSError is counted and logged, never raised."""
        try:
            return fn(*args, **kwargs)
        except OSError as exc:
            self.write_errors += 1
            self.last_write_error = f"{type(exc).__name__}: {exc}"
            # Said once: a full disk fails every write; the summary at the end gives the count.
            (log.warning if self.write_errors == 1 else log.debug)(
                "could not write the study's views in %s (%s); `metatune report %s` rewrites them",
                self.study.dir, self.last_write_error, self.study.dir,
            )
            return None

    # ------------------------------------------------------------------ MLflow, guarded
    def _mlflow(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self.tracker is None or time.monotonic() < self._down_until:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop the study
            self.mlflow_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._down_until = time.monotonic() + self.retry_after_s
            log.warning(
                "MLflow (%s) failed: %s; results stay in Tune storage, "
                "`metatune report %s` restores the runs",
                redact_uri(self.tracker.uri),
                self.last_error.splitlines()[0][:300],
                self.study.dir,
            )
            return None

    @property
    def mlflow_ok(self) -> bool:
        return self.tracker is not None and self.mlflow_errors == 0

    def start(self) -> bool:
        """Find or create the parent run; False while MLflow is unreachable."""
        if self.tracker is None:
            return False
        if self.tracker.parent_id is None:
            self._mlflow(self.tracker.start, self.study.frozen(), description=self._note(None))
            if self.tracker.parent_id is not None:  # the runs view `metatune ui` opens on
                self._mlflow(self.tracker.set_view, VIEW_KEY, runs_view_state(self.study))
        return self.tracker.parent_id is not None

    def _ready(self) -> Tracker | None:
        """The tracker once its parent run exists; None while MLflow is off or unreachable."""
        return self.tracker if self.start() else None

    def finish(self, status: str = "FINISHED", records: Sequence[TrialRecord] = ()) -> None:
        """Close the parent run; runs of unfinished trials become KILLED, runs of trials that
        Tune never recorded are closed as lost (see Tracker.suspend / close_unknown)."""
        tracker = self._ready()
        if tracker is not None:
            self._mlflow(tracker.close_unknown, {r.trial_id for r in records})
            if status != "FINISHED":
                self._mlflow(tracker.suspend, records)
            self._mlflow(tracker.finish, status)

    # ------------------------------------------------------------------ per trial
    def trial_dir(self, record: TrialRecord) -> Path:
        return self.study.dir / "trials" / record.trial_id

    def progress(
        self, record: TrialRecord, metrics: dict[str, float], window: dict[str, Any] | None = None
    ) -> None:
        tracker = self._ready()
        if tracker is not None:
            self._mlflow(tracker.log_progress, record, metrics, window)

    def trial(self, record: TrialRecord, *, force: bool = False) -> None:
        """Local artifacts of a trial and its MLflow child run (skipped when both are up to date)."""
        d = self.trial_dir(record)
        plot = d / "robustness.png"
        local_done = (
            record.finished
            and _same_status(d / "trial.json", record)
            and (plot.is_file() or not record.curves)
        )
        tracker = self._ready()
        if not force and local_done and (tracker is None or self._mlflow(tracker.is_final, record)):
            return
        files: dict[str, Path] = {}
        if record.finished:
            files = self.write_guarded(self._trial_files, record, d, plot) or {}
        if tracker is not None:
            self._mlflow(tracker.log_trial, record, plot=plot if plot.is_file() else None, files=files)

    # ------------------------------------------------------------------ study level
    def files(self, records: Sequence[TrialRecord]) -> dict[str, Path]:
        """Parquet, study table (CSV, markdown) and plot in the study folder."""
        from metatune.study.plots import study_plot

        d = self.study.dir
        out = {
            "parquet": write_trials(
                records, self.study.parquet_path, study=self.study.name, metric=self.study.metric
            )
        }
        table = study_table(self.study, records)
        for key, rel in TABLE_FILES.items():
            path = d / rel
            if key == "csv":
                write_atomic(path, table.to_csv())
            elif key == "md":
                write_atomic(path, table.to_markdown())
            else:
                study_plot(table, path, title=table.title, records=records)
            out[key] = path
        out["_markdown"] = table.to_markdown()  # type: ignore[assignment]
        return out

    def _note(self, markdown: str | None) -> str:
        s = self.study
        lines = [f"## metatune study `{s.name}`", ""]
        if markdown:
            lines += [
                markdown,
                "",
                "Plot: artifact `table/study_plot.png`; CSV: `table/study_table.csv`.",
                "",
            ]
        if s.spec.description:
            lines += [s.spec.description.strip(), ""]
        lines += [
            (
                f"- learners: {', '.join(s.learners)}; sampler {s.spec.sampler.name}; "
                f"{s.num_trials} trials; objective {s.metric} ({s.mode})"
            ),
            f"- study folder: `{s.dir}`; Tune experiment: `{s.tune_path}`",
            f"- every trial: `{s.parquet_path}`; best configs: `{s.best_dir}/`",
        ]
        return "\n".join(lines)

    def _trial_files(self, record: TrialRecord, d: Path, plot: Path) -> dict[str, Path]:
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "run_config.yaml"
        write_atomic(cfg, yaml.safe_dump(trainable_config(record), sort_keys=False))
        write_atomic(d / "trial.json", json.dumps(record.to_dict(), indent=1, default=str))
        if record.curves:
            from metatune.study.plots import trial_plot

            trial_plot(record, plot)
        return {"": cfg, "data": d / "trial.json"}

    def refresh_study(self, records: Sequence[TrialRecord]) -> dict[str, Path]:
        """Parquet, study table and plot (and their MLflow copies); {} when the disk refused them."""
        files = self.write_guarded(self.files, records)
        if files is None:
            return {}
        markdown = files.pop("_markdown")
        tracker = self._ready()
        if tracker is not None:
            counts = _counts(records)
            self._mlflow(
                tracker.log_study_files,
                [("table", files["csv"]), ("table", files["md"]), ("table", files["png"])],
                note=self._note(str(markdown)),
            )
            self._mlflow(tracker.log_study_metrics, counts, step=int(counts["finished"]))
        return files


def _same_status(path: Path, record: TrialRecord) -> bool:
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return old.get("status") == record.status and old.get("iteration") == record.iteration


def _counts(records: Sequence[TrialRecord]) -> dict[str, float]:
    c = {s.value: 0.0 for s in TrialStatus}
    for r in records:
        c[r.status.value] = c.get(r.status.value, 0.0) + 1
    c["finished"] = sum(c[s.value] for s in FINISHED)
    return c


def rebuild(
    study: Study, records: Sequence[TrialRecord], *, tracker: Tracker | None = None
) -> tuple[Views, dict[str, Path]]:
    """Rewrite every view from the records read out of Tune storage."""
    views = Views(study, tracker=tracker, retry_after_s=0.0)
    views.start()
    for r in records:
        views.trial(r)
    files = views.refresh_study(records)
    if all(r.finished for r in records) and records:
        views.finish("FINISHED", records)
    elif not driver_running(study.dir):
        views.finish("KILLED", records)  # an interrupted study: nothing stays RUNNING
    return views, files
