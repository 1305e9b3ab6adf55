"""Checks a study driver makes before any cluster work, and the lock that keeps one driver per
study folder. Each failure is a :class:`ConfigError` (one line naming the option or field, exit 2).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from metatune.errors import ConfigError
from metatune.study.driver_lock import LOCK_FILE, OWNER_FILE, hold_study_lock

__all__ = ["LOCK_FILE", "check_resources", "clear_study_folder", "hold_study_lock", "writable_folder"]


def writable_folder(path: Path, option: str) -> None:
    """Create ``path`` (and parents) and prove a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(option, f"expected a folder metatune can write: {path} ({reason})") from None


def clear_study_folder(study_dir: Path) -> None:
    """``--overwrite``: delete everything in the folder but the lock this driver holds (and its note)."""
    for entry in study_dir.iterdir():
        if entry.name in (LOCK_FILE, OWNER_FILE):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_resources(
    *, cpus_per_trial: float, gpus_per_trial: float, num_cpus: int | None, num_gpus: int | None,
    address: str | None,
) -> None:
    """The driver's options and the study's per-trial resources fit the Ray instance it starts.
    On a cluster (``--address``) the nodes decide, so only the options are checked."""
    for option, value in (("--num-cpus", num_cpus), ("--num-gpus", num_gpus)):
        if value is not None and value < (1 if option == "--num-cpus" else 0):
            raise ConfigError(option, f"expected {'a positive' if option == '--num-cpus' else 'a non-negative'} "
                                      f"number, got {value}")
    if address not in (None, "", "local"):
        return
    cpus = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    if cpus_per_trial > cpus:
        raise ConfigError(
            "resources.cpus",
            f"expected at most the {cpus} CPU(s) of the local Ray instance per trial, got {cpus_per_trial:g} "
            "(lower it, raise --num-cpus, or join a cluster with --address)",
        )
    if gpus_per_trial > 0:
        gpus = num_gpus if num_gpus is not None else _local_gpus()
        if gpus_per_trial > gpus:
            raise ConfigError(
                "resources.gpus",
                f"expected at most the {gpus} GPU(s) this machine has per trial, got {gpus_per_trial:g} "
                "(set resources.gpus: 0, or join a cluster with GPUs with --address)",
            )


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
