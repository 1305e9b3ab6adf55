"""The last good copy of Tune's experiment snapshot, and putting it back.

Tune rewrites its experiment snapshot (``experiment_state-*.json``, the searcher's
``searcher-state-*.pkl``, ``search_gen_state-*.json``, ``tuner.pkl``) in place every second. On a
full disk that rewrite is cut short, and Tune's restore then fails to read the file, logs
"Failed to restore the run state" and *starts a new experiment*, forgetting every trial. So:

- while a study runs, each snapshot that reads back whole is copied to ``<study>/.tune_snapshot/``
  (a new folder per copy, renamed into place once complete; the older copy is removed after);
- before ``resume`` (and ``report``) hands the folder to Tune, a snapshot that does not read back
  whole, or is missing while a copy exists, is moved aside and the copy put in its place;
- if Tune's restore fails anyway, the driver stops with one line instead of starting afresh.

Local storage only: remote storage is written by Tune's uploader, not in place.
"""

from __future__ import annotations

import json
import logging
import os
import pickletools
import shutil
import time
from pathlib import Path

from metatune.atomic_files import write_atomic
from metatune.errors import ConfigError
from metatune.study.resolved import Study

__all__ = ["GOOD_COPY_DIR", "SnapshotCopier", "damage", "repair_snapshot", "state_files"]

log = logging.getLogger(__name__)

#: In the study folder: the last snapshot that read back whole.
GOOD_COPY_DIR = ".tune_snapshot"
#: Tune's file of trial states (one per driver run); a snapshot without one restores nothing.
_STATE_PREFIX = "experiment_state-"
#: Written last into a copy: a copy without it was cut short.
_COMPLETE = "COMPLETE"


def _local(study: Study) -> bool:
    return "://" not in str(study.tune_path)


def state_files(experiment: Path) -> list[Path]:
    """The files Tune restores an experiment from: the ``.json``/``.pkl`` files at its top level
    (what Tune's own ``sync_down_experiment_state`` reads)."""
    if not experiment.is_dir():
        return []
    return sorted(p for p in experiment.iterdir() if p.is_file() and p.suffix in (".json", ".pkl"))


def _unreadable(path: Path) -> str | None:
    """Why ``path`` does not read back whole (empty, cut short, not JSON/pickle), or None."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if not data:
        return "empty"
    # By content, not by name: Tune's search_gen_state-*.json is a pickle (protocol >= 2 starts
    # with 0x80, which no JSON text does).
    if data[:1] != b"\x80":
        try:
            json.loads(data)
        except ValueError as exc:
            return f"not whole JSON ({exc})"
        return None
    # A pickle is whole when its opcodes run to STOP. genops walks them without building any
    # object (no imports, nothing executed), so this is cheap and safe on any file.
    try:
        for opcode, _, pos in pickletools.genops(data):
            if opcode.name == "STOP":
                return None if pos == len(data) - 1 else "data after the end of the pickle"
    except ValueError as exc:
        return f"cut short ({exc})"
    return "cut short (no end)"


def damage(experiment: Path) -> str | None:
    """The first state file of ``experiment`` that does not read back whole, as ``name: why``."""
    for path in state_files(experiment):
        why = _unreadable(path)
        if why is not None:
            return f"{path.name}: {why}"
    return None


def _has_state(files: list[Path]) -> bool:
    """Whether ``files`` hold a snapshot Tune can restore from (tuner.pkl alone is not one)."""
    return any(p.name.startswith(_STATE_PREFIX) for p in files)


def _copies(study: Study) -> list[Path]:
    root = study.dir / GOOD_COPY_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("copy-*") if (p / _COMPLETE).is_file())


class SnapshotCopier:
    """Keeps ``<study>/.tune_snapshot/`` at the newest snapshot that reads back whole; called from
    the driver's loop, it looks at most once per ``period_s`` and copies only what changed."""

    def __init__(self, study: Study, *, period_s: float = 1.0) -> None:
        self.study = study
        self.period_s = period_s
        self._last_look = 0.0
        self._last_seen: tuple[tuple[str, int, int], ...] = ()

    def maybe_copy(self, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not _local(self.study) or (not force and now - self._last_look < self.period_s):
            return False
        self._last_look = now
        experiment = Path(self.study.tune_path)
        files = state_files(experiment)
        try:
            seen = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        except OSError:
            return False  # Tune is replacing a file right now: look again next time
        if not _has_state(files) or seen == self._last_seen or damage(experiment) is not None:
            return False  # no snapshot yet, nothing new, or one being written or cut short
        try:
            self._copy(files)
        except OSError as exc:  # a full disk: the previous copy stays, whole
            log.debug("no copy of Tune's snapshot this time: %s", exc)
            return False
        self._last_seen = seen
        return True

    def _copy(self, files: list[Path]) -> None:
        root = self.study.dir / GOOD_COPY_DIR
        new = root / f"copy-{time.time_ns():020d}"
        try:
            new.mkdir(parents=True)
            for path in files:
                shutil.copyfile(path, new / path.name)
            if damage(new) is not None:  # Tune rewrote a file while we copied it
                raise OSError("a state file changed while it was copied")
            write_atomic(new / _COMPLETE, "")
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)
            raise
        for old in root.glob("copy-*"):
            if old != new:
                shutil.rmtree(old, ignore_errors=True)


def repair_snapshot(study: Study) -> str | None:
    """Put the last good copy back if Tune's snapshot is cut short, unreadable or missing. Call
    with the study's driver lock held (or no driver running). Returns what it did, for the user,
    or None when the snapshot was fine. Raises ConfigError (one line, everything kept) when the
    snapshot is damaged and there is no good copy."""
    if not _local(study):
        return None
    experiment = Path(study.tune_path)
    problem = damage(experiment)
    copies = _copies(study)
    if problem is None and (state_files(experiment) or not copies):
        return None
    if not copies:
        raise ConfigError(
            "<study>",
            f"Tune's experiment snapshot in {experiment} is damaged ({problem}) and no good copy "
            f"exists in {study.dir / GOOD_COPY_DIR}; nothing was changed",
            source=str(study.dir),
        )
    good = copies[-1]
    aside = study.dir / GOOD_COPY_DIR / f"damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    aside.mkdir(parents=True)
    for path in state_files(experiment):
        os.replace(path, aside / path.name)  # a rename: needs no space on a disk that is still full
    experiment.mkdir(parents=True, exist_ok=True)
    for path in state_files(good):
        with open(path, "rb") as src:
            write_atomic(experiment / path.name, src.read())
    stamp = time.strftime("%H:%M:%S", time.localtime(int(good.name.split("-")[1]) / 1e9))
    what = problem or "missing"
    return (
        f"Tune's experiment snapshot was damaged ({what}); restored the last good copy, "
        f"taken at {stamp} (the damaged files are in {aside})"
    )
