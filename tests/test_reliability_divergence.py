"""A study that mixes stable and diverging MAML configurations (5 inner steps on sine: alpha
0.01 trains, alpha 1 trains badly, alpha 3 blows up within a few dozen iterations) finishes, and
every diverged trial is recorded as diverged, with its iteration and last finite loss, in all
four records: Tune, Optuna, MLflow and Parquet. In Optuna's record (read back with
``optuna.load_study``) a diverged trial is PRUNED (``optuna.divergence`` by default), never
COMPLETE at the penalty; no Optuna trial stays RUNNING (the Ray/Optuna NaN trap), the study
table says "diverged", and ASHA ends the bad trials early.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from metatune.cli import main
from metatune.study.metric_keys import BLOWUP

pytestmark = pytest.mark.slow  # about a minute: a real local Ray runs 6 short trials

ITERATIONS = 200
STUDY = {
    "name": "divergence",
    "seed": 0,
    "task": {"name": "sine", "protocol": "metasgd", "shots": 10},
    "learners": {"maml": {"inner_steps": 5}},
    "search_space": {"params": {"inner_lr": [0.01, 1.0, 3.0]}},
    "sampler": {"name": "random", "seed": 1},
    "scheduler": {"name": "asha", "grace_period": 50, "reduction_factor": 2},
    "trials": 6,
    "max_concurrent_trials": 1,  # one at a time: ASHA's rung comparisons follow the trial order
    "resources": {"cpus": 1},
    "training": {
        "iterations": ITERATIONS,
        "meta_batch": 4,
        "eval_every": 50,
        "log_every": 10,
        "val_tasks": 20,
        "checkpoint_every": 50,
    },
    "evaluation": {"tasks": 20, "shots": [10], "inner_steps": 5, "lr_scales": [0.5, 1.0]},
    "table": {"rows": "inner_lr"},
}


@pytest.fixture(scope="module")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from metatune.study import _ray
    from metatune.study.spec import open_study

    root = tmp_path_factory.mktemp("divergence")
    study_file = root / "divergence.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "storage": str(root / "out")}))
    code = main(["run", str(study_file), "--num-cpus", "2", "--progress-every", "30"])
    study = open_study(root / "out")
    return {"code": code, "study": study, "records": _ray.read_records(study)}


def test_study_finishes_with_every_kind_of_outcome(study_run):
    assert study_run["code"] == 0
    records = study_run["records"]
    assert len(records) == STUDY["trials"]
    by_lr = {lr: [r for r in records if r.params["inner_lr"] == lr] for lr in (0.01, 1.0, 3.0)}
    assert by_lr[0.01] and by_lr[3.0], "the sampler seed must draw a stable and a diverging alpha"
    assert all(r.status == "completed" and r.iteration == ITERATIONS for r in by_lr[0.01])
    for r in by_lr[3.0]:
        assert r.status == "diverged", r
        assert r.tune_status == "TERMINATED"  # a recorded outcome, not a crash
        assert r.diverged_at is not None and r.diverged_at < ITERATIONS
        assert r.iteration == r.diverged_at - 1  # the last finite update
        assert r.last_finite_loss is not None and math.isfinite(r.last_finite_loss)
        assert r.objective == study_run["study"].penalty
        assert r.test_loss is None  # nothing evaluated after divergence, and never NaN


def test_asha_ends_bad_trials_early(study_run):
    records = study_run["records"]
    stopped = [r for r in records if r.status == "stopped"]
    assert stopped, "ASHA should cut a trial that is worse than an earlier one at a rung"
    for r in stopped + [r for r in records if r.status == "diverged"]:
        assert r.iteration < ITERATIONS


def test_optuna_records_divergence_and_leaves_nothing_running(study_run):
    import optuna

    from metatune.study import _ray

    study, records = study_run["study"], study_run["records"]
    assert study.spec.optuna.divergence == "prune"  # the default
    # Optuna's own reading of the record, as optuna-dashboard or a notebook would.
    record = optuna.load_study(study_name=study.name, storage=f"sqlite:///{study.dir / 'optuna.db'}")
    trials = record.get_trials()
    assert [t.number for t in trials] == list(range(STUDY["trials"]))
    by_id = {t.user_attrs[_ray.ATTR_TUNE_ID]: t for t in trials}
    assert set(by_id) == {r.trial_id for r in records}
    # Tune's view (the records, the Parquet status column) and Optuna's agree on every trial.
    state = {"completed": "COMPLETE", "stopped": "COMPLETE", "diverged": "PRUNED"}
    assert sorted((by_id[r.trial_id].number, by_id[r.trial_id].state.name) for r in records) == sorted(
        (by_id[r.trial_id].number, state[r.status]) for r in records
    )
    for r in records:
        t = by_id[r.trial_id]
        assert t.params["inner_lr"] == r.params["inner_lr"]
        assert t.user_attrs[_ray.ATTR_OUTCOME] == r.status
        assert study.penalty not in t.intermediate_values.values()
        if r.status == "diverged":
            assert t.state == optuna.trial.TrialState.PRUNED and t.value != study.penalty
            # Diverged before its first validation: no intermediate value, so no value either.
            assert t.value == (max(t.intermediate_values.items())[1] if t.intermediate_values else None)
            assert t.user_attrs["metatune.diverged_at"] == r.diverged_at
            assert t.user_attrs["metatune.iteration"] == r.iteration
            assert t.user_attrs["metatune.last_finite_loss"] == pytest.approx(r.last_finite_loss)
        else:
            assert t.value == pytest.approx(r.objective)


def test_mlflow_runs_record_divergence(study_run):
    from mlflow.tracking import MlflowClient

    study, records = study_run["study"], study_run["records"]
    client = MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = {r.data.tags["metatune.trial_id"]: r for r in runs if r.data.tags.get("metatune.role") == "trial"}
    assert set(children) == {r.trial_id for r in records}
    assert all(run.info.status != "RUNNING" for run in runs)
    for r in records:
        run = children[r.trial_id]
        assert run.data.tags["metatune.status"] == r.status
        if r.status == "diverged":
            assert run.info.status == "FINISHED"
            assert run.data.tags["metatune.diverged_at"] == str(r.diverged_at)
            assert run.data.metrics["run/diverged"] == 1.0
            if abs(r.last_finite_loss) < BLOWUP:
                assert run.data.metrics["run/last_finite_loss"] == pytest.approx(r.last_finite_loss)
            else:  # a blown-up value stretches no axis; the run says why it is missing
                assert "run/last_finite_loss stops" in run.data.tags["metatune.cut"]
            assert "main/test_loss" not in run.data.metrics
            for key in run.data.metrics:  # no point of a diverged trial stretches an axis
                assert all(
                    math.isfinite(m.value) and abs(m.value) < BLOWUP
                    for m in client.get_metric_history(run.info.run_id, key)
                ), key
        if r.status == "completed":
            # The training loss was live: the points of each log_every stretch went in with
            # the report that followed them, not all at the trial's end.
            stamps = {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, "main/train_loss")}
            assert sorted(stamps) == list(range(10, ITERATIONS + 1, 10))
            assert stamps[10] < stamps[ITERATIONS], stamps


def test_parquet_and_table_show_divergence(study_run):
    from metatune.study.results import read_trials

    study, records = study_run["study"], study_run["records"]
    rows = {row["trial_id"]: row for row in read_trials(study.parquet_path)}
    assert set(rows) == {r.trial_id for r in records}
    for r in records:
        row = rows[r.trial_id]
        assert row["status"] == r.status
        assert row["diverged"] == (r.status == "diverged")
        if r.status == "diverged":
            assert row["diverged_at"] == r.diverged_at
            assert row["last_finite_loss"] == pytest.approx(r.last_finite_loss)
    table = Path(study.dir / "table" / "study_table.md").read_text()
    line = next(ln for ln in table.splitlines() if ln.startswith("| 3 "))
    assert "diverged" in line
