"""Driver side: Tune's trial events forwarded to the study's monitor (progress, MLflow, files),
a copy of each good experiment snapshot kept, and a stop when the disk refuses writes."""

from __future__ import annotations

import errno
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ray import tune
from ray.tune.experiment import Trial

from metatune.study._ray.live import LiveLog
from metatune.study._ray.snapshot import SnapshotCopier
from metatune.study._ray.storage import mark_error
from metatune.study._ray.trials import record, records
from metatune.study.records import TuneStatus

if TYPE_CHECKING:
    from metatune.study.monitor import StudyMonitor

__all__ = ["DriverStop", "StudyCallback", "attach_monitor", "detach_monitor", "driver_stop", "stop_if_disk_refuses"]

log = logging.getLogger(__name__)

#: Live monitors by study folder: the callback (pickled with the experiment) finds its
#: monitor here, so a restored experiment reports to the new driver's monitor.
_MONITORS: dict[str, StudyMonitor] = {}

F = TypeVar("F", bound=Callable[..., None])


class DriverStop:
    """Why the driver stopped the experiment early: Ctrl-C, or a disk that refuses writes."""

    def __init__(self) -> None:
        self.interrupted = False
        self.disk_problem: str | None = None


#: Per study folder, what stopped its driver (read by run_study once Tune returns).
_STOPS: dict[str, DriverStop] = {}
#: Per study folder, the inbox of the trials' live training-loss entries.
_LIVE: dict[str, LiveLog] = {}


def attach_monitor(key: str, monitor: StudyMonitor, *, live: LiveLog | None = None) -> None:
    _MONITORS[key] = monitor
    _STOPS[key] = DriverStop()
    if live is not None:
        _LIVE[key] = live


def detach_monitor(key: str) -> None:
    _MONITORS.pop(key, None)
    _LIVE.pop(key, None)


def driver_stop(key: str) -> DriverStop:
    return _STOPS.get(key) or DriverStop()


#: The errors a disk gives when it cannot take more: full, over quota, read-only.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def disk_refuses_writes(folder: str) -> str | None:
    """Whether ``folder`` takes a 64 KiB write (a full disk often still creates an empty file);
    the reason when it does not, as ``strerror (folder)``."""
    probe = os.path.join(folder, f".disk_probe.{os.getpid()}")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return f"{exc.strerror or exc} ({folder})" if exc.errno in _DISK_ERRNOS else None
    finally:
        try:
            os.unlink(probe)
        except OSError:
            pass
    return None


def _guarded(method: F) -> F:
    """A bug or an outage in a view must never stop the study: log it and go on."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except OSError as exc:  # a full or read-only disk: one line, not a traceback per event
            log.warning("metatune: writing a study file failed (%s); `metatune report` rewrites it", exc)
        except Exception:
            log.exception(
                "metatune: updating the study views failed (the study goes on; "
                "`metatune report` rebuilds them)"
            )

    return wrapper  # type: ignore[return-value]


def stop_if_disk_refuses(key: str) -> None:
    """After a trial error, or a snapshot Tune could not write: if the study folder's disk
    refuses writes, stop the experiment as Ctrl-C does (SIGUSR1 is Tune's other stop signal),
    so the trials that would run on are not failed one after the other."""
    stop = _STOPS.get(key)
    if stop is None or stop.disk_problem is not None:
        return
    problem = disk_refuses_writes(key)
    if problem is not None:
        stop.disk_problem = problem
        log.warning("metatune: the study folder's disk refuses writes (%s): stopping the study", problem)
        if threading.current_thread() is threading.main_thread():
            os.kill(os.getpid(), signal.SIGUSR1)


class StudyCallback(tune.Callback):
    """Forwards Tune events to the monitor registered for the study folder ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._copier: SnapshotCopier | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment; the copier is the driver's own.
        return {"key": self.key, "_copier": None}

    def _monitor(self) -> StudyMonitor | None:
        return _MONITORS.get(self.key)

    def setup(
        self,
        stop: Any = None,
        num_samples: int | None = None,
        total_num_samples: int | None = None,
        **info: Any,
    ) -> None:
        """Tune has just put its own Ctrl-C handler in place (it stops the experiment after one
        last snapshot); ours goes in front of it, to tell a Ctrl-C from the other ways the
        experiment ends."""
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)
        stop = driver_stop(self.key)

        def on_sigint(signum: int, frame: Any) -> None:
            stop.interrupted = True
            signal.signal(signal.SIGINT, tune_handler)  # a second Ctrl-C goes to Tune's handler
            if callable(tune_handler):
                tune_handler(signum, frame)

        if callable(tune_handler):
            signal.signal(signal.SIGINT, on_sigint)

    @_guarded
    def on_trial_result(
        self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any], **info: Any
    ) -> None:
        mon = self._monitor()
        if mon is None:
            return
        rec = record(mon.study, trial, result=result)
        if rec is not None:
            mon.trial_result(rec, result)

    @_guarded
    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finished(trials, trial, TuneStatus.TERMINATED)

    @_guarded
    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        mon = self._monitor()
        rec = record(mon.study, trial, status=TuneStatus.ERROR) if mon is not None else None
        stop_if_disk_refuses(self.key)
        if rec is not None:
            mark_error(trial, rec)
        self._finished(trials, trial, TuneStatus.ERROR)

    def _finished(self, trials: list[Trial], trial: Trial, status: TuneStatus) -> None:
        mon = self._monitor()
        if mon is None:
            return
        rec = record(mon.study, trial, status=status)
        if rec is not None:
            others = [r for r in records(mon.study, trials) if r.trial_id != rec.trial_id]
            mon.trial_finished(rec, others)

    @_guarded
    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        mon = self._monitor()
        if mon is None:
            return
        if self._copier is None:
            self._copier = SnapshotCopier(mon.study)
        self._copier.maybe_copy()
        live = _LIVE.get(self.key)
        pushed = live.drain() if live is not None else {}
        if pushed:
            by_id = {t.trial_id: t for t in trials}
            for trial_id, entries in pushed.items():
                trial = by_id.get(trial_id)
                rec = record(mon.study, trial) if trial is not None else None
                if rec is not None:
                    mon.trial_log(rec, entries)
        mon.tick(lambda: records(mon.study, trials))
