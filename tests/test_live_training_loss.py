"""The training loss reaches MLflow while the trial runs, at every ``log_every``, not only with
each validation report (issue 11, item 3): a real `metatune run` whose only validation is at the
end, its sqlite MLflow store read while the trial trains."""

from __future__ import annotations

import logging
import signal
import sqlite3
from pathlib import Path

import ray
import yaml

from metatune.study._ray.live import LiveLog
from tests.study_process import Driver, trial_rows

LOG_EVERY = 50
STUDY = {
    "name": "live",
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": ["maml"],
    "search_space": {"params": {"inner_lr": {}}},
    "trials": 1,
    # One validation, at the end: no Tune report comes before it, so any train_loss point in
    # MLflow while the trial runs came live. Far longer than the test waits (minutes a trial).
    "training": {"iterations": 40000, "eval_every": 40000, "log_every": LOG_EVERY, "val_tasks": 10},
    "evaluation": {"tasks": 10},
    "run": {"compile": False},
}
TIMEOUT = 240

# The store's own tables, read-only: a second MLflow client could race the driver's creation of
# the tables; plain reads of a sqlite file cannot.
_POINTS = """
SELECT r.status, m.step, m.value FROM metrics m
JOIN runs r ON r.run_uuid = m.run_uuid
JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'metatune.role' AND t.value = 'trial'
WHERE m.key = 'main/train_loss' ORDER BY m.step
"""


def _train_loss_points(db: Path) -> list[tuple[str, int, float]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return [(str(s), int(step), float(v)) for s, step, v in conn.execute(_POINTS)]
    except sqlite3.OperationalError:  # tables not created yet, or a write in progress
        return []


def test_train_loss_is_in_mlflow_before_the_first_report(tmp_path):
    study_file = tmp_path / "live.yaml"
    study_file.write_text(yaml.safe_dump(STUDY))
    storage = tmp_path / "study"
    driver = Driver(["run", str(study_file), "--storage", str(storage), "--num-cpus", "1"],
                    cwd=tmp_path, log=tmp_path / "run.log")
    db = storage / "mlflow.db"
    try:
        assert driver.wait_for(lambda: len(_train_loss_points(db)) >= 4, timeout=TIMEOUT), driver.output()[-3000:]
        points = _train_loss_points(db)
        reported = [row for rows in trial_rows(storage).values() for row in rows]
        rc = driver.interrupt(signal.SIGINT)
    finally:
        driver.cleanup()
    assert reported == [], "a Tune report came first; the points did not need the live path"
    assert {status for status, _, _ in points} == {"RUNNING"}
    steps = [step for _, step, _ in points]
    assert len(set(steps)) == len(steps), steps  # each log point once
    assert steps == list(range(LOG_EVERY, LOG_EVERY * (len(steps) + 1), LOG_EVERY)), steps
    assert all(0 < value < 50 for _, _, value in points), points  # sine MSE, finite
    assert rc == 130, driver.output()[-3000:]


def test_a_dead_inbox_costs_one_warning_and_nothing_else(caplog):
    """The inbox is a view: when it is gone (its node died), draining gives nothing, says so
    once, and never raises into Tune's loop."""
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        live = LiveLog(period_s=0.0)
        sender = live.sender()
        sender.inbox.push.remote([("t1", {"iteration": 5, "train_loss": 1.0})])
        assert live.drain(force=True) == {"t1": [{"iteration": 5, "train_loss": 1.0}]}
        live.close()
        with caplog.at_level(logging.WARNING):
            assert live.drain(force=True) == {} and live.drain(force=True) == {}
        warned = [r for r in caplog.records if "live training loss is unavailable" in r.getMessage()]
        assert len(warned) == 1, caplog.records
    finally:
        ray.shutdown()
