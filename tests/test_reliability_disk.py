"""A study folder whose disk fills up, or turns read-only, in the middle of a study loses
nothing: the driver stops with one line, and once the disk takes writes again `resume` finishes
the study with every trial once (issue 12, item 2). A damaged experiment snapshot is restored
from its last good copy, or the resume stops with one line; it never starts a new experiment.

Real processes on a real filesystem: a small tmpfs mounted for the test (root, as in CI), and a
driver without the capabilities that let root write into a read-only folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.study_process import Driver

STUDY = {
    "name": "disk",
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": ["maml"],
    "search_space": {"params": {"inner_lr": {}}},
    "trials": 3,
    "max_concurrent_trials": 1,
    # Long enough (~10 s a trial on one core) that the disk turns bad while a trial runs.
    "training": {"iterations": 2500, "eval_every": 250},
    "evaluation": {"tasks": 10},
    "run": {"compile": False},
}
TIMEOUT = 240


def _study_file(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


@contextlib.contextmanager
def _small_filesystem(where: Path, size_mb: int) -> Iterator[Path]:
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root as in CI")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write zeros until the disk refuses more."""
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    return filler


def _first_trial_done(driver: Driver) -> bool:
    return "  done " in driver.output()


def _check_nothing_lost(storage: Path, resumed: Driver, first_out: str) -> None:
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from metatune.study._ray import optuna_trials
    from metatune.study.spec import open_study

    out = resumed.output()
    assert "Traceback" not in out, out[-3000:]
    table = pq.read_table(storage / "trials.parquet").to_pylist()
    assert len(table) == STUDY["trials"], table
    assert {r["status"] for r in table} == {"completed"}, table
    assert all(r["iteration"] == STUDY["training"]["iterations"] for r in table)
    # The trial that finished before the disk turned bad is still one of them, not retrained.
    first_done = first_out.split("  done ", 1)[1].split(" ", 1)[0]
    assert first_done.split("-")[-1] in {r["trial_id"] for r in table}, (first_done, table)
    trial_dirs = sorted(p.name for p in (storage / "tune").glob("trial-*"))
    assert len(trial_dirs) >= STUDY["trials"]
    ot = optuna_trials(open_study(storage))
    assert {t.state.name for t in ot} <= {"COMPLETE", "FAIL"}, [(t.number, t.state.name) for t in ot]
    assert sum(t.state.name == "COMPLETE" for t in ot) == STUDY["trials"]
    client = MlflowClient(tracking_uri=f"sqlite:///{storage / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDY["name"])
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == STUDY["trials"] + 1, [(r.info.run_name, r.info.status) for r in runs]
    assert {r.info.status for r in runs} == {"FINISHED"}


def _stopped_cleanly(driver: Driver, rc: int) -> str:
    out = driver.output()
    assert rc == 1, (rc, out[-3000:])
    assert "refuses writes" in out and "metatune resume" in out, out[-3000:]
    assert "Traceback" not in out, out[-4000:]
    assert "Tuner.restore" not in out
    return out


def test_a_disk_that_fills_mid_study_loses_nothing(tmp_path):
    with _small_filesystem(tmp_path / "disk", 48) as disk:
        storage = disk / "study"
        first = Driver(["run", str(_study_file(tmp_path)), "--storage", str(storage), "--num-cpus", "1"],
                       cwd=tmp_path, log=tmp_path / "first.log")
        try:
            assert first.wait_for(lambda: _first_trial_done(first), timeout=TIMEOUT), first.output()[-3000:]
            filler = _fill(disk)
            rc = first.finish(timeout=TIMEOUT)
        finally:
            first.cleanup()
        first_out = _stopped_cleanly(first, rc)
        filler.unlink()
        resumed = Driver(["resume", str(storage), "--num-cpus", "1"], cwd=tmp_path, log=tmp_path / "resume.log")
        assert resumed.finish(timeout=TIMEOUT) == 0, resumed.output()[-3000:]
        _check_nothing_lost(storage, resumed, first_out)


def _without_root_privileges() -> list[str]:
    """A prefix that runs a command as root without the capabilities that ignore permissions
    (CI runs as root, where chmod alone does not stop a write)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    return [setpriv, "--inh-caps=-all", "--bounding-set=-all", "--"]


def test_a_folder_that_turns_read_only_mid_study_loses_nothing(tmp_path):
    storage = tmp_path / "study"
    prefix = _without_root_privileges()
    first = Driver(["run", str(_study_file(tmp_path)), "--storage", str(storage), "--num-cpus", "1"],
                   cwd=tmp_path, log=tmp_path / "first.log", prefix=prefix)
    try:
        assert first.wait_for(lambda: _first_trial_done(first), timeout=TIMEOUT), first.output()[-3000:]
        subprocess.run(["chmod", "-R", "a-w", str(storage)], check=True)
        rc = first.finish(timeout=TIMEOUT)
    finally:
        first.cleanup()
        subprocess.run(["chmod", "-R", "u+w", str(storage)], check=True)
    first_out = _stopped_cleanly(first, rc)
    resumed = Driver(["resume", str(storage), "--num-cpus", "1"], cwd=tmp_path, log=tmp_path / "resume.log",
                     prefix=prefix)
    assert resumed.finish(timeout=TIMEOUT) == 0, resumed.output()[-3000:]
    _check_nothing_lost(storage, resumed, first_out)


def _finished_study(tmp_path: Path) -> Path:
    storage = tmp_path / "study"
    small = {**STUDY, "trials": 2, "training": {"iterations": 100, "eval_every": 50}}
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(small))
    done = subprocess.run([sys.executable, "-m", "metatune", "run", str(path), "--storage", str(storage),
                           "--num-cpus", "1", "--no-mlflow"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return storage


def _cut_short(storage: Path) -> Path:
    state = max((storage / "tune").glob("experiment_state-*.json"))
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    return state


def test_a_cut_short_snapshot_is_restored_from_its_good_copy_or_refused(tmp_path):
    """With the good copy: `resume` puts it back, says so, and finds both trials finished.
    Without it: one line, exit 2, and the folder is left exactly as it was (Tune would have
    started a new experiment and forgotten both trials)."""
    storage = _finished_study(tmp_path)
    assert any((storage / ".tune_snapshot").glob("copy-*/COMPLETE"))
    _cut_short(storage)
    resumed = subprocess.run([sys.executable, "-m", "metatune", "resume", str(storage), "--num-cpus", "1",
                              "--no-mlflow"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "restored the last good copy" in resumed.stdout
    assert "2/2 done" in resumed.stdout and "Traceback" not in resumed.stdout + resumed.stderr

    _cut_short(storage)
    shutil.rmtree(storage / ".tune_snapshot")
    before = {p: p.stat().st_mtime_ns for p in storage.rglob("*") if p.is_file() and p.name != ".driver.lock"}
    refused = subprocess.run([sys.executable, "-m", "metatune", "resume", str(storage), "--num-cpus", "1",
                              "--no-mlflow"], cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    err = refused.stderr.strip()
    assert refused.returncode == 2, (refused.returncode, refused.stdout[-2000:], err[-2000:])
    assert err.count("\n") == 0 and "damaged" in err and "nothing was changed" in err, err
    after = {p: p.stat().st_mtime_ns for p in storage.rglob("*") if p.is_file() and p.name != ".driver.lock"}
    assert after == before
