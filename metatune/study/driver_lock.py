"""One driver per study folder: an OS file lock (filelock) held while ``metatune run`` or
``resume`` drives the study, with a note of who holds it.

The lock is ``flock`` on ``.driver.lock``: the kernel releases it when the holder exits, however
it exits, so a crashed driver never leaves a lock that blocks the next one. The note,
``.driver.json`` (host, PID, start time, command), is what a refused driver prints; a note left by
a driver that is gone (it exited without removing it) is taken over with a message.

Across hosts on a shared filesystem the lock is only as good as the filesystem's locking: on
NFSv4 (and NFSv3 with lockd) Linux maps ``flock`` onto POSIX byte-range locks that the server
enforces across clients; on filesystems without network locks (some FUSE mounts, NFS mounted
with ``nolock``) two hosts can both take it. The note's host then tells a second driver on
another host who was first, but cannot stop it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout

from metatune.atomic_files import write_atomic
from metatune.errors import ConfigError

__all__ = ["LOCK_FILE", "OWNER_FILE", "StudyLock", "hold_study_lock"]

log = logging.getLogger(__name__)

#: In the study folder; held while a ``metatune run`` or ``resume`` drives the study.
LOCK_FILE = ".driver.lock"
#: In the study folder while the lock is held: who holds it.
OWNER_FILE = ".driver.json"


class StudyLock:
    """The held lock; ``release()`` removes the note, then lets go."""

    def __init__(self, lock: FileLock, study_dir: Path) -> None:
        self._lock = lock
        self._dir = study_dir

    def release(self) -> None:
        with contextlib.suppress(OSError):
            (self._dir / OWNER_FILE).unlink()
        self._lock.release()


def _owner(study_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((study_dir / OWNER_FILE).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _describe(owner: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
    return f"pid {owner.get('pid')} on {owner.get('host')}, `metatune {owner.get('command', '?')}` since {started}"


def _gone(owner: dict[str, Any]) -> bool:
    """Whether the noted driver no longer runs (only knowable on its own host)."""
    if owner.get("host") != socket.gethostname():
        return False
    try:
        return abs(psutil.Process(int(owner["pid"])).create_time() - float(owner["started"])) > 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return True


def hold_study_lock(study_dir: Path, name: str, *, command: str = "run") -> StudyLock:
    """Take the study's driver lock, or fail at once (one line naming the holder) if another
    driver holds it."""
    lock = FileLock(str(study_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        owner = _owner(study_dir)
        who = _describe(owner) if owner else f"it holds {LOCK_FILE}"
        raise ConfigError(
            "<study>",
            f"study '{name}' is being run by another `metatune run`/`resume` in {study_dir} ({who}); "
            "wait for it to finish or stop it first",
        ) from None
    previous = _owner(study_dir)
    if previous is not None and _gone(previous):
        print(f"  taking the study over from a driver that is gone ({_describe(previous)})", file=sys.stderr)
    me = psutil.Process()
    note = {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time(), "command": command}
    try:
        write_atomic(study_dir / OWNER_FILE, json.dumps(note))
    except OSError as exc:  # the lock itself holds; the note only names the holder
        log.debug("could not write %s: %s", OWNER_FILE, exc)
    return StudyLock(lock, study_dir)
