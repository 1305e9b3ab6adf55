"""Helpers for tests that start real servers and subprocesses on loopback (an `mlflow server`,
a study driver): free ports, a child environment, health polling, and stopping exactly what a
test started, by process group and process id (never by name).

Imported as ``servers`` (tests/conftest.py puts this folder on sys.path).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: this checkout importable, one thread per op, no Ray
    usage stats or token auth."""
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


# ---------------------------------------------------------------------- processes
def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), read from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d)] = (ppid, cmd)
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (not ``pid`` itself)."""
    procs = processes()
    found: set[int] = set()
    grew = True
    while grew:
        grew = False
        for p, (ppid, _) in procs.items():
            if (ppid == pid or ppid in found) and p not in found:
                found.add(p)
                grew = True
    return found


def kill_pids(pids: Iterable[int], *, grace_s: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace_s`` for them to go, then SIGKILL what is left."""
    pids = set(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace_s
        while (
            sig == signal.SIGTERM
            and time.monotonic() < deadline
            and any(Path(f"/proc/{p}").exists() for p in pids)
        ):
            time.sleep(0.2)


def stop_group(proc: subprocess.Popen, *, grace_s: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` and everything in its process
    group (SIGTERM, then SIGKILL), plus any descendant that left the group. Does nothing
    once the process has exited and been waited for: its id may belong to someone else by now."""
    if proc.poll() is not None:
        return
    below = descendants(proc.pid)
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # helpers of the group may outlive the leader for a moment
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    left = {p for p in below if Path(f"/proc/{p}").exists()}
    if left:
        kill_pids(left, grace_s=5.0)


# ---------------------------------------------------------------------- mlflow server
def mlflow_server_command(backend_uri: str, artifacts: Path, port: int) -> list[str]:
    """Like ``metatune ui`` starts it (metatune/study/ui.py ui_command + cmd_ui)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def start_mlflow_server(
    backend_uri: str, artifacts: Path, port: int, log: IO[str], *, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """An ``mlflow server`` in its own session (stop it with :func:`stop_group`)."""
    return subprocess.Popen(
        mlflow_server_command(backend_uri, artifacts, port),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**(env or child_env()), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )


def wait_healthy(url: str, proc: subprocess.Popen, *, timeout_s: float = 90.0) -> bool:
    """Poll ``url``/health until it answers 200 (start-up takes 10-15 s on a quiet 2-core
    machine); False when the server exited or the time ran out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def is_down(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2):
            return False
    except OSError:
        return True
