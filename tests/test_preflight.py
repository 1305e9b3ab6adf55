"""A study driver refuses, in one line with exit 2 and before Ray starts, what cannot work: a
second driver on the same study folder, impossible resources, a mistyped tracking URI, and a
storage folder it cannot write. Real processes; each case is bounded in time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]

STUDY = {
    "name": "preflight",
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": ["maml"],
    "search_space": {"params": {"inner_lr": {}}},
    "trials": 1,
    "training": {"iterations": 20, "eval_every": 10},
    "evaluation": {"tasks": 10},
    "run": {"compile": False},
}


def study_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def metatune(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metatune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-500:], err[-1500:])
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Ray" not in proc.stdout and "trials:" not in proc.stdout  # nothing started


def test_a_second_driver_on_the_same_study_is_refused(tmp_path):
    """While another process holds the study's driver lock, `run` (and `--overwrite`) and
    `resume` are refused and change nothing; once that process is killed, the lock is free."""
    path, storage = study_file(tmp_path), tmp_path / "study"
    storage.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from metatune.study.preflight import hold_study_lock
        lock = hold_study_lock(Path({str(storage)!r}), "preflight")
        print("held", flush=True)
        import time; time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (storage / "keep.txt").write_text("recorded")
        start = time.monotonic()
        refused(metatune("run", str(path), "--storage", str(storage), cwd=tmp_path), "being run by another")
        refused(metatune("run", str(path), "--storage", str(storage), "--overwrite", cwd=tmp_path),
                "being run by another")
        assert time.monotonic() - start < 60
        assert (storage / "keep.txt").read_text() == "recorded"  # --overwrite deleted nothing
        assert not (storage / "study.frozen.yaml").exists() and not (storage / "tune").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    from metatune.study.preflight import hold_study_lock  # a killed holder leaves no stale lock

    hold_study_lock(storage, "preflight").release()


@pytest.mark.parametrize(("options", "needles"), [
    (["--num-cpus", "0"], ["field '--num-cpus'", "expected a positive number, got 0"]),
    (["--num-cpus", "-4"], ["field '--num-cpus'", "got -4"]),
    (["--num-gpus", "-1"], ["field '--num-gpus'"]),
    (["--tracking-uri", "htp://127.0.0.1:5000"], ["tracking", "'htp://127.0.0.1:5000'"]),
])
def test_bad_driver_options_fail_before_ray(tmp_path, options, needles):
    refused(metatune("run", str(study_file(tmp_path)), "--storage", str(tmp_path / "s"), *options,
                     cwd=tmp_path), *needles)
    assert not (tmp_path / "s" / "tune").exists()


def test_more_cpus_per_trial_than_the_local_ray_has_fails_before_ray(tmp_path):
    path = study_file(tmp_path, resources={"cpus": 1000})
    refused(metatune("run", str(path), "--storage", str(tmp_path / "s"), cwd=tmp_path),
            "field 'resources.cpus'", f"{os.cpu_count()} CPU(s)", "got 1000")
    refused(metatune("run", str(study_file(tmp_path, resources={"cpus": 2})), "--storage", str(tmp_path / "s"),
                     "--num-cpus", "1", cwd=tmp_path), "field 'resources.cpus'", "1 CPU(s)")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_per_trial_without_a_gpu_fails_before_ray(tmp_path):
    refused(metatune("run", str(study_file(tmp_path, resources={"gpus": 1})), "--storage", str(tmp_path / "s"),
                     cwd=tmp_path), "field 'resources.gpus'", "0 GPU(s)")


def test_a_study_file_with_a_mistyped_tracking_uri_is_refused(tmp_path):
    path = study_file(tmp_path, tracking={"uri": "htp://127.0.0.1:5000"})
    refused(metatune("run", str(path), "--storage", str(tmp_path / "s"), cwd=tmp_path),
            str(path), "tracking.uri", "htp://")


def test_unwritable_storage_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    for storage in (tmp_path / "a_file" / "study", Path("/proc/metatune-study")):
        refused(metatune("run", str(study_file(tmp_path)), "--storage", str(storage), cwd=tmp_path),
                "field '--storage'", "expected a folder metatune can write", str(storage))


def test_resume_of_a_copied_study_stays_in_its_folder(tmp_path):
    """`cp -r A B; metatune resume B` works in B (its Tune state, Parquet and MLflow store) and
    leaves A as it was."""
    import shutil

    a, b = tmp_path / "A", tmp_path / "B"
    done = metatune("run", str(study_file(tmp_path)), "--storage", str(a), "--num-cpus", "1", cwd=tmp_path,
                    timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    shutil.copytree(a, b)
    before = {p.relative_to(a): p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    resumed = metatune("resume", str(b), "--num-cpus", "1", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"folder {b}" in resumed.stdout and str(a) not in resumed.stdout
    after = {p.relative_to(a): p.stat().st_mtime_ns for p in a.rglob("*") if p.is_file()}
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    # Known gap (issue 12): MLflow fixes a run's artifact location in its store when the run is
    # created, with no public API to move it, so the copied parent run's table artifacts still go
    # to A's mlartifacts/. Nothing else of A may change.
    assert all(p.parts[0] == "mlartifacts" for p in changed), sorted(map(str, changed))
    assert f"sqlite:///{b / 'mlflow.db'}" in resumed.stdout
    assert "1/1 done" in resumed.stdout or "1 completed" in resumed.stdout


def test_a_view_that_cannot_be_written_does_not_stop_the_study(tmp_path):
    """The study table's folder is a file (a write the disk refuses, as a full or read-only disk
    would): the study still finishes (exit 0) and says how to restore the views; `report`
    rewrites them once the disk accepts writes again."""
    storage = tmp_path / "s"
    storage.mkdir()
    (storage / "table").write_text("in the way")
    done = metatune("run", str(study_file(tmp_path)), "--storage", str(storage), "--num-cpus", "1",
                    "--no-mlflow", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert "writing the study's files failed" in done.stdout and f"metatune report {storage}" in done.stdout
    assert "1/1 done" in done.stdout or "1 completed" in done.stdout
    (storage / "table").unlink()
    report = metatune("report", str(storage), "--no-mlflow", cwd=tmp_path, timeout=300)
    assert report.returncode == 0, report.stdout[-2000:] + report.stderr[-2000:]
    assert (storage / "table" / "study_table.md").is_file()


def test_a_half_created_mlflow_store_heals(tmp_path):
    """A study whose first start was interrupted while MLflow created its tables (some tables,
    no schema version, no runs): the next run moves that file aside and logs to a fresh store."""
    import sqlite3

    storage = tmp_path / "s"
    storage.mkdir()
    with sqlite3.connect(storage / "mlflow.db") as con:  # what the interrupted creation leaves
        for table in ("experiments", "runs", "tags", "trace_info"):
            con.execute(f"CREATE TABLE {table} (id INTEGER)")
    done = metatune("run", str(study_file(tmp_path)), "--storage", str(storage), "--num-cpus", "1",
                    cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "already exists" not in done.stdout + done.stderr and "MLflow failed" not in done.stdout
    assert len(list(storage.glob("mlflow.db.incomplete-*"))) == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name("preflight")
    assert exp is not None and len(client.search_runs([exp.experiment_id])) == 2  # parent + 1 trial


def test_dry_run_prints_the_plan_and_touches_nothing(tmp_path):
    storage = tmp_path / "never"
    done = metatune("run", str(study_file(tmp_path)), "--storage", str(storage), "--dry-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dry run: nothing started" in done.stdout and "1 trials of maml" in done.stdout
    assert "maml: inner_lr: float [" in done.stdout and "20 iterations" in done.stdout
    assert not storage.exists() and "trials:" not in done.stdout  # no folder, no Ray
    bad = metatune("run", str(study_file(tmp_path, resources={"cpus": 1000})), "--dry-run", cwd=tmp_path)
    refused(bad, "field 'resources.cpus'")  # the plan is only printed for a study that would run


def test_set_overrides_go_through_the_file_s_validation_and_name_the_item(tmp_path):
    path = study_file(tmp_path)
    plan = metatune("run", str(path), "--dry-run", "--set", "trials=3", "--set", "training.iterations=40",
                    "--set", "training.eval_every=20", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "3 trials of maml" in plan.stdout and "40 iterations" in plan.stdout
    for item, needles in (
        ("training.iteratons=5", ["--set training.iteratons=5", "field 'training.iteratons'", "unknown field"]),
        ("trials=abc", ["--set trials=abc", "field 'trials'", "expected an integer"]),
        ("training.iterations=5", ["--set training.iterations=5", "field 'training.eval_every'"]),
        ("nonsense", ["field '--set nonsense'", "expected KEY=VALUE"]),
    ):
        refused(metatune("run", str(path), "--storage", str(tmp_path / "s"), "--set", item, cwd=tmp_path),
                *needles)
    assert not (tmp_path / "s").exists()


def test_a_study_that_sets_only_its_iterations_runs_its_periods_within_them(tmp_path):
    path = study_file(tmp_path, training={"iterations": 30})  # a run config's eval_every is 1000
    plan = metatune("run", str(path), "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "30 iterations" in plan.stdout and "validation every 3;" in plan.stdout  # 1/12, rounded up
    # A shipped study shortened from the command line keeps its shape: 12 validations.
    short = metatune("run", str(ROOT / "studies" / "mtnet_step_size.yaml"), "--dry-run",
                     "--set", "training.iterations=2000", "--set", "seeds=[0]", cwd=tmp_path)
    assert short.returncode == 0, short.stderr[-2000:]
    assert "18 trials" in short.stdout and "2000 iterations" in short.stdout and "validation every 167;" in short.stdout
    refused(metatune("run", str(study_file(tmp_path, training={"iterations": 30, "eval_every": 50})),
                     "--dry-run", cwd=tmp_path), "field 'training.eval_every'", "expected <= training.iterations")


def test_dry_run_never_imports_ray(tmp_path, monkeypatch, capsys):
    """In-process, with Ray and metatune's Ray adapter made unimportable: the dry run still works."""
    import sys as _sys

    from metatune.cli import main

    monkeypatch.setitem(_sys.modules, "ray", None)
    monkeypatch.setitem(_sys.modules, "metatune.study._ray", None)
    assert main(["run", str(study_file(tmp_path)), "--storage", str(tmp_path / "s"), "--dry-run"]) == 0
    assert "dry run: nothing started" in capsys.readouterr().out and not (tmp_path / "s").exists()
