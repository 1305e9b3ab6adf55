"""The only module that imports MLflow: one parent run per study, one child run per trial.

Children are nested with the ``mlflow.parentRunId`` tag and found again by their
``metatune.trial_id`` tag, so logging is idempotent: a rebuild (``metatune report``), a resumed
study or a callback that fires twice updates the same runs and never logs a metric point
twice (steps already stored are skipped). Only the driver logs, so a sqlite store never sees
concurrent writers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from metatune.study._mlflow_env import configure_mlflow_env
from metatune.study._mlflow_store import create_sqlite_store, heal_incomplete_sqlite_store
from metatune.study.records import TrialRecord, TrialStatus

__all__ = ["Tracker", "configure_mlflow_env", "redact_uri", "ui_command"]

TAG_STUDY = "metatune.study"
TAG_ROLE = "metatune.role"
TAG_TRIAL = "metatune.trial_id"
TAG_STATUS = "metatune.status"
TAG_FINAL = "metatune.final"
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
        for key, value, step in metrics:
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
        params = {**{k: v for k, v in record.params.items()}, **_flatten(record.run_config, "config.")}
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

    def log_progress(self, record: TrialRecord, metrics: Mapping[str, float]) -> None:
        """A periodic report of a running trial (step = training iteration)."""
        rid = self._child(record)
        self._set_status(record.trial_id, "RUNNING")  # again, if an interrupted study resumed
        step = int(metrics.get("iteration", 0))
        keep = [
            (k, float(v), step)
            for k, v in metrics.items()
            if k in ("train_loss", "val_loss", "val_loss_ci95", "val_accuracy") or k.startswith("stats/")
        ]
        self._log(rid, keep)

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
        c = record.curves
        points: list[tuple[str, float, int]] = []
        train = c.get("train") or {}
        its = train.get("iteration") or []
        for key, values in train.items():
            if key == "iteration":
                continue
            points += [(key, v, int(it)) for it, v in zip(its, values) if v is not None and it is not None]
        for k, v in zip(c.get("shots") or [], c.get("loss_by_shots") or []):
            points.append(("robust/loss_vs_shots", v, int(k)))
        for k, v in zip(c.get("shots") or [], c.get("loss_by_shots_ci95") or []):
            points.append(("robust/loss_vs_shots_ci95", v, int(k)))
        for s, v in enumerate(c.get("loss_by_step") or []):
            points.append(("robust/loss_vs_inner_step", v, s))
        for i, (scale, v) in enumerate(zip(c.get("lr_scales") or [], c.get("loss_by_lr_scale") or [])):
            points.append(("robust/loss_vs_lr_scale_index", v, i))
            points.append((f"robust/loss_at_lr_scale_{scale:g}", v, 0))
        finals = {
            "objective": record.objective,
            "test_loss": record.test_loss,
            "test_loss_ci95": record.test_loss_ci95,
            "test_accuracy": record.test_accuracy,
            "test_accuracy_ci95": record.test_accuracy_ci95,
            "diverged": 1.0 if record.status == TrialStatus.DIVERGED else (0.0 if record.finished else None),
            "diverged_at": record.diverged_at,
            "last_finite_loss": record.last_finite_loss,
            "wall_time_s": record.wall_time_s,
            "iterations": record.iteration,
            "compiled": None if record.compiled is None else float(record.compiled),
            "compile_graphs": record.compile_graphs,
            "compile_cache_hits": record.compile_cache_hits,
            "compile_seconds": record.compile_seconds,
        }
        if record.finished:
            points += [(k, v, 0) for k, v in finals.items() if v is not None]
        self._log(rid, [p for p in points if p[1] is not None])
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


def ui_command(uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """``mlflow server`` for a study's store, bound to loopback unless asked otherwise."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
