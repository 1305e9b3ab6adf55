"""A study driver as a real process, for the reliability tests: start `metatune run|resume` in
its own session, watch what the trials report (Tune's result.json per trial), interrupt it
with a signal at a chosen moment, and always clean up the whole process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def trial_rows(study_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result each trial reported so far, in order (a line being written is skipped)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((study_dir / "tune").glob("trial-*/result.json")):
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        out[path.parent.name.removeprefix("trial-")] = rows
    return out


def finals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "outcome" in r]


class Driver:
    """`python -m metatune ARGS` in a new session; output goes to LOG."""

    def __init__(
        self,
        args: list[str],
        *,
        cwd: Path,
        log: Path,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> None:
        self.log = log
        self._fh = open(log, "ab")
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "metatune", *args],
            cwd=cwd,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def wait_for(self, condition: Callable[[], bool], *, timeout: float, poll: float = 0.2) -> bool:
        """True once the condition holds; False if the driver exited first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(poll)
        raise TimeoutError(f"condition not met in {timeout:.0f} s; driver log:\n{self.output()[-3000:]}")

    def interrupt(self, sig: int, *, timeout: float = 90) -> int:
        """SIGINT: Ctrl-C on the driver, which must stop on its own. SIGKILL: the driver dies
        at once (its Ray processes follow it, being bound to it)."""
        os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.cleanup()

    def finish(self, *, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"driver did not finish in {timeout:.0f} s:\n{self.output()[-3000:]}") from None
        finally:
            self.cleanup()

    def cleanup(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._fh.close()

    def output(self) -> str:
        if not self._fh.closed:
            self._fh.flush()
        return self.log.read_text(errors="replace")
