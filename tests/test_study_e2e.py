"""A small real study end to end: a private local Ray (2 CPUs) schedules trials that Optuna
(TPE) suggests; MLflow gets a parent run with the study table and one nested child run per
trial; the Parquet file has one row per trial; the exported best config trains with
`metatune train` unchanged; `metatune report` rebuilds everything without duplicating runs.
"""

from __future__ import annotations

import glob
import json
import pickle
from pathlib import Path

import pytest
import yaml

from metatune.cli import main

STUDY = {
    "name": "e2e",
    "seed": 0,
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": {"maml": {}, "metasgd": {}},
    "search_space": {
        "params": {"inner_lr": {"low": 1e-3, "high": 0.5, "log": True}, "outer_lr": {}},
        "per_learner": {"metasgd": {"alpha_init": ["constant", "uniform"]}},
    },
    "sampler": {"name": "tpe", "seed": 3, "startup_trials": 2},
    "trials": 4,
    "max_concurrent_trials": 2,
    "resources": {"cpus": 1},
    "training": {
        "iterations": 30,
        "meta_batch": 2,
        "eval_every": 15,
        "log_every": 5,
        "val_tasks": 10,
        "checkpoint_every": 15,
    },
    "evaluation": {"tasks": 20, "shots": [5, 10], "inner_steps": 2, "lr_scales": [0.5, 1.0, 2.0]},
    "table": {"rows": "best"},
}


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("e2e")
    study_file = root / "e2e.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "storage": str(root / "out")}))
    code = main(["run", str(study_file), "--num-cpus", "2", "--progress-every", "10"])
    return {"root": root, "dir": root / "out", "file": study_file, "code": code}


def _records(study_dir: Path):
    from metatune.study import _ray
    from metatune.study.spec import open_study

    study = open_study(study_dir)
    return study, _ray.read_records(study)


def _mlflow_runs(study):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("metatune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("metatune.role") == "trial"]
    return client, parents, children


def test_study_runs_to_completion(finished_study, capsys):
    assert finished_study["code"] == 0
    study, records = _records(finished_study["dir"])
    assert len(records) == 4
    assert {r.status for r in records} == {"completed"}
    assert {r.learner for r in records} == {"maml", "metasgd"}  # learners_first: each learner is tried
    for r in records:
        assert 1e-3 <= r.params["inner_lr"] <= 0.5
        assert ("metasgd.alpha_init" in r.params) == (r.learner == "metasgd")  # conditional branch
        assert r.objective is not None and r.test_loss is not None
        assert r.run_config["learner"]["inner_lr"] == r.params["inner_lr"]
        assert r.curves["shots"] == [5, 10] and len(r.curves["loss_by_step"]) == 3


def test_optuna_suggested_every_trial(finished_study):
    """Optuna's record (the study's RDB storage, optuna.db) holds one Optuna trial per Tune trial,
    all COMPLETE (none left RUNNING), with exactly the parameters the Tune trials ran with; the
    searcher state Tune saved holds no copy of it."""
    import optuna

    from metatune.study._ray import optuna_trials

    study, records = _records(finished_study["dir"])
    [state_file] = glob.glob(str(Path(study.tune_path) / "searcher-state-*.pkl"))
    with open(state_file, "rb") as f:
        state = pickle.load(f)
    assert state["_ot_study"] is None and state["_storage"] is None
    ot_trials = optuna_trials(study)
    assert len(ot_trials) == 4
    assert {t.state for t in ot_trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(json.dumps(r.params, sort_keys=True) for r in records) == sorted(
        json.dumps(t.params, sort_keys=True) for t in ot_trials
    )
    assert sorted(r.objective for r in records) == pytest.approx(sorted(t.value for t in ot_trials))


def test_mlflow_parent_children_and_table(finished_study):
    study, records = _records(finished_study["dir"])
    client, parents, children = _mlflow_runs(study)
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.tags["metatune.trial_id"] for c in children} == {r.trial_id for r in records}
    assert {c.info.status for c in children} == {"FINISHED"}
    table_files = {a.path for a in client.list_artifacts(parent.info.run_id, "table")}
    assert table_files == {"table/study_table.csv", "table/study_table.md", "table/study_plot.png"}
    assert "| best |" in parent.data.tags["mlflow.note.content"]
    child = children[0]
    history = client.get_metric_history(child.info.run_id, "main/train_loss")
    assert sorted(m.step for m in history) == [5, 10, 15, 20, 25, 30]  # each point once
    assert {m.step for m in client.get_metric_history(child.info.run_id, "robust/loss_vs_K")} == {5, 10}
    assert "robustness.png" in {a.path for a in client.list_artifacts(child.info.run_id)}


def test_parquet_rows_equal_trials(finished_study):
    from metatune.study.results import read_trials

    study, records = _records(finished_study["dir"])
    rows = read_trials(study.parquet_path)
    assert sorted(r["trial_id"] for r in rows) == sorted(r.trial_id for r in records)
    by_id = {r.trial_id: r for r in records}
    for row in rows:
        rec = by_id[row["trial_id"]]
        assert row["status"] == rec.status and row["learner"] == rec.learner
        assert row["test_loss"] == pytest.approx(rec.test_loss)
        assert row["curve_iteration"] == [5, 10, 15, 20, 25, 30]
        assert len(row["loss_by_lr_scale"]) == 3


def test_exported_config_trains_unchanged(finished_study, tmp_path):
    study, records = _records(finished_study["dir"])
    exported = sorted(study.best_dir.glob("*.yaml"))
    assert {p.stem for p in exported} == {r.learner for r in records}
    best = exported[0]
    out = tmp_path / "retrain"
    assert main(["train", str(best), "--output", str(out), "--no-progress"]) == 0
    assert (out / "result.json").is_file()


def test_report_rebuilds_without_duplicates(finished_study, capsys):
    study, records = _records(finished_study["dir"])
    client, _, before = _mlflow_runs(study)
    counts = {c.info.run_id: len(client.get_metric_history(c.info.run_id, "main/train_loss")) for c in before}
    study.parquet_path.unlink()
    assert main(["report", str(finished_study["dir"])]) == 0
    assert study.parquet_path.is_file()
    client, parents, after = _mlflow_runs(study)
    assert len(parents) == 1 and len(after) == len(before)
    assert {
        c.info.run_id: len(client.get_metric_history(c.info.run_id, "main/train_loss")) for c in after
    } == counts
    assert main(["status", str(finished_study["dir"])]) == 0
    out = capsys.readouterr().out
    assert "4/4 done" in out
