"""Trial records, the study table, Parquet and export: pure Python, no Ray or MLflow."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from metatune.config import parse_config
from metatune.errors import CheckpointError
from metatune.study.export import (
    best_trials,
    export_best,
    summary_table,
    trainable_config,
)
from metatune.study.published import PUBLISHED
from metatune.study.records import final_payload, intermediate_payload, record_from_tune
from metatune.study.results import read_trials, write_trials
from metatune.study.table import build_table

RUN = {
    "seed": 0,
    "task": {"name": "sine", "protocol": "metasgd", "shots": 10},
    "learner": {"name": "maml", "inner_lr": 0.01},
    "training": {"iterations": 20, "eval_every": 10},
    "evaluation": {"tasks": 10},
    "device": "cuda",
    "gpu_memory_fraction": 0.5,
}


def _summary(mean, ci=0.1, nonfinite=0):
    return {"mean": mean, "ci95": ci, "n": 10, "nonfinite": nonfinite}


def _train_result(status="completed", loss=0.5, iterations=20):
    evaluation = None
    if status == "completed":
        evaluation = {
            "split": "test",
            "tasks": 600,
            "by_shots": {
                str(k): {
                    "shots": k,
                    "steps": 1,
                    "loss": _summary(loss * 10 / k),
                    "loss_by_step": [_summary(3.0), _summary(loss * 10 / k)],
                    "accuracy": None,
                }
                for k in (5, 10, 20)
            },
            "lr_scale_curve": {
                "0.5": _summary(loss * 1.2),
                "1.0": _summary(loss),
                "10.0": _summary(math.inf, math.inf, 3),
            },
        }
    return {
        "status": status,
        "iterations": iterations,
        "seed": 0,
        "wall_time_s": 1.5,
        "diverged_at": None if status == "completed" else 13,
        "last_finite_loss": 2.5,
        "config": RUN,
        "history": [
            {"iteration": 10, "train_loss": 2.0, "val_loss": 1.0},
            {"iteration": 20, "train_loss": float("nan")},
        ],
        "evaluation": evaluation,
    }


def _record(tid, learner, alpha, status="completed", loss=0.5, objective=None, tune_status="TERMINATED"):
    result = _train_result(status, loss)
    payload = final_payload(
        result,
        metric="val_loss",
        penalty=1e6,
        validation={"val_loss": objective if objective is not None else loss},
    )
    return record_from_tune(
        tid,
        {"learner": learner, "inner_lr": alpha},
        tune_status,
        payload,
        run_config={**RUN, "learner": {"name": learner, "inner_lr": alpha}},
        metric="val_loss",
    )


def _no_nan(obj):
    if isinstance(obj, float):
        assert math.isfinite(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _no_nan(v)
    elif isinstance(obj, list):
        for v in obj:
            _no_nan(v)


def test_payloads_are_always_finite():
    diverged = final_payload(_train_result("diverged"), metric="val_loss", penalty=1e6, validation=None)
    assert diverged["val_loss"] == 1e6 and diverged["diverged"] == 1.0 and diverged["outcome"] == "diverged"
    assert diverged["diverged_at"] == 13 and diverged["last_finite_loss"] == 2.5
    done = final_payload(_train_result(), metric="val_loss", penalty=1e6, validation={"val_loss": 0.4})
    assert done["val_loss"] == 0.4 and done["test_loss"] == 0.5 and done["test_shots"] == 10
    assert done["curves"]["loss_by_lr_scale"] == [0.6, 0.5, None]  # inf becomes None, never NaN
    assert done["curves"]["train"]["train_loss"] == [2.0, None]
    for p in (diverged, done):
        _no_nan(p)
        json.dumps(p, allow_nan=False)
    mid = intermediate_payload(
        {"iteration": 10, "train_loss": 1.0, "val_loss": float("inf")}, metric="val_loss", penalty=1e6
    )
    assert mid["val_loss"] == 1e6 and mid["val_nonfinite"] == 1.0


def test_record_statuses():
    assert _record("a", "maml", 0.01).status == "completed"
    assert _record("b", "maml", 10.0, status="diverged").status == "diverged"
    stopped = record_from_tune(
        "c",
        {"learner": "maml", "inner_lr": 1.0},
        "TERMINATED",
        {"val_loss": 3.0, "iteration": 10},
        run_config=RUN,
        metric="val_loss",
    )
    assert stopped.status == "stopped" and stopped.objective == 3.0
    err = record_from_tune(
        "d", {"learner": "maml"}, "ERROR", None, run_config=RUN, metric="val_loss", error="boom"
    )
    assert err.status == "error" and err.finished
    assert (
        record_from_tune("e", {"learner": "maml"}, "RUNNING", {}, run_config=RUN, metric="val_loss").status
        == "running"
    )


def test_step_size_table_with_published_numbers_and_divergence():
    records = [
        _record("t1", "maml", 0.01, loss=0.7),
        _record("t2", "maml", 10.0, status="diverged"),
        _record("t3", "mtnet", 0.01, loss=0.5),
        _record("t4", "mtnet", 10.0, loss=4.0),
    ]
    table = build_table(
        records,
        rows="inner_lr",
        learners=["maml", "tnet", "mtnet"],
        published=PUBLISHED["mtnet_table_6_2"],
        title="Table 6.2",
    )
    assert table.rows == [10.0, 1.0, 0.1, 0.01, 0.001, 0.0001]  # published rows shown, largest first
    assert table.cell(10.0, "maml").text() == "diverged"
    assert table.cell(0.01, "mtnet").text() == "0.50 ± 0.10"
    assert table.cell(0.01, "mtnet").published == (0.49, 0.05)
    md = table.to_markdown()
    assert (
        "| inner_lr | maml | maml (published) | tnet | tnet (published) | mtnet | mtnet (published) |" in md
    )
    assert "| 10 | diverged | 171.92 ± 25.04 |" in md
    csv_lines = table.to_csv().splitlines()
    assert csv_lines[0].startswith("inner_lr,learner,test_loss_mean")
    assert len(csv_lines) == 1 + 6 * 3


def test_table_best_rows_pick_the_best_objective():
    records = [
        _record("a", "maml", 0.01, loss=0.9, objective=0.9),
        _record("b", "maml", 0.1, loss=0.6, objective=0.5),
        _record("c", "maml", 1.0, status="diverged"),
    ]
    table = build_table(records, rows="best", learners=["maml"])
    cell = table.cell("best", "maml")
    assert cell.trial_id == "b" and cell.trials == 3


def test_parquet_round_trip_and_corrupt_file(tmp_path):
    records = [
        _record("a", "maml", 0.01),
        _record("b", "maml", 10.0, status="diverged"),
        record_from_tune(
            "c",
            {"learner": "maml", "mtnet.mask_temperature": 2.0},
            "RUNNING",
            {},
            run_config=RUN,
            metric="val_loss",
        ),
    ]
    path = write_trials(records, tmp_path / "trials.parquet", study="s", metric="val_loss")
    rows = read_trials(path)
    assert [r["trial_id"] for r in rows] == ["a", "b", "c"]
    assert rows[1]["diverged"] and rows[1]["diverged_at"] == 13 and rows[1]["objective"] == 1e6
    assert rows[0]["loss_by_shots"] == pytest.approx([1.0, 0.5, 0.25]) and rows[0]["shots"] == [5, 10, 20]
    assert rows[0]["curve_train_loss"] == [2.0, None]
    assert rows[2]["param.mtnet.mask_temperature"] == 2.0 and rows[0]["param.mtnet.mask_temperature"] is None
    assert json.loads(rows[0]["run_config_json"])["learner"]["inner_lr"] == 0.01
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        read_trials(path)


def test_export_writes_trainable_configs(tmp_path):
    records = [
        _record("a", "maml", 0.01, objective=0.8),
        _record("b", "maml", 0.1, objective=0.3),
        _record("c", "maml", 10.0, status="diverged"),
        _record("d", "metasgd", 0.01, objective=0.5),
    ]
    assert [r.trial_id for r in best_trials(records, mode="min", top_k=2)["maml"]] == ["b", "a"]
    written = export_best(records, tmp_path, study="s", metric="val_loss", mode="min", top_k=2)
    assert sorted(p.path.name for p in written) == ["maml.yaml", "maml_rank2.yaml", "metasgd.yaml"]
    cfg = yaml.safe_load((tmp_path / "maml.yaml").read_text())
    assert cfg["learner"]["inner_lr"] == 0.1 and cfg["device"] == "auto" and "gpu_memory_fraction" not in cfg
    parse_config(cfg)
    assert trainable_config(records[0])["device"] == "auto"
    text = summary_table(records, metric="val_loss", mode="min", learners=["maml", "metasgd"])
    assert "maml     3       2     1" in text and "inner_lr=0.1" in text


def test_mlflow_runs_of_interrupted_and_lost_trials_are_closed(tmp_path):
    """A driver that stops leaves no run RUNNING: unfinished trials' runs become KILLED
    ('interrupted') and RUNNING again when the resumed trial reports; runs of trials Tune never
    recorded are closed as lost."""
    from mlflow.tracking import MlflowClient

    from metatune.study._mlflow import Tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, "views", study="views", artifact_location=str(tmp_path / "art"))
    tracker.start({"name": "views"})
    paused, lost = _record("a1", "maml", 0.01, status="running"), _record("b2", "maml", 0.1, status="running")
    for r in (paused, lost):
        tracker.log_progress(r, {"iteration": 10, "train_loss": 1.0})
    paused.status = "pending"
    tracker.suspend([paused])
    assert tracker.close_unknown({"a1"}) == ["b2"]
    client = MlflowClient(uri)
    run = {r.trial_id: client.get_run(tracker._child_runs()[r.trial_id]["run_id"]) for r in (paused, lost)}
    assert run["a1"].info.status == "KILLED" and run["a1"].data.tags["metatune.status"] == "interrupted"
    assert run["b2"].info.status == "KILLED" and run["b2"].data.tags["metatune.status"] == "lost"
    # A fresh tracker (the resumed driver) finds the run again and marks it running.
    again = Tracker(uri, "views", study="views", artifact_location=str(tmp_path / "art"))
    again.start({"name": "views"})
    paused.status = "running"
    again.log_progress(paused, {"iteration": 20, "train_loss": 0.9})
    assert client.get_run(again._child_runs()["a1"]["run_id"]).info.status == "RUNNING"
    assert again.close_unknown({"a1"}) == []  # b2 is closed already


def test_a_best_rows_plot_draws_each_learner_s_adaptation_curve():
    """`rows: best`: one curve per learner (its best trial's loss against inner steps), not one
    point on an axis labelled "best"; plus the trivial baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metatune.study.plots import _best_curves
    from metatune.study.table import build_table

    records = [_record("a1", "maml", 0.01, loss=0.7), _record("a2", "maml", 0.1, loss=0.4),
               _record("b1", "tnet", 0.01, loss=0.5)]
    table = build_table(records, rows="best", learners=["maml", "tnet"], baseline=("predicting 0", 4.25))
    assert table.cell("best", "maml").trial_id == "a2"
    fig, ax = plt.subplots()
    assert _best_curves(table, records, ax)
    lines = {c.get_label(): c.lines[0] for c in ax.containers}  # one errorbar per learner
    assert set(lines) == {"maml", "tnet"}
    steps = records[1].curves["loss_by_step"]
    assert list(lines["maml"].get_ydata()) == [y for y in steps if y is not None]
    assert len(lines["maml"].get_xdata()) > 1  # a curve, not one point
    assert "Trivial baseline: predicting 0 scores 4.25" in table.to_markdown()
    plt.close(fig)
