"""What a trial's MLflow run shows (real MLflow on a sqlite store, no server): the leading
metric keys, one chart per robustness curve against a meaningful step, curves that stop at a
blow-up (and say so), each parameter once, a live training curve, and the shared runs view."""

from __future__ import annotations

import json
import math

import pytest
from test_study_views import RUN, _record

from metatune.study.metric_keys import BLOWUP, lr_scale_step
from metatune.study.records import final_payload, intermediate_payload, record_from_tune


@pytest.fixture
def tracker(tmp_path):
    from metatune.study._mlflow import Tracker

    t = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "views", study="views", artifact_location=str(tmp_path / "a"))
    t.start({"name": "views"})
    return t


def _run(tracker, record):
    return tracker.client.get_run(tracker._child_runs()[record.trial_id]["run_id"])


def _history(tracker, record, key):
    rid = tracker._child_runs()[record.trial_id]["run_id"]
    return {m.step: m.value for m in tracker.client.get_metric_history(rid, key)}


def test_a_finished_trial_leads_with_its_objective_and_groups_the_diagnostics(tracker):
    done = _record("a1", "maml", 0.01, loss=0.5)
    tracker.log_trial(done)
    run = _run(tracker, done)
    keys = set(run.data.metrics)
    # The leading group sorts first; every other key is in a diagnostic group sorted after it.
    assert {"main/val_loss", "main/test_loss", "main/train_loss"} <= keys
    groups = sorted({k.split("/")[0] for k in keys})
    assert groups == ["main", "main_ci95", "robust", "run"], keys  # the order MLflow shows
    assert {k for k in keys if k.startswith("main/")} == {"main/val_loss", "main/test_loss", "main/train_loss"}
    assert "main_ci95/test_loss" in keys
    # Logged first, so listed first: the metric MLflow's compare-runs page plots by default.
    assert list(run.data.metrics)[0] == "main/val_loss", list(run.data.metrics)
    assert not any("lr_scale_" in k or k == "objective" or "index" in k for k in keys), keys
    # The final validation extends the validation curve at the last iteration.
    assert _history(tracker, done, "main/val_loss") == {10: 1.0, 20: 0.5}
    # One curve per robustness axis, each against its meaningful step.
    assert set(_history(tracker, done, "robust/loss_vs_K")) == {5, 10, 20}
    # MLflow draws a line only where a run's last (largest) step is at least 1: every curve is one.
    last = {k: max(_history(tracker, done, k)) for k in keys if k.startswith("robust/")}
    assert all(step >= 1 for step in last.values()), last
    assert _history(tracker, done, "robust/loss_vs_inner_step") == {0: 3.0, 1: 0.5}
    assert _history(tracker, done, "robust/log10_loss_vs_inner_step") == pytest.approx({0: math.log10(3), 1: math.log10(0.5)})
    by_scale = _history(tracker, done, "robust/loss_vs_lr_scale")
    assert by_scale == pytest.approx({lr_scale_step(0.5): 0.6, lr_scale_step(1.0): 0.5})
    assert lr_scale_step(0.1) == 10 and lr_scale_step(1.0) == 100 and lr_scale_step(10.0) == 1000
    # Curves stop at the first non-finite point, and the run says where.
    assert set(_history(tracker, done, "main/train_loss")) == {10}
    cut = run.data.tags["metatune.cut"]
    assert "main/train_loss stops at step 20 (not finite)" in cut
    assert "robust/loss_vs_lr_scale stops at step 1000 (not finite)" in cut
    # Each parameter once: the sampled value, not again as config.*.
    params = run.data.params
    assert params["inner_lr"] == "0.01" and params["learner"] == "maml"
    assert "config.learner.inner_lr" not in params and "config.learner.name" not in params
    assert params["config.task.name"] == "sine" and params["config.training.iterations"] == "20"
    # A learner variant's label is no duplicate of its registered name: both stay.
    variant = record_from_tune("v1", {"learner": "maml_fast", "inner_lr": 0.5}, "TERMINATED", {},
                               run_config={**RUN, "learner": {"name": "maml", "inner_lr": 0.5}}, metric="val_loss")
    tracker.log_trial(variant)
    params = _run(tracker, variant).data.params
    assert params["learner"] == "maml_fast" and params["config.learner.name"] == "maml"
    assert "config.learner.inner_lr" not in params


def test_a_diverged_trial_stretches_no_axis_and_shows_its_status(tracker):
    result = {
        "status": "diverged", "iterations": 29, "seed": 0, "wall_time_s": 1.0, "diverged_at": 30,
        "last_finite_loss": 7.5e26, "config": RUN, "evaluation": None,
        "history": [
            {"iteration": 10, "train_loss": 2.0, "val_loss": 1.5},
            {"iteration": 20, "train_loss": 3e11, "val_loss": 2e8},
        ],
    }
    payload = final_payload(result, metric="val_loss", penalty=1e6, validation=None)
    rec = record_from_tune("d1", {"learner": "maml", "inner_lr": 10.0}, "TERMINATED", payload,
                           run_config={**RUN, "learner": {"name": "maml", "inner_lr": 10.0}}, metric="val_loss")
    tracker.log_trial(rec)
    run = _run(tracker, rec)
    values = [
        m.value for k in run.data.metrics
        for m in tracker.client.get_metric_history(run.info.run_id, k)
    ]
    assert values and all(math.isfinite(v) and abs(v) < BLOWUP for v in values)
    assert _history(tracker, rec, "main/train_loss") == {10: 2.0}
    assert run.data.tags["metatune.status"] == "diverged" and run.data.metrics["run/diverged"] == 1.0
    assert run.data.metrics["run/diverged_at"] == 30
    assert "run/last_finite_loss stops at step 0 (7.5e+26 >= 1e+06)" in run.data.tags["metatune.cut"]
    assert "main/val_loss" in run.data.metrics and run.data.metrics["main/val_loss"] == 1.5


def test_the_training_loss_is_logged_live_at_every_log_point(tracker):
    """A periodic report carries the history entries since the one before; each lands at its
    own iteration while the trial runs, not back-filled at its end."""
    running = _record("r1", "maml", 0.01, status="running", tune_status="RUNNING")
    history = [{"iteration": i, "train_loss": 3.0 - i / 10, **({"val_loss": 1.0} if i % 20 == 0 else {})}
               for i in (5, 10, 15, 20)]
    first = intermediate_payload(history[1] | {"val_loss": 1.2}, metric="val_loss", penalty=1e6, window=history[:2])
    second = intermediate_payload(history[3], metric="val_loss", penalty=1e6, window=history[2:])
    assert first["train_window"] == {"iteration": [5, 10], "train_loss": [2.5, 2.0]}
    tracker.log_progress(running, {k: v for k, v in first.items() if k != "train_window"}, first["train_window"])
    assert _history(tracker, running, "main/train_loss") == {5: 2.5, 10: 2.0}
    assert _history(tracker, running, "main/val_loss") == {10: 1.2}
    tracker.log_progress(running, {k: v for k, v in second.items() if k != "train_window"}, second["train_window"])
    assert _history(tracker, running, "main/train_loss") == {5: 2.5, 10: 2.0, 15: 1.5, 20: 1.0}
    assert _run(tracker, running).info.status == "RUNNING"
    # A validation whose inner loop blew up reports the penalty to Tune, not to the chart.
    blown = intermediate_payload({"iteration": 25, "train_loss": 0.9}, metric="val_loss", penalty=1e6)
    tracker.log_progress(running, blown)
    assert 25 not in _history(tracker, running, "main/val_loss")
    assert "main/val_loss stops at step 25" in _run(tracker, running).data.tags["metatune.cut"]


def test_the_shared_runs_view_names_the_objective_column(tracker, tiny_study):
    from metatune.study.ui import VIEW_KEY, runs_view_path, runs_view_state

    study = tiny_study("view")
    state = runs_view_state(study)
    tracker.set_view(VIEW_KEY, state)
    tags = tracker.client.get_experiment(tracker.experiment_id()).tags
    assert json.loads(tags["mlflow.sharedViewState.metatune"]) == state
    assert state["selectedColumns"][0] == "metrics.`main/val_loss`" == state["orderByKey"]
    assert state["orderByAsc"] is True and "metatune.role" in state["searchFilter"]
    path = runs_view_path(tracker.experiment_id())
    assert path.startswith(f"#/experiments/{tracker.experiment_id()}/runs?")
    assert "workflowType=machine_learning" in path and "viewStateShareKey=metatune" in path
