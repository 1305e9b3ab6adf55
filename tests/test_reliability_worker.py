"""A trial's worker process is killed mid-training, twice. The first time Tune retries the
trial (max_failures 1) from its last checkpoint; the second time the trial is out of retries
and ends as an error, the rest of the study goes on, and `metatune resume` finishes the trial,
again from its checkpoint. Its final result equals an uninterrupted run with the same seed, and
Optuna, which had been told the trial failed, learns its result as a new trial.
"""

from __future__ import annotations

import os
import signal

import pytest
import yaml
from study_process import Driver, finals, trial_rows

pytestmark = pytest.mark.slow  # about 2 minutes: two driver processes, a retried trial

EVAL_EVERY = 50
STUDY = {
    "name": "lost_worker",
    "seed": 0,
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": {"maml": {"inner_steps": 2}},
    "search_space": {"params": {"inner_lr": {"low": 1e-3, "high": 0.1, "log": True}}},
    "sampler": {"name": "tpe", "seed": 5, "startup_trials": 2},
    "trials": 2,
    "max_concurrent_trials": 1,
    "max_failures": 1,
    "resources": {"cpus": 1},
    "training": {
        "iterations": 800,
        "meta_batch": 4,
        "eval_every": EVAL_EVERY,
        "log_every": 10,
        "val_tasks": 20,
        "checkpoint_every": EVAL_EVERY,
    },
    "evaluation": {"tasks": 50, "shots": [5], "inner_steps": 2, "lr_scales": [0.5, 1.0]},
}


@pytest.fixture(scope="module")
def lost_worker(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("lost_worker")
    study_dir = root / "out"
    study_file = root / "study.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "storage": str(study_dir)}))
    common = ["--num-cpus", "2", "--progress-every", "30"]
    kills: list[dict] = []

    def first_trial() -> tuple[str, list[dict]] | None:
        rows = trial_rows(study_dir)
        return min(rows.items(), key=lambda kv: kv[1][0]["timestamp"]) if any(rows.values()) else None

    def kill_worker_after(min_iteration: int, not_pid: int | None) -> None:
        def due() -> bool:
            found = first_trial()
            return bool(found) and any(
                r["iteration"] >= min_iteration and r["pid"] != not_pid and "outcome" not in r for r in found[1]
            )

        assert driver.wait_for(due, timeout=240), driver.output()[-3000:]
        trial_id, rows = first_trial()
        row = [r for r in rows if r["pid"] != not_pid][-1]
        os.kill(row["pid"], signal.SIGKILL)
        kills.append({"trial_id": trial_id, "pid": row["pid"], "iteration": row["iteration"]})

    driver = Driver(["run", str(study_file), *common], cwd=root, log=root / "run.log")
    try:
        kill_worker_after(2 * EVAL_EVERY, None)  # Tune retries it (1 failure allowed)
        kill_worker_after(kills[0]["iteration"] + EVAL_EVERY, kills[0]["pid"])  # out of retries
        run_code = driver.finish(timeout=300)
    finally:
        driver.cleanup()
    from metatune.study import _ray
    from metatune.study.spec import open_study

    study = open_study(study_dir)
    before = {r.trial_id: r for r in _ray.read_records(study)}
    rows_before = trial_rows(study_dir)
    driver = Driver(["resume", str(study_dir), *common], cwd=root, log=root / "resume.log")
    try:
        resume_code = driver.finish(timeout=300)
    finally:
        driver.cleanup()
    return {
        "study": study,
        "kills": kills,
        "run_code": run_code,
        "resume_code": resume_code,
        "before": before,
        "rows_before": rows_before,
        "records": {r.trial_id: r for r in _ray.read_records(study)},
        "rows": trial_rows(study_dir),
    }


def test_out_of_retries_is_an_error_and_the_study_goes_on(lost_worker):
    trial_id = lost_worker["kills"][0]["trial_id"]
    assert lost_worker["kills"][1]["trial_id"] == trial_id
    before = lost_worker["before"]
    assert before[trial_id].status == "error"
    assert before[trial_id].num_failures >= 2
    assert [r.status for t, r in before.items() if t != trial_id] == ["completed"]
    assert lost_worker["run_code"] != 0  # `metatune run` says the study is not finished


def test_trial_resumes_from_its_checkpoint_never_from_zero(lost_worker):
    trial_id = lost_worker["kills"][0]["trial_id"]
    rows = [r for r in lost_worker["rows"][trial_id] if "outcome" not in r]
    iterations = [r["iteration"] for r in rows]
    restarts = [i for i in range(1, len(rows)) if rows[i]["pid"] != rows[i - 1]["pid"]]
    assert len(restarts) == 2, rows  # a new worker for Tune's retry, another for `metatune resume`
    for i in restarts:
        # The first report of a new worker is one period past a checkpoint reported before the
        # kill: training went on from there, not from iteration 0.
        assert iterations[i] > EVAL_EVERY
        assert iterations[i] - EVAL_EVERY in iterations[:i]
    assert iterations == sorted(set(iterations))  # nothing trained twice
    assert lost_worker["resume_code"] == 0
    assert lost_worker["records"][trial_id].status == "completed"


def test_result_equals_an_uninterrupted_run(lost_worker):
    from metatune.trial import Trainer

    trial_id = lost_worker["kills"][0]["trial_id"]
    record = lost_worker["records"][trial_id]
    reference = Trainer.from_config(record.run_config).train()
    main = reference.evaluation.by_shots[STUDY["task"]["shots"]]
    assert record.iteration == reference.iterations == STUDY["training"]["iterations"]
    assert record.test_loss == pytest.approx(main.loss.mean, rel=1e-5)
    print(
        f"\nkilled worker at iterations {[k['iteration'] for k in lost_worker['kills']]}; test loss "
        f"{record.test_loss!r} vs uninterrupted {main.loss.mean!r}"
    )
    assert len(finals(lost_worker["rows"][trial_id])) == 1
    ref_val = reference.history[-1]["val_loss"]
    assert record.objective == pytest.approx(ref_val, rel=1e-5)


def test_optuna_learns_the_retried_trial(lost_worker):
    import optuna

    from metatune.study import _ray

    study = lost_worker["study"]
    trial_id = lost_worker["kills"][0]["trial_id"]
    record = lost_worker["records"][trial_id]
    trials = _ray.optuna_trials(study)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    mine = [t for t in trials if t.user_attrs.get(_ray.ATTR_TUNE_ID) == trial_id]
    assert [t.state for t in mine] == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    failed, learned = mine
    assert learned.user_attrs[_ray.ATTR_RETRY_OF] == failed.number
    assert learned.params == failed.params
    assert learned.value == pytest.approx(record.objective)
    completed = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(completed) == STUDY["trials"]  # the sampler sees every finished trial


def test_mlflow_run_of_the_retried_trial_is_single_and_finished(lost_worker):
    from mlflow.tracking import MlflowClient

    study = lost_worker["study"]
    trial_id = lost_worker["kills"][0]["trial_id"]
    client = MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.`metatune.trial_id` = '{trial_id}'")
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["metatune.status"] == "completed"
