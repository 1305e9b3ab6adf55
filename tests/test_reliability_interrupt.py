"""The study driver is interrupted again and again (Ctrl-C and SIGKILL, mid-trial, right after a
trial finished, during start-up) and `metatune resume` finishes the study each time. At the end
the trial set is exactly the planned one, no finished trial trained again, every MLflow run
exists once and none is left RUNNING, and Optuna holds a finished trial for every Tune trial.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import yaml
from study_process import Driver, trial_rows

pytestmark = pytest.mark.slow  # 2-3 minutes: five driver processes, each starting Ray

STUDY = {
    "name": "interrupted",
    "seed": 0,
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": {"maml": {}, "metasgd": {}},
    "search_space": {"params": {"inner_lr": {"low": 1e-3, "high": 0.5, "log": True}}},
    "sampler": {"name": "tpe", "seed": 3, "startup_trials": 2},
    "trials": 6,
    "max_concurrent_trials": 2,
    "resources": {"cpus": 1},
    "training": {
        "iterations": 600,
        "meta_batch": 4,
        "eval_every": 50,
        "log_every": 10,
        "val_tasks": 20,
        "checkpoint_every": 50,
    },
    "evaluation": {"tasks": 50, "shots": [5], "inner_steps": 1, "lr_scales": [0.5, 1.0]},
}


def _n_rows(d: Path) -> int:
    return sum(len(rows) for rows in trial_rows(d).values())


def _n_stored_finals(d: Path) -> int:
    """Trials whose worker stored its final report; the driver may not have received it yet
    (and Tune's result.json is buffered, so it shows finals late)."""
    return len(list((d / "tune").glob("trial-*/final.json")))


@pytest.fixture(scope="module")
def interrupted_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("interrupted")
    study_dir = root / "out"
    study_file = root / "study.yaml"
    study_file.write_text(yaml.safe_dump({**STUDY, "storage": str(study_dir)}))
    common = ["--num-cpus", "2", "--progress-every", "30"]
    # (command, when to interrupt, signal); the last phase runs to the end.
    phases = [
        (["run", str(study_file)], "first trial report", signal.SIGINT),
        (["resume", str(study_dir)], "a trial just finished", signal.SIGKILL),
        (["resume", str(study_dir)], "start-up (3 s)", signal.SIGKILL),
        (["resume", str(study_dir)], "mid-trial", signal.SIGINT),
        (["resume", str(study_dir)], "mid-trial", signal.SIGKILL),
        (["resume", str(study_dir)], None, None),
    ]
    delivered: list[tuple[str, str, int]] = []
    running_after_sigint: list[list[str]] = []
    # After each interruption: trial -> rows in its result.json, for trials that had stored their
    # final report (whether or not the driver received it).
    finished_at_stop: list[dict[str, int]] = []
    code = None
    for i, (args, when, sig) in enumerate(phases):
        driver = Driver(args + common, cwd=root, log=root / f"driver{i}.log")
        try:
            if sig is None:
                code = driver.finish(timeout=400)
                break
            rows0, finals0 = _n_rows(study_dir), _n_stored_finals(study_dir)
            if when == "start-up (3 s)":
                cond = lambda: driver.elapsed() > 3  # noqa: E731
            elif when == "a trial just finished":
                cond = lambda: _n_stored_finals(study_dir) > finals0  # noqa: E731
            else:
                cond = lambda: _n_rows(study_dir) > rows0  # noqa: E731
            if driver.wait_for(cond, timeout=300):
                delivered.append((when, sig.name, driver.interrupt(sig)))
                counts = {t: len(rows) for t, rows in trial_rows(study_dir).items()}
                stored = [p.parent.name.removeprefix("trial-") for p in (study_dir / "tune").glob("trial-*/final.json")]
                finished_at_stop.append({t: counts.get(t, 0) for t in stored})
                if sig == signal.SIGINT:  # a driver that stops on its own leaves nothing RUNNING
                    running_after_sigint.append(_running_runs(study_dir))
            else:  # the study ended before the moment came
                code = driver.finish(timeout=60)
                break
        finally:
            driver.cleanup()
    return {
        "dir": study_dir,
        "root": root,
        "code": code,
        "delivered": delivered,
        "running_after_sigint": running_after_sigint,
        "finished_at_stop": finished_at_stop,
    }


def _running_runs(study_dir: Path) -> list[str]:
    from mlflow.tracking import MlflowClient

    from metatune.study.spec import open_study

    study = open_study(study_dir)
    client = MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(study.experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def _study(d: Path):
    from metatune.study import _ray
    from metatune.study.spec import open_study

    study = open_study(d)
    return study, _ray.read_records(study)


def test_resume_finishes_the_planned_trial_set(interrupted_study):
    delivered = interrupted_study["delivered"]
    assert len(delivered) >= 4, delivered
    assert all(rc != 0 for _, _, rc in delivered)  # each interrupted driver said so
    assert interrupted_study["code"] == 0
    study, records = _study(interrupted_study["dir"])
    assert len(records) == STUDY["trials"]
    assert len({r.trial_id for r in records}) == STUDY["trials"]
    assert {r.status for r in records} == {"completed"}
    # No trial that reported anything was forgotten. A SIGKILL can land in the second between
    # Tune starting a trial and its next snapshot: that trial's folder stays behind, empty.
    rows = trial_rows(interrupted_study["dir"])
    on_disk = {p.name.removeprefix("trial-") for p in (interrupted_study["dir"] / "tune").glob("trial-*")}
    forgotten = on_disk - {r.trial_id for r in records}
    assert not [t for t in forgotten if rows.get(t)], "a trial that reported results was lost"
    print(f"\ninterruptions {delivered}; empty trial folders left by a kill: {len(forgotten)}")
    for d in (interrupted_study["dir"] / "tune").glob("trial-*"):
        assert len(list(d.glob("checkpoint_*"))) <= 2  # pruned after each driver run
    from metatune.study.results import read_trials

    assert sorted(row["trial_id"] for row in read_trials(study.parquet_path)) == sorted(
        r.trial_id for r in records
    )


def test_no_finished_trial_trains_again(interrupted_study):
    rows_now = trial_rows(interrupted_study["dir"])
    for trial_id, rows in rows_now.items():
        ends = [i for i, r in enumerate(rows) if "outcome" in r]
        assert ends, f"trial {trial_id} never finished"
        first = rows[ends[0]]
        for later in rows[ends[0] + 1 :]:
            # After its final report a trial may only replay that report (driver killed before
            # Tune's snapshot saw the trial finish); it never trains or evaluates again.
            assert later.get("replayed") == 1.0, (trial_id, later)
            assert later["test_loss"] == first["test_loss"]
            assert later["iteration"] == first["iteration"]
    # Tune's result.json is buffered, so a killed driver may never have written a final row
    # that the worker reported: what counts is what a trial did after each stop.
    checked = 0
    for stop in interrupted_study["finished_at_stop"]:
        for trial_id, n in stop.items():
            after = rows_now[trial_id][n:]
            assert all(r.get("replayed") == 1.0 for r in after), (trial_id, after)
            checked += 1
    replays = sum(r.get("replayed") == 1.0 for rows in rows_now.values() for r in rows)
    print(f"\nfinal reports replayed instead of retraining: {replays}; trials finished at a stop: {checked}")


def test_mlflow_has_each_run_once_and_none_running(interrupted_study):
    from mlflow.tracking import MlflowClient

    study, records = _study(interrupted_study["dir"])
    client = MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(study.experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("metatune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("metatune.role") == "trial"]
    assert interrupted_study["running_after_sigint"] == [[]] * len(interrupted_study["running_after_sigint"])
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [r.data.tags["metatune.trial_id"] for r in children]
    assert sorted(ids) == sorted(r.trial_id for r in records)  # once each, none extra
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(r.data.tags.get("metatune.final") == "1" for r in children)


def test_optuna_has_a_finished_trial_for_every_tune_trial(interrupted_study):
    import optuna

    from metatune.study import _ray

    study, records = _study(interrupted_study["dir"])
    trials = _ray.optuna_trials(study)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    complete = {
        t.user_attrs[_ray.ATTR_TUNE_ID]: t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
    }
    assert set(complete) == {r.trial_id for r in records}
    for r in records:
        assert complete[r.trial_id].value == pytest.approx(r.objective)
        assert complete[r.trial_id].params["inner_lr"] == pytest.approx(r.params["inner_lr"])


def test_trial_finished_after_the_last_snapshot_is_replayed(tmp_path: Path):
    """Deterministic version of interruption 2: Tune snapshots the experiment once, at start-up,
    and never again, so when the driver is killed after a trial finished, the restored
    experiment still has that trial unfinished and Tune runs it again. It must replay its
    stored final report, not train."""
    study_dir = tmp_path / "out"
    study_file = tmp_path / "study.yaml"
    spec = {
        **STUDY,
        "name": "snapshot-gap",
        "learners": {"maml": {}},
        "trials": 3,
        "max_concurrent_trials": 1,
        # Long enough (about 5 s a trial) that the kill lands while the next trial trains.
        "training": {**STUDY["training"], "iterations": 3000, "eval_every": 500, "checkpoint_every": 500},
        "storage": str(study_dir),
    }
    study_file.write_text(yaml.safe_dump(spec))
    common = ["--num-cpus", "2", "--progress-every", "30"]
    driver = Driver(
        ["run", str(study_file), *common],
        cwd=tmp_path,
        log=tmp_path / "driver0.log",
        env={"TUNE_GLOBAL_CHECKPOINT_S": "3600", "PYTHONUNBUFFERED": "1"},
    )
    try:
        # The driver prints "done" once Tune has processed a trial's final result.
        assert driver.wait_for(lambda: "  done maml-" in driver.output(), timeout=300), driver.output()[-3000:]
        assert driver.interrupt(signal.SIGKILL) != 0
    finally:
        driver.cleanup()
    finished = re.findall(r"  done maml-(\w+) ", driver.output())
    # Tune's result.json is buffered: rows of the killed driver may be missing, never extra.
    before = {t: len(rows) for t, rows in trial_rows(study_dir).items()}
    driver = Driver(["resume", str(study_dir), *common], cwd=tmp_path, log=tmp_path / "driver1.log")
    try:
        assert driver.finish(timeout=400) == 0, driver.output()[-3000:]
    finally:
        driver.cleanup()
    stored = {t: json.loads((study_dir / "tune" / f"trial-{t}" / "final.json").read_text()) for t in finished}
    for trial_id in finished:
        after = trial_rows(study_dir)[trial_id][before.get(trial_id, 0) :]
        assert len(after) == 1 and after[0].get("replayed") == 1.0, after  # the replay, no training
        assert after[0]["test_loss"] == stored[trial_id]["test_loss"]
        assert after[0]["iteration"] == 3000
    _, records = _study(study_dir)
    assert sorted(r.status for r in records) == ["completed"] * 3
    assert set(finished) <= {r.trial_id for r in records}
