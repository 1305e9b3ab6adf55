"""The trial plan the workers receive, the parameter-name rule, and the study package's shape:
no import-time environment changes, no module over 400 lines, one owner of status.json."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from metatune.config import parse_config
from metatune.study.param_names import branch_name, knob_for, split_trial_name
from metatune.study.spec import parse_study

ROOT = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path):
    return parse_study(
        {
            "name": "plan",
            "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
            "learners": {"maml": {}, "metasgd": {}},
            "search_space": {
                "params": {"outer_lr": {}},
                "per_learner": {"metasgd": {"inner_lr": {"low": 0.01, "high": 0.1}}},
            },
            "trials": 2,
            "training": {"iterations": 20, "eval_every": 10},
            "evaluation": {"tasks": 10},
        },
        source=str(tmp_path / "plan.yaml"),
        storage=str(tmp_path / "study"),
    )


def test_param_names_rule():
    assert branch_name("mtnet", "inner_lr") == "mtnet.inner_lr"
    assert split_trial_name("mtnet.inner_lr", "mtnet") == "inner_lr"
    assert knob_for("mtnet.inner_lr", "mtnet") == "inner_lr"
    assert knob_for("mtnet.inner_lr", "maml") is None  # another learner's branch
    assert knob_for("outer_lr", "maml") == "outer_lr"
    assert knob_for("learner", "maml") is None


def test_plan_is_picklable_frozen_and_needs_no_study_file(tmp_path):
    study = _study(tmp_path)
    plan = pickle.loads(pickle.dumps(study.plan))
    assert plan == study.plan
    with pytest.raises(AttributeError):
        plan.metric = "val_accuracy"  # type: ignore[misc]
    trial = {"learner": "metasgd", "outer_lr": 0.002, "metasgd.inner_lr": 0.05}
    cfg = plan.run_config_for(trial)
    assert cfg["training"]["outer_lr"] == 0.002 and cfg["learner"]["inner_lr"] == 0.05
    assert cfg == study.run_config_for(trial)
    # The maml trial ignores the metasgd branch; each call gets a fresh mapping.
    maml = plan.run_config_for({"learner": "maml", "outer_lr": 0.003, "metasgd.inner_lr": 0.05})
    assert "inner_lr" not in maml["learner"]
    maml["training"]["outer_lr"] = 1.0
    assert plan.base("maml")["training"]["outer_lr"] != 1.0
    parse_config(cfg)
    assert (plan.metric, plan.mode, plan.penalty) == ("val_loss", "min", 1e6)
    assert plan.workdir == study.cwd
    # A worker never opens the study (or its frozen copy): the plan carries all it needs.
    assert not (study.dir / "study.yaml").exists()


def test_adapters_import_without_changing_the_environment():
    """Tune's and MLflow's settings are applied when Ray or a client starts, not on import."""
    code = (
        "import os, json, ray, optuna, mlflow, pyarrow.fs\n"
        "from ray import tune\n"
        "before = dict(os.environ)\n"
        "import metatune.study._ray, metatune.study._mlflow, metatune.study.cli\n"
        "after = dict(os.environ)\n"
        "print(json.dumps({k: after.get(k) for k in set(before) ^ set(after) | "
        "{k for k in before if before[k] != after.get(k)}}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_study_modules_stay_small_and_status_file_has_one_owner():
    study_dir = ROOT / "metatune" / "study"
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in study_dir.rglob("*.py")}
    assert {k: n for k, n in sizes.items() if n > 400} == {}
    writers = [
        p.relative_to(ROOT).as_posix()
        for p in study_dir.rglob("*.py")
        if '"status.json"' in p.read_text() or "STATUS_FILE" in p.read_text()
    ]
    assert writers == ["metatune/study/status_file.py"]
    # Only the Ray adapter imports Ray.
    for p in study_dir.rglob("*.py"):
        if "_ray" in p.parts:
            continue
        text = p.read_text()
        assert "import ray" not in text and "from ray" not in text, p
