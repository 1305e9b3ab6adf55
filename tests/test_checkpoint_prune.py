"""The pruning rule: old checkpoints go, but never the one Tune's last snapshot records as a
trial's latest (the one `resume` restores from), nor unregistered newer ones. The first
version kept the newest two on disk and deleted the registered one when a stopped driver had
left newer, unregistered checkpoints: `resume` then failed with "Could not recover from
checkpoint as it does not exist on storage anymore" (found by the interrupted-driver test)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from metatune.study import _ray
from metatune.study._ray import storage as ray_storage


def _trial(tune_dir: Path, name: str, status: str, registered: int | None) -> SimpleNamespace:
    """What prune reads of a Tune Trial restored from the snapshot."""
    ckpt = None if registered is None else SimpleNamespace(path=str(tune_dir / name / f"checkpoint_{registered:06d}"))
    return SimpleNamespace(status=status, checkpoint=ckpt, storage=SimpleNamespace(trial_fs_path=str(tune_dir / name)))


@pytest.fixture
def tune_dir(tmp_path: Path) -> Path:
    d = tmp_path / "tune"
    for name in ("trial-a", "trial-b", "trial-c", "trial-d", "trial-e"):
        for i in range(6):
            (d / name / f"checkpoint_{i:06d}").mkdir(parents=True)
            (d / name / f"checkpoint_{i:06d}" / "checkpoint.pt").write_bytes(b"x")
    return d


def _left(tune_dir: Path, name: str) -> list[int]:
    return sorted(int(p.name.removeprefix("checkpoint_")) for p in (tune_dir / name).glob("checkpoint_*"))


def test_prune_keeps_the_registered_checkpoint_and_newer_ones(tune_dir, monkeypatch):
    study = SimpleNamespace(tune_path=str(tune_dir))
    trials = [
        _trial(tune_dir, "trial-a", "RUNNING", 5),
        _trial(tune_dir, "trial-b", "PENDING", 2),
        _trial(tune_dir, "trial-c", "ERROR", None),
        # Finished by replaying its stored final report: 3-5 were never registered.
        _trial(tune_dir, "trial-d", "TERMINATED", 2),
    ]  # trial-e: a folder the snapshot never saw
    monkeypatch.setattr(ray_storage, "snapshot_trials", lambda s: trials)
    removed = _ray.prune_checkpoints(study, keep=2)
    assert _left(tune_dir, "trial-a") == [4, 5]
    assert _left(tune_dir, "trial-b") == [1, 2, 3, 4, 5]  # 3-5 unregistered: Tune restores 2
    assert _left(tune_dir, "trial-c") == [0, 1, 2, 3, 4, 5]  # starts over, writes over these
    assert _left(tune_dir, "trial-d") == [4, 5]  # never restored: the newest two
    assert _left(tune_dir, "trial-e") == [4, 5]
    assert removed == 4 + 1 + 0 + 4 + 4


def test_prune_does_nothing_on_remote_storage(monkeypatch):
    monkeypatch.setattr(ray_storage, "snapshot_trials", lambda s: pytest.fail("remote storage is not read"))
    assert _ray.prune_checkpoints(SimpleNamespace(tune_path="s3://bucket/study/tune")) == 0


def test_prune_deletes_nothing_when_the_snapshot_is_unreadable(tune_dir, monkeypatch):
    def broken(study: object) -> list:
        raise ValueError("experiment_state-x.json: truncated")

    monkeypatch.setattr(ray_storage, "snapshot_trials", broken)
    assert _ray.prune_checkpoints(SimpleNamespace(tune_path=str(tune_dir))) == 0
    assert all(_left(tune_dir, name) == list(range(6)) for name in ("trial-a", "trial-e"))
