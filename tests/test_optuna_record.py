"""Optuna's record of a study lives in an RDB storage in the study folder (`optuna.db`), readable
by Optuna itself and by optuna-dashboard (`metatune dashboard`), keyed by training iteration;
a copied study folder resumes on its own copy. Real driver, real local Ray, a real dashboard
server on loopback (and headless Chromium, where installed, to see the page render)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import yaml

from tests.study_process import Driver

STUDY = {
    "name": "record",
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
    "learners": ["maml"],
    "search_space": {"params": {"inner_lr": {}}},
    "trials": 2,
    "max_concurrent_trials": 1,
    "training": {"iterations": 1500, "eval_every": 500},
    "evaluation": {"tasks": 10},
    "run": {"compile": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metatune(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metatune", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _record(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY["name"], storage=f"sqlite:///{folder / 'optuna.db'}")


def test_the_optuna_record_is_an_rdb_storage_in_the_study_folder(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    a, b = tmp_path / "A", tmp_path / "B"
    first = Driver(["run", str(path), "--storage", str(a), "--num-cpus", "1", "--no-mlflow"], cwd=tmp_path,
                   log=tmp_path / "first.log")
    try:
        assert first.wait_for(lambda: "  done " in first.output(), timeout=300), first.output()[-2000:]
        assert first.interrupt(signal.SIGINT) == 130, first.output()[-2000:]
    finally:
        first.cleanup()
    states = sorted(t.state.name for t in _record(a).trials)
    assert states in (["COMPLETE"], ["COMPLETE", "RUNNING"]), states

    shutil.copytree(a, b)  # the copy resumes on its own record; A's stays as it was
    before = (a / "optuna.db").read_bytes()
    resumed = _metatune("resume", str(b), "--num-cpus", "1", "--no-mlflow", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert (a / "optuna.db").read_bytes() == before

    trials = _record(b).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"], [(t.number, t.state.name) for t in trials]
    for t in trials:
        # Intermediate values by training iteration, not Tune's report index (1, 2, 3).
        assert set(t.intermediate_values) == {500, 1000, 1500}, t.intermediate_values
        assert t.user_attrs["metatune.outcome"] == "completed" and "metatune.trial_id" in t.user_attrs
    # Tune's pickled searcher state no longer carries the record, nor where it is.
    for state in (b / "tune").glob("searcher-state-*.pkl"):
        assert b"optuna.db" not in state.read_bytes() and b"RDBStorage" not in state.read_bytes()

    port = _free_port()
    dash = Driver(["dashboard", str(b), "--port", str(port)], cwd=tmp_path, log=tmp_path / "dashboard.log")
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())["study_summaries"]
                    break
            except OSError:
                if time.monotonic() > deadline or dash.proc.poll() is not None:
                    raise AssertionError(dash.output()[-2000:]) from None
                time.sleep(0.5)
        assert [s["study_name"] for s in studies] == ["record"]
        assert f"{url}/dashboard " in dash.output()
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium:  # the page itself renders the study (a React app: JS must run)
            dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                  "--virtual-time-budget=15000", "--dump-dom", f"{url}/dashboard"],
                                 capture_output=True, text=True, timeout=120)
            assert "record" in dom.stdout, dom.stdout[-2000:]
    finally:
        dash.cleanup()


def test_a_study_warm_starts_from_another_and_keeps_its_record_where_the_file_says(tmp_path):
    short = {**STUDY, "max_concurrent_trials": None, "training": {"iterations": 40, "eval_every": 20}}
    a_file, b_file = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a_file.write_text(yaml.safe_dump(short))
    a = tmp_path / "A"
    done = _metatune("run", str(a_file), "--storage", str(a), "--num-cpus", "1", "--no-mlflow", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    shared = tmp_path / "db" / "shared.db"
    shared.parent.mkdir()
    b_study = {**short, "name": "seeded", "trials": 1,
               "optuna": {"storage": f"sqlite:///{shared}", "warm_start": "A"}}
    b_file.write_text(yaml.safe_dump(b_study))
    b = tmp_path / "B"
    seeded = _metatune("run", str(b_file), "--storage", str(b), "--num-cpus", "1", "--no-mlflow", cwd=tmp_path)
    assert seeded.returncode == 0, seeded.stdout[-2000:] + seeded.stderr[-2000:]
    assert "warm start: 2 finished trial(s) of study 'record'" in seeded.stdout
    assert not (b / "optuna.db").exists()
    record = optuna.load_study(study_name="seeded", storage=f"sqlite:///{shared}")
    copied = [t for t in record.trials if t.user_attrs.get("metatune.warm_start_from") == "record"]
    own = [t for t in record.trials if "metatune.warm_start_from" not in t.user_attrs]
    assert len(copied) == 2 and len(own) == 1 and own[0].state.name == "COMPLETE"
    assert sorted(t.value for t in copied) == sorted(t.value for t in _record(a).trials)

    # Another folder with the same study name on the shared database would join B's record.
    b_file.write_text(yaml.safe_dump(b_study))
    clash = _metatune("run", str(b_file), "--storage", str(tmp_path / "C"), cwd=tmp_path, timeout=60)
    assert clash.returncode == 2 and "field 'optuna.storage'" in clash.stderr, clash.stderr[-1000:]
    assert "already exists" in clash.stderr and clash.stderr.strip().count("\n") == 0
    for study, needle in (
        ({**b_study, "name": "nowhere", "optuna": {"warm_start": "no-such-study"}}, "field 'optuna.warm_start'"),
        ({**b_study, "name": "badurl", "optuna": {"storage": "redis://x"}}, "field 'optuna.storage'"),
    ):
        b_file.write_text(yaml.safe_dump(study))
        bad = _metatune("run", str(b_file), "--storage", str(tmp_path / study["name"]), cwd=tmp_path, timeout=60)
        err = bad.stderr.strip()
        assert bad.returncode == 2 and err.count("\n") == 0 and needle in err, (bad.returncode, err)
        assert not (tmp_path / study["name"]).exists()
