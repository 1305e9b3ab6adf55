"""Ray processes a killed driver leaves behind, stopped at the next start.

A local Ray instance's head processes (GCS, raylet, dashboard, monitors, and the raylet's
dashboard and runtime-env agents) outlive a SIGKILLed driver by 60-90 s, holding ports, memory
and the CPUs the next driver of the same study wants. The driver notes them in the study folder
right after Ray starts; the next driver of that study (under the study's lock, so the first one
is gone) stops whatever of them still runs. A clean exit stops them through ``ray.shutdown()``
and removes the note.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import psutil

from metatune.atomic_files import write_atomic

__all__ = ["forget_ray_processes", "note_ray_processes", "stop_leftover_ray_processes"]

log = logging.getLogger(__name__)

#: In the study folder: the Ray processes this study's running driver started.
NOTE_FILE = ".ray_processes.json"


def note_ray_processes(study_dir: Path) -> None:
    """Record this driver's descendant processes (Ray's, started by ``ray.init``)."""
    me = psutil.Process()
    procs = []
    for child in me.children(recursive=True):
        try:
            procs.append({"pid": child.pid, "create_time": child.create_time(), "name": child.name()})
        except psutil.Error:
            continue
    note = {"host": socket.gethostname(), "driver_pid": me.pid, "processes": procs}
    try:
        write_atomic(study_dir / NOTE_FILE, json.dumps(note))
    except OSError as exc:  # only a clean-up aid: never worth stopping the study for
        log.debug("could not note Ray's processes: %s", exc)


def forget_ray_processes(study_dir: Path) -> None:
    try:
        os.unlink(study_dir / NOTE_FILE)
    except OSError:
        pass


def stop_leftover_ray_processes(study_dir: Path, *, grace_s: float = 5.0) -> int:
    """Stop the processes an earlier driver of this study noted and that still run (same pid
    and start time, so never a process that reused the pid); returns how many."""
    path = study_dir / NOTE_FILE
    try:
        note = json.loads(path.read_text())
        # The caller holds the study's driver lock, so the driver that wrote the note is gone.
        if note.get("host") != socket.gethostname():
            return 0
        entries = list(note.get("processes", []))
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    left = []
    for entry in entries:
        try:
            proc = psutil.Process(int(entry["pid"]))
            # A zombie is already dead (only not reaped: its parent, the raylet, is gone).
            same = abs(proc.create_time() - float(entry["create_time"])) < 1e-3
            if same and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    for proc in left:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(left, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    forget_ray_processes(study_dir)
    return len(left)

