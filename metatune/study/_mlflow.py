"""The only module that imports MLflow: one parent run per study, one child run per trial.

Children are nested with the ``mlflow.parentRunId`` tag and found again by their
``metatune.trial_id`` tag, so logging is idempotent: a rebuild (``metatune report``), a resumed
study or a callback that fires twice updates the same runs and never logs a metric point
twice (steps already stored are skipped). Only the driver logs, so a sqlite store never sees
concurrent writers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from metatune.study._mlflow_env import configure_mlflow_env
from metatune.study._mlflow_store import create_sqlite_store, heal_incomplete_sqlite_store
from metatune.study.metric_keys import lead_first, progress_points, trial_points
from metatune.study.param_names import LEARNER_KEY, knob_for
from metatune.study.records import TrialRecord, TrialStatus

__all__ = ["Tracker", "configure_mlflow_env", "redact_uri"]

TAG_STUDY = "metatune.study"
TAG_ROLE = "metatune.role"
TAG_TRIAL = "metatune.trial_id"
TAG_STATUS = "metatune.status"
TAG_FINAL = "metatune.final"
TAG_CUT = "metatune.cut"
_VIEW_TAG = "mlflow.sharedViewState."
_PARENT_TAG = "mlflow.parentRunId"
_NOTE = "mlflow.note.content"
_TERMINAL = {
    TrialStatus.COMPLETED: "FINISHED",
    TrialStatus.DIVERGED: "FINISHED",
    TrialStatus.STOPPED: "FINISHED",
    TrialStatus.ERROR: "FAILED",
}


def redact_uri(uri: str) -> str:
    """The URI without a password (``http://user:secret@host`` -> ``http://user:***@host``),
    for params and printed lines. MLflow also reads MLFLOW_TRACKING_USERNAME/PASSWORD."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return out


class Tracker:
    """MLflow views of one study. Creates nothing until first used."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        *,
        study: str,
        artifact_location: str | None = None,
    ) -> None:
        self.uri = uri
        self.experiment = experiment
        self.study = study
        self.artifact_location = artifact_location
        self._client_obj: Any = None
        self._exp_id: str | None = None
        self.parent_id: str | None = None
        self._children: dict[str, dict[str, Any]] | None = None  # trial_id -> {run_id, tags}
        self._created: set[str] = set()
        self._steps: dict[tuple[str, str], set[int]] = {}

    # ------------------------------------------------------------------ plumbing
    @property
    def client(self) -> Any:
        if self._client_obj is None:
            from mlflow.tracking import MlflowClient

            configure_mlflow_env()
            heal_incomplete_sqlite_store(self.uri)  # an interrupted first start breaks MLflow for good
            create_sqlite_store(self.uri)  # whole or not at all, so that cannot happen again
            self._client_obj = MlflowClient(tracking_uri=self.uri)
        return self._client_obj

    def experiment_id(self) -> str:
        if self._exp_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                self._exp_id = self.client.create_experiment(
                    self.experiment,
                    artifact_location=self.artifact_location,
                    # shown under "Model training" (not GenAI) in the MLflow 3 UI
                    tags={"mlflow.experimentKind": "custom_model_development", TAG_STUDY: self.study},
                )
            else:
                self._exp_id = exp.experiment_id
                if exp.lifecycle_stage == "deleted":
                    self.client.restore_experiment(self._exp_id)
        return self._exp_id

    def _search(self, filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id()], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return runs

    def _log(self, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
        """Log (key, value, step) points that the run does not have yet."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = []
        for key, value, step in lead_first(metrics):
            if value is None:
                continue
            steps = self._known_steps(run_id, key)
            if step in steps:
                continue
            steps.add(step)
            batch.append(Metric(key, float(value), now, int(step)))
        for i in range(0, len(batch), 900):
            self.client.log_batch(run_id, metrics=batch[i : i + 900])

    def _known_steps(self, run_id: str, key: str) -> set[int]:
        if (run_id, key) not in self._steps:
            if run_id in self._created:
                self._steps[(run_id, key)] = set()
            else:
                self._steps[(run_id, key)] = {m.step for m in self.client.get_metric_history(run_id, key)}
        return self._steps[(run_id, key)]

    def _params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    # ------------------------------------------------------------------ parent
    def start(self, frozen_study: Mapping[str, Any], *, description: str = "") -> str:
        """Find or create the study's parent run and mark it running."""
        found = self._search(f"tags.`{TAG_STUDY}` = '{self.study}' and tags.`{TAG_ROLE}` = 'parent'")
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            run = self.client.create_run(
                self.experiment_id(),
                run_name=self.study,
                tags={TAG_STUDY: self.study, TAG_ROLE: "parent", _NOTE: description or f"study {self.study}"},
            )
            self.parent_id = run.info.run_id
            self._created.add(self.parent_id)
            params = {k: v for k, v in _flatten(frozen_study).items() if not k.startswith("search_space.")}
            if "tracking.uri" in params:
                params["tracking.uri"] = redact_uri(params["tracking.uri"])
            self._params(self.parent_id, params)
        return self.parent_id

    def parent_url_path(self) -> str:
        return f"#/experiments/{self.experiment_id()}/runs/{self.parent_id}"

    def set_view(self, key: str, state: Mapping[str, Any]) -> None:
        """A shared runs view of the experiment (see metatune/study/ui.py), written only when
        it changed."""
        value = json.dumps(state, sort_keys=True)
        exp = self.client.get_experiment(self.experiment_id())
        if exp.tags.get(_VIEW_TAG + key) != value:
            self.client.set_experiment_tag(self.experiment_id(), _VIEW_TAG + key, value)

    def log_study_files(self, files: Sequence[tuple[str, Path]], *, note: str | None = None) -> None:
        """Table CSV/markdown/PNG (and other study files) on the parent run; the markdown also
        becomes the run description so the table shows on the run page."""
        assert self.parent_id is not None
        for artifact_path, path in files:
            if Path(path).is_file():
                self.client.log_artifact(self.parent_id, str(path), artifact_path=artifact_path or None)
        if note is not None:
            self.client.set_tag(self.parent_id, _NOTE, note[:60000])

    def log_study_metrics(self, counts: Mapping[str, float], *, step: int) -> None:
        assert self.parent_id is not None
        self._log(self.parent_id, [(f"trials_{k}", float(v), step) for k, v in counts.items()])

    def finish(self, status: str = "FINISHED") -> None:
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, status=status)

    # ------------------------------------------------------------------ children
    def _child_runs(self) -> dict[str, Any]:
        if self._children is None:
            assert self.parent_id is not None
            self._children = {}
            for run in self._search(f"tags.`{_PARENT_TAG}` = '{self.parent_id}'"):
                tid = run.data.tags.get(TAG_TRIAL)
                if tid and tid not in self._children:
                    self._children[tid] = {
                        "run_id": run.info.run_id,
                        "tags": dict(run.data.tags),
                        "status": run.info.status,
                    }
        return self._children

    def _child(self, record: TrialRecord) -> str:
        runs = self._child_runs()
        if record.trial_id in runs:
            return runs[record.trial_id]["run_id"]
        run = self.client.create_run(
            self.experiment_id(),
            run_name=record.name,
            tags={
                _PARENT_TAG: self.parent_id,
                TAG_STUDY: self.study,
                TAG_ROLE: "trial",
                TAG_TRIAL: record.trial_id,
                "metatune.learner": record.learner,
                TAG_STATUS: record.status.value,
            },
        )
        rid = run.info.run_id
        self._created.add(rid)
        runs[record.trial_id] = {"run_id": rid, "tags": {}, "status": "RUNNING"}
        # Each parameter once: a sampled one (``inner_lr``, ``mtnet.inner_lr``, ``learner``) is
        # left out of the run config's ``config.*`` copy where that holds the same value (a
        # learner variant's label is not its registered name: both stay).
        config = _flatten(record.run_config, "config.")
        for name, value in record.params.items():
            knob = "name" if name == LEARNER_KEY else knob_for(name, record.learner)
            sections = ("learner",) if name == LEARNER_KEY else ("learner", "training")  # see plan.py
            for key in (f"config.{section}.{knob}" for section in sections if knob):
                if key in config and config[key] == str(value):
                    del config[key]
        params = {**record.params, **config}
        self._params(
            rid, {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in params.items()}
        )
        return rid

    def _set_status(self, trial_id: str, status: str) -> None:
        run = self._child_runs()[trial_id]
        if run.get("status") == status:
            return
        if status == "RUNNING":
            self.client.update_run(run["run_id"], status="RUNNING")
        else:
            self.client.set_terminated(run["run_id"], status=status)
        run["status"] = status

    def log_progress(
        self, record: TrialRecord, metrics: Mapping[str, float], window: Mapping[str, Any] | None = None
    ) -> None:
        """A periodic report of a running trial: its validation (step = iteration) and the
        training-curve entries since the last report (``window``, columns as in the history),
        so the training loss is live at every ``log_every`` iteration."""
        rid = self._child(record)
        self._set_status(record.trial_id, "RUNNING")  # again, if an interrupted study resumed
        step = int(metrics.get("iteration", 0))
        # A validation whose inner loop blew up reports the penalty: not a point of the curve.
        nonfinite = {"val_loss", "val_loss_ci95", "val_accuracy"} if metrics.get("val_nonfinite") else set()
        columns = {k: [None if k in nonfinite else v] for k, v in metrics.items() if k != "iteration"}
        notes: list[str] = []
        points = progress_points({"iteration": [step], **columns}, notes)
        if window:
            points += progress_points(window, notes)
        cut = {n.split(" stops at ")[0] for n in self._child_runs()[record.trial_id]["tags"].get(TAG_CUT, "").split("; ")}
        self._log(rid, [p for p in points if p[0] not in cut])  # a stopped curve stays stopped
        self._note_cuts(record, notes)

    def _note_cuts(self, record: TrialRecord, notes: list[str]) -> None:
        """Where curves stopped (a non-finite or blown-up point), as the tag ``metatune.cut``."""
        if not notes:
            return
        run = self._child_runs()[record.trial_id]
        old = run["tags"].get(TAG_CUT, "")
        new = [n for n in notes if n not in old.split("; ")]
        if new:
            value = "; ".join([old, *new] if old else new)[:5000]
            self.client.set_tag(run["run_id"], TAG_CUT, value)
            run["tags"][TAG_CUT] = value

    def is_final(self, record: TrialRecord) -> bool:
        run = self._child_runs().get(record.trial_id)
        if run is None:
            return False
        tags = run["tags"]
        # The run status too: a write cut off between the final tags and the termination
        # must still be finished by the next rebuild.
        return (
            tags.get(TAG_FINAL) == "1"
            and tags.get(TAG_STATUS) == record.status
            and run.get("status") == _TERMINAL.get(record.status)
        )

    def log_trial(
        self, record: TrialRecord, *, plot: Path | None = None, files: Mapping[str, Path] = {}
    ) -> str:
        """Everything about a trial; for a finished one, also the robustness curves, artifacts and
        its terminal status."""
        rid = self._child(record)
        diverged = record.status == TrialStatus.DIVERGED
        end = int(record.iteration or 0)
        finals: dict[str, tuple[Any, int]] = {
            # The final validation extends the validation curve; a diverged trial has none.
            "val_loss": (record.val_loss, end),
            "test_loss": (record.test_loss, 0),
            "test_loss_ci95": (record.test_loss_ci95, 0),
            "test_accuracy": (record.test_accuracy, 0),
            "test_accuracy_ci95": (record.test_accuracy_ci95, 0),
            "diverged": (1.0 if diverged else (0.0 if record.finished else None), 0),
            "diverged_at": (record.diverged_at, 0),
            "last_finite_loss": (record.last_finite_loss, 0),
            "wall_time_s": (record.wall_time_s, 0),
            "iterations": (record.iteration, 0),
            "compiled": (None if record.compiled is None else float(record.compiled), 0),
            "compile_graphs": (record.compile_graphs, 0),
            "compile_cache_hits": (record.compile_cache_hits, 0),
            "compile_seconds": (record.compile_seconds, 0),
        }
        notes: list[str] = []
        points = trial_points(record.curves, finals if record.finished else {}, notes)
        self._log(rid, points)
        self._note_cuts(record, notes)
        tags = {TAG_STATUS: record.status.value}
        if record.diverged_at is not None:
            tags["metatune.diverged_at"] = str(record.diverged_at)
        if record.error:
            tags["metatune.error"] = record.error[:5000]
        if record.finished:
            if plot is not None and Path(plot).is_file():
                self.client.log_artifact(rid, str(plot))
            for name, path in files.items():
                if Path(path).is_file():
                    self.client.log_artifact(rid, str(path), artifact_path=name or None)
            tags[TAG_FINAL] = "1"
        for k, v in tags.items():
            self.client.set_tag(rid, k, v)
        self._child_runs()[record.trial_id]["tags"].update(tags)
        if record.status in _TERMINAL:
            self.client.set_terminated(rid, status=_TERMINAL[record.status])
            self._child_runs()[record.trial_id]["status"] = _TERMINAL[record.status]
        return rid

    def suspend(self, records: Sequence[TrialRecord]) -> None:
        """The driver stops before these trials finished: their runs become KILLED (a resumed
        study sets them RUNNING again) instead of staying RUNNING with nobody behind them."""
        runs = self._child_runs()
        for r in records:
            if not r.finished and r.trial_id in runs:
                self.client.set_tag(runs[r.trial_id]["run_id"], TAG_STATUS, "interrupted")
                self._set_status(r.trial_id, "KILLED")

    def close_unknown(self, trial_ids: set[str]) -> list[str]:
        """Runs of trials that Tune's storage does not know (a driver killed before its
        snapshot recorded a trial it had just started): KILLED and tagged lost, not RUNNING."""
        closed = []
        for tid, run in self._child_runs().items():
            if tid not in trial_ids and run.get("status") == "RUNNING":
                self.client.set_tag(run["run_id"], TAG_STATUS, "lost")
                self._set_status(tid, "KILLED")
                closed.append(tid)
        return closed
