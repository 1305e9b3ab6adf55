"""The training loss live at every ``log_every``: between validation reports, a trial pushes
its history entries to a small actor (at most one call per half second, see LiveSender), and the
driver drains it once a second and logs the points to MLflow (only the driver writes the
stores, design.md).

Tune reports stay at validations: reporting at every log point would change what Tune's metric
check, ASHA's rungs and Optuna's intermediate values count. Each report still carries its whole
window, and the tracker skips steps a run already has, so an entry lost here (a full inbox, a
driver that stalled) reaches MLflow with the trial's next report."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.actor import ActorHandle

__all__ = ["LiveLog", "LiveSender"]

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class _Inbox:
    """Entries pushed by the trials, in order, until the driver drains them (bounded: a driver
    that stops draining must not grow the actor without limit)."""

    def __init__(self, limit: int) -> None:
        self._entries: list[tuple[str, dict[str, Any]]] = []
        self._limit = limit

    def push(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        self._entries.extend(entries[: max(0, self._limit - len(self._entries))])

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out, self._entries = self._entries, []
        return out


@dataclass
class LiveSender:
    """What a trial calls with each history entry; never blocks, never raises. One actor call
    costs about 0.65 ms on 2 cores (benchmarks/live_push.py), as much as a compiled training
    step, so entries go at most every ``period_s`` in one call: the curve is live to within
    that, whatever ``log_every`` is."""

    inbox: ActorHandle
    period_s: float = 0.5
    _pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list, init=False, repr=False)
    _sent_at: float = field(default=0.0, init=False, repr=False)

    def __call__(self, entry: Mapping[str, Any]) -> None:
        try:
            self._pending.append((tune.get_context().get_trial_id(), dict(entry)))
            now = time.monotonic()
            if now - self._sent_at >= self.period_s:
                self.inbox.push.remote(self._pending)
                self._pending, self._sent_at = [], now
        except Exception:  # a view: the next report carries the entry anyway
            self._pending.clear()


class LiveLog:
    """The driver's end: one inbox per study run, drained at most every ``period_s``."""

    def __init__(self, *, limit: int = 20_000, period_s: float = 1.0) -> None:
        self._inbox = _Inbox.remote(limit)  # type: ignore[attr-defined]  # ray.remote makes it an actor class
        self._period_s = period_s
        self._last = 0.0
        self._warned = False

    def sender(self) -> LiveSender:
        return LiveSender(self._inbox)

    def drain(self, *, force: bool = False) -> dict[str, list[dict[str, Any]]]:
        """The entries pushed since the last drain, per trial id, oldest first."""
        now = time.monotonic()
        if not force and now - self._last < self._period_s:
            return {}
        self._last = now
        try:
            entries = ray.get(self._inbox.drain.remote(), timeout=10)
        except Exception as exc:  # the inbox died with its node: reports still carry the windows
            if not self._warned:
                self._warned = True
                log.warning(
                    "metatune: the live training loss is unavailable (%s); it reaches MLflow with each "
                    "validation instead", exc,
                )
            return {}
        out: dict[str, list[dict[str, Any]]] = {}
        for trial_id, entry in entries:
            out.setdefault(trial_id, []).append(entry)
        return out

    def close(self) -> None:
        try:
            ray.kill(self._inbox)
        except Exception:
            pass
