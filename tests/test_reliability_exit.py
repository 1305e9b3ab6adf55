"""How a study driver ends (issue 12, item 8): Ctrl-C exits 130 with one line and none of Tune's
hints; a dead worker is one line naming its error file, not Ray's traceback; Ray processes left by
a SIGKILLed driver are stopped by the next driver of the study; a second driver names the one
holding the study. Real drivers and a real local Ray; each step bounds its own time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

from tests.study_process import Driver, trial_rows

STUDY = {
    "name": "ending",
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": ["maml"],
    "search_space": {"params": {"inner_lr": {}}},
    "trials": 2,
    "max_concurrent_trials": 1,
    "max_failures": 0,
    "training": {"iterations": 3000, "eval_every": 100},
    "evaluation": {"tasks": 10},
    "run": {"compile": False},
}
TIMEOUT = 180


def _study_file(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reported(storage: Path) -> list[dict]:
    return [row for rows in trial_rows(storage).values() for row in rows]


def test_a_killed_driver_s_ray_processes_are_stopped_and_ctrl_c_exits_130(tmp_path):
    storage = tmp_path / "study"
    first = Driver(["run", str(_study_file(tmp_path)), "--storage", str(storage), "--num-cpus", "1",
                    "--no-mlflow"], cwd=tmp_path, log=tmp_path / "first.log")
    try:
        assert first.wait_for(lambda: len(_reported(storage)) > 0, timeout=TIMEOUT), first.output()[-3000:]
        noted = json.loads((storage / ".ray_processes.json").read_text())["processes"]
        assert len(noted) >= 3, noted  # GCS, raylet, agents ...
        os.kill(first.proc.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        first.proc.wait(timeout=30)
        alive = [p for p in noted if _running(p["pid"])]
        assert alive, "Ray's processes did not outlive the driver: nothing to test"

        second = Driver(["resume", str(storage), "--num-cpus", "1", "--no-mlflow"], cwd=tmp_path,
                        log=tmp_path / "second.log")
        try:
            assert second.wait_for(lambda: "Ray process(es) left running" in second.output(), timeout=60), \
                second.output()[-3000:]
            for p in alive:  # stopped (gone, or a zombie nobody reaps), or the pid reused
                try:
                    proc = psutil.Process(p["pid"])
                    assert (proc.status() == psutil.STATUS_ZOMBIE
                            or abs(proc.create_time() - p["create_time"]) > 1e-3), p
                except psutil.NoSuchProcess:
                    pass
            assert "taking the study over from a driver that is gone" in second.output()
            seen = len(_reported(storage))
            assert second.wait_for(lambda: len(_reported(storage)) > seen, timeout=TIMEOUT)
            rc = second.interrupt(signal.SIGINT)
        finally:
            second.cleanup()
    finally:
        first.cleanup()
    out = second.output()
    assert rc == 130, (rc, out[-3000:])
    assert "study interrupted: `metatune resume" in out
    assert "Tuner.restore" not in out and "Traceback" not in out and "Stop signal received" not in out, out


def test_a_dead_worker_is_one_line_naming_its_error_file(tmp_path):
    storage = tmp_path / "study"
    driver = Driver(["run", str(_study_file(tmp_path)), "--storage", str(storage), "--num-cpus", "1",
                     "--no-mlflow"], cwd=tmp_path, log=tmp_path / "run.log")
    try:
        assert driver.wait_for(lambda: len(_reported(storage)) > 0, timeout=TIMEOUT), driver.output()[-3000:]
        os.kill(_reported(storage)[-1]["pid"], signal.SIGKILL)
        rc = driver.finish(timeout=TIMEOUT)
    finally:
        driver.cleanup()
    out = driver.output()
    assert rc == 1, (rc, out[-3000:])
    failed = [line for line in out.splitlines() if line.strip().startswith("FAILED ")]
    assert len(failed) == 1, out[-3000:]
    error_file = failed[0].rsplit("(full error: ", 1)[1].rstrip(")")
    assert Path(error_file).is_file() and "actor died" in Path(error_file).read_text()
    assert "actor died unexpectedly" in failed[0], failed
    assert "Traceback" not in out and "Trial task failed" not in out, out[-4000:]
    assert "1 trial(s) failed" in out


def test_a_refused_second_driver_names_the_first_and_a_gone_one_is_taken_over(tmp_path):
    from metatune.study.driver_lock import OWNER_FILE, hold_study_lock

    storage = tmp_path / "study"
    storage.mkdir()
    lock = hold_study_lock(storage, "ending", command="run")
    try:
        proc = subprocess.run([sys.executable, "-m", "metatune", "run", str(_study_file(tmp_path)),
                               "--storage", str(storage)], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60)
    finally:
        lock.release()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"pid {os.getpid()} on " in proc.stderr and "`metatune run` since" in proc.stderr, proc.stderr
    assert not (storage / OWNER_FILE).exists()  # a clean release removes the note

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    note = {"host": os.uname().nodename, "pid": dead.pid, "started": time.time() - 60, "command": "resume"}
    (storage / OWNER_FILE).write_text(json.dumps(note))
    taken = subprocess.run([sys.executable, "-c", (
        "from pathlib import Path; from metatune.study.driver_lock import hold_study_lock; "
        f"hold_study_lock(Path({str(storage)!r}), 'ending').release()")],
        capture_output=True, text=True, timeout=60)
    assert taken.returncode == 0, taken.stderr
    assert f"taking the study over from a driver that is gone (pid {dead.pid}" in taken.stderr


def test_a_duplicated_key_or_a_folder_as_study_file_is_one_line_before_ray(tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text(yaml.safe_dump(STUDY) + "trials: 5\n")
    for target, needle in ((dup, "key 'trials' appears twice"), (tmp_path, "is a folder, expected a YAML file")):
        proc = subprocess.run([sys.executable, "-m", "metatune", "run", str(target)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and err.count("\n") == 0 and needle in err, (proc.returncode, err)
        assert str(target) in err and "Traceback" not in err and "trials:" not in proc.stdout
