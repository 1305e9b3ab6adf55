"""The MLflow UI of a study, seen by headless Chromium: `metatune ui` opens on the runs view of
the study's trials with the objective column (read from the page's DOM), and the parent run
shows the study's table and plot (benchmarks/ui_screenshot.sh screenshots). Skipped cleanly
where Debian's chromium is not installed (apt-get install -y chromium)."""

from __future__ import annotations

import html
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from servers import child_env, stop_group, wait_healthy
from test_study_views import _record

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _logged_study(tmp_path):
    """A study of four trials (one diverged) rebuilt into its MLflow store."""
    from metatune.study._mlflow import Tracker
    from metatune.study.report import rebuild
    from metatune.study.spec import parse_study

    study = parse_study(
        {
            "name": "ui",
            "task": {"name": "sine", "shots": 10},
            "learners": ["maml", "tnet", "mtnet"],
            "search_space": {"params": {"inner_lr": {"grid": [0.01, 10.0]}}},
            "sampler": {"name": "grid"},
            "training": {"iterations": 20, "eval_every": 10},
            "evaluation": {"tasks": 10},
            "table": {"rows": "inner_lr", "published": "mtnet_table_6_2"},
            "storage": str(tmp_path / "ui"),
        },
        source="ui.yaml",
        cwd=tmp_path,
    )
    study.write_frozen()
    records = [
        _record("a1", "maml", 0.01, loss=0.7),
        _record("a2", "maml", 10.0, status="diverged"),
        _record("b1", "mtnet", 0.01, loss=0.5),
        _record("b2", "mtnet", 10.0, loss=4.2),
    ]
    tracker = Tracker(
        study.tracking_uri, study.experiment, study=study.name, artifact_location=study.artifact_location
    )
    views, _ = rebuild(study, records, tracker=tracker)
    assert views.mlflow_errors == 0, views.last_error
    return study, records


def _chromium(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """One headless Chromium run with a throwaway profile; the SPA gets 20 s of virtual time
    to fetch the runs and render them."""
    with tempfile.TemporaryDirectory(prefix="metatune-chromium-") as profile:
        return subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1600,1000", "--virtual-time-budget=20000", *args,
            ],
            capture_output=True, text=True, timeout=timeout,
        )


def test_metatune_ui_opens_on_the_trials_with_the_objective_column(tmp_path):
    study, records = _logged_study(tmp_path)
    port = _free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metatune.cli", "ui", str(study.dir), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=child_env(),
        )
    try:
        assert wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s=120), log.read_text()
        deadline = time.monotonic() + 30
        while not (found := re.search(r"MLflow UI for study 'ui': (\S+)", log.read_text())):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        url = found.group(1)
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "workflowType=machine_learning" in url
        shot = tmp_path / "runs_view.png"
        _chromium(f"--screenshot={shot}", url)
        assert shot.is_file() and shot.stat().st_size > 30_000
        dom = _chromium("--dump-dom", url).stdout
    finally:
        stop_group(proc)
    (tmp_path / "runs_view.html").write_text(dom)
    # The model-training runs table, not the GenAI overview: ag-grid column headers by key.
    headers = {
        key: int(col) for col, key in re.findall(r'role="columnheader"[^>]*aria-colindex="(\d+)" col-id="([^"]+)"', dom)
    }
    assert "metrics.`main/val_loss`" in headers, headers  # the objective column, first of the metrics
    assert headers["metrics.`main/val_loss`"] < headers["metrics.`main/test_loss`"], headers
    assert "tags.`metatune.status`" in headers
    text = html.unescape(re.sub(r"<[^>]+>", " ", dom))
    assert "main/val_loss" in text
    # Every trial is a row of its own (not collapsed under the parent run), the parent is not.
    rows = re.findall(r'href="#/experiments/\d+/runs/[0-9a-f]+"><span[^>]*>([^<]+)</span>', dom)
    assert sorted(rows) == sorted(r.name for r in records), rows
    assert "diverged" in text  # the diverged trial's status column


@pytest.mark.skipif(shutil.which("curl") is None, reason="ui_screenshot.sh needs curl (apt-get install -y curl)")
def test_parent_run_shows_table_and_plot(tmp_path):
    study, _ = _logged_study(tmp_path)
    out = tmp_path / "shots"
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "ui_screenshot.sh"), str(study.dir), str(out), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=600,  # five headless-Chromium page loads; slow on a loaded 2-core machine
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PYTHON": sys.executable,
            "HOME": str(tmp_path),
        },
    )
    assert run.returncode == 0, run.stdout + run.stderr
    import matplotlib.image as mpimg

    for name in ("runs_view", "runs_charts", "parent_run", "study_table", "study_plot"):
        png = out / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 30_000, name
        pixels = mpimg.imread(png)
        assert pixels.std() > 0.05, f"{name} looks blank"
