from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Keep the suite predictable on 2 cores.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True, scope="session")
def _array_cache(tmp_path_factory):
    """Decoded data sets (metatune/tasks/_array_cache.py) go to a folder of this test run, not to
    ~/.cache/metatune/arrays (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METATUNE_DATA_CACHE", str(tmp_path_factory.mktemp("array_cache")))
        yield


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def tiny_study(tmp_path: Path):
    """A factory: a 2-trial MAML sine study named NAME with storage in tmp_path/study, parsed
    but not run (for tests that feed records to the views themselves)."""
    from metatune.study.spec import Study, parse_study

    def make(name: str) -> Study:
        return parse_study(
            {
                "name": name,
                "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
                "learners": ["maml"],
                "search_space": {"params": {"inner_lr": {}}},
                "trials": 2,
                "training": {"iterations": 20, "eval_every": 10},
                "evaluation": {"tasks": 10},
            },
            source=str(tmp_path / f"{name}.yaml"),
            storage=str(tmp_path / "study"),
        )

    return make
