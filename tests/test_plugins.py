"""A third-party plugin, as a researcher would write it from the README: a throw-away package
in a temporary folder with a learner (``anil``) and a task (``line``) registered through the
``metatune.learners`` / ``metatune.tasks`` entry points. It is made discoverable without pip
(``<tmp>/anil_plugin-0.1.dist-info`` beside the package, ``<tmp>`` on PYTHONPATH) and used by
real subprocesses: ``metatune train``, a two-trial study on a private local Ray (whose workers
inherit the driver's environment) and the plugin's own pytest run of metatune.testing's
contract. The plugin's files are the README's code blocks, so the README is what is tested;
the same files dropped into a copy of metatune's own learners/ and tasks/ folders register too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from readme_blocks import file_block

import metatune

ENTRY_POINTS = """\
[metatune.learners]
anil = anil_plugin.anil:ANIL

[metatune.tasks]
line = anil_plugin.line
"""

# The package records every process that imports it, to show the Ray workers loaded it too.
INIT = """\
import os
import sys

if os.environ.get("ANIL_PLUGIN_LOG"):
    with open(os.environ["ANIL_PLUGIN_LOG"], "a") as log:
        log.write(f"{os.getpid()} {sys.argv[0] if sys.argv else ''}\\n")
"""


def write_dist(root: Path, name: str, entry_points: str) -> None:
    dist = root / f"{name}-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(entry_points)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "anil_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(INIT)
    (pkg / "anil.py").write_text(file_block("anil.py"))
    (pkg / "line.py").write_text(file_block("line.py"))
    write_dist(root, "anil_plugin", ENTRY_POINTS)
    (root / "plugin_tests").mkdir()
    (root / "plugin_tests" / "test_anil.py").write_text(file_block("test_anil.py"))
    return root


def run(args: list[str], *, plugin_root: Path, cwd: Path, log: Path | None = None,
        timeout: float) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(plugin_root), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    if log is not None:
        env["ANIL_PLUGIN_LOG"] = str(log)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_entry_points_register_lazily_and_are_not_shipped(plugin, tmp_path):
    probe = """
import json, sys
from metatune.learners import LEARNERS, is_shipped
from metatune.tasks import TASKS
before = "anil" in LEARNERS.registered() or "anil_plugin" in sys.modules
LEARNERS.get("maml")  # a shipped name imports no plugin
after_shipped = "anil_plugin" in sys.modules
print(json.dumps({"before": before, "after_shipped": after_shipped, "learners": LEARNERS.names(),
                  "tasks": TASKS.names(), "anil_shipped": is_shipped(LEARNERS.get("anil")),
                  "maml_shipped": is_shipped(LEARNERS.get("maml"))}))
"""
    out = run(["-c", probe], plugin_root=plugin, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert not seen["before"] and not seen["after_shipped"]
    assert "anil" in seen["learners"] and "maml" in seen["learners"] and "line" in seen["tasks"]
    assert seen["anil_shipped"] is False and seen["maml_shipped"] is True


def test_one_file_in_the_package_folders_registers_itself(tmp_path):
    """The README's files dropped into a copy of metatune's own learners/ and tasks/ folders
    register with no other edit (no circular import), and count as metatune's own learners."""
    copy = tmp_path / "copy"
    shutil.copytree(Path(metatune.__file__).parent, copy / "metatune", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "metatune" / "learners" / "anil.py").write_text(file_block("anil.py"))
    (copy / "metatune" / "tasks" / "line.py").write_text(file_block("line.py"))
    probe = """
import json, metatune
from metatune.learners import LEARNERS, is_shipped
from metatune.tasks import TASKS
print(json.dumps({"file": metatune.__file__, "learners": sorted(LEARNERS.registered()),
                  "tasks": sorted(TASKS.registered()), "anil_shipped": is_shipped(LEARNERS.get("anil"))}))
"""
    out = run(["-c", probe], plugin_root=copy, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["file"] == str(copy / "metatune" / "__init__.py")
    assert "anil" in seen["learners"] and "line" in seen["tasks"] and seen["anil_shipped"] is True
    # the shipped registrations are unchanged
    from metatune.learners import LEARNERS
    from metatune.tasks import TASKS

    assert sorted(set(seen["learners"]) - {"anil"}) == sorted(LEARNERS.registered())
    assert sorted(set(seen["tasks"]) - {"line"}) == sorted(TASKS.registered())


def train_config(tmp_path: Path) -> Path:
    config = tmp_path / "anil_line.yaml"
    config.write_text(yaml.safe_dump({
        "seed": 0, "task": {"name": "line", "shots": 5}, "model": {"name": "mlp", "hidden": [8, 8]},
        "learner": {"name": "anil", "inner_lr": 0.1, "inner_steps": 2},
        "training": {
            "iterations": 20, "meta_batch": 2, "eval_every": 10, "val_tasks": 5, "checkpoint_every": 10,
        },
        "evaluation": {"tasks": 10, "shots": [5], "lr_scales": [1.0]}, "compile": False,
    }))
    return config


def test_metatune_train_uses_the_plugin(plugin, tmp_path):
    out = run(["-m", "metatune", "train", str(train_config(tmp_path)), "--output", str(tmp_path / "out"),
               "--no-progress"], plugin_root=plugin, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "training anil on line" in out.stdout
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["status"] == "completed" and result["iterations"] == 20
    assert result["config"]["learner"]["name"] == "anil" and result["config"]["task"]["name"] == "line"


def test_a_broken_plugin_is_one_line_naming_its_entry_point(plugin, tmp_path):
    broken = tmp_path / "broken"
    write_dist(broken, "broken_plugin", "[metatune.learners]\nreptile = no_such_module.reptile:Reptile\n")
    path = f"{broken}{os.pathsep}{plugin}"
    out = run(["-m", "metatune", "train", str(train_config(tmp_path))], plugin_root=Path(path), cwd=tmp_path,
              timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "field 'learner.name'" in lines[0]
    assert "entry point 'reptile = no_such_module.reptile:Reptile' (group metatune.learners)" in lines[0]
    assert "ModuleNotFoundError" in lines[0]


def test_a_study_uses_the_plugin_in_its_ray_workers(plugin, tmp_path):
    study = tmp_path / "plugin_study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "plugin_study", "seed": 0, "task": {"name": "line", "shots": 5},
        "model": {"name": "mlp", "hidden": [8, 8]}, "learners": ["anil"],
        "search_space": {"params": {"inner_lr": {"low": 0.01, "high": 0.5, "log": True}}},
        "trials": 2, "max_concurrent_trials": 2, "resources": {"cpus": 1}, "run": {"compile": False},
        "training": {"iterations": 10, "meta_batch": 2, "eval_every": 5, "log_every": 5, "val_tasks": 5,
                     "checkpoint_every": 5},
        "evaluation": {"tasks": 10, "shots": [5], "inner_steps": 1, "lr_scales": [1.0]},
        "storage": str(tmp_path / "out"),
    }))
    log = tmp_path / "imports.log"
    args = ["-m", "metatune", "run", str(study), "--num-cpus", "2", "--no-mlflow", "--progress-every", "30"]
    out = run(args, plugin_root=plugin, cwd=tmp_path, log=log, timeout=420)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    rows = pq.read_table(tmp_path / "out" / "trials.parquet").to_pylist()
    assert len(rows) == 2
    assert {r["learner"] for r in rows} == {"anil"} and {r["status"] for r in rows} == {"completed"}
    assert all(r["test_loss"] is not None for r in rows)
    # Each line: the pid and sys.argv[0] of a process that imported the plugin.
    importers = [line.split(" ", 1) for line in log.read_text().splitlines()]
    driver = {pid for pid, argv0 in importers if argv0.endswith("__main__.py")}
    workers = {pid for pid, argv0 in importers if not argv0.endswith("__main__.py")}
    assert driver and workers, f"the driver and a Ray worker should both import the plugin:\n{log.read_text()}"


def test_the_plugins_own_tests_run_the_contract(plugin):
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "plugin_tests"]
    out = run(args, plugin_root=plugin, cwd=plugin, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "9 passed" in out.stdout, out.stdout[-2000:]
