"""The MLflow UI shows a study's table and plot on its parent run: benchmarks/ui_screenshot.sh
starts `metatune ui` on loopback and takes headless-Chromium screenshots. Skipped cleanly
where Debian's chromium is not installed (apt-get install -y chromium)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_study_views import _record

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or shutil.which("curl") is None,
    reason="needs chromium and curl (apt-get install -y chromium curl)",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parent_run_shows_table_and_plot(tmp_path):
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
    assert views.mlflow_errors == 0
    out = tmp_path / "shots"
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "ui_screenshot.sh"), str(study.dir), str(out), str(_free_port())],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PYTHON": sys.executable,
            "HOME": str(tmp_path),
        },
    )
    assert run.returncode == 0, run.stdout + run.stderr
    import matplotlib.image as mpimg

    for name in ("parent_run", "study_table", "study_plot"):
        png = out / f"{name}.png"
        assert png.is_file() and png.stat().st_size > 30_000, name
        pixels = mpimg.imread(png)
        assert pixels.std() > 0.05, f"{name} looks blank"
