"""Driver side: Tune's trial events forwarded to the study's monitor (progress, MLflow, files)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ray import tune
from ray.tune.experiment import Trial

from metatune.study._ray.storage import mark_error
from metatune.study._ray.trials import record, records
from metatune.study.records import TuneStatus

if TYPE_CHECKING:
    from metatune.study.monitor import StudyMonitor

__all__ = ["StudyCallback", "attach_monitor", "detach_monitor"]

log = logging.getLogger(__name__)

#: Live monitors by study folder: the callback (pickled with the experiment) finds its
#: monitor here, so a restored experiment reports to the new driver's monitor.
_MONITORS: dict[str, StudyMonitor] = {}

F = TypeVar("F", bound=Callable[..., None])


def attach_monitor(key: str, monitor: StudyMonitor) -> None:
    _MONITORS[key] = monitor


def detach_monitor(key: str) -> None:
    _MONITORS.pop(key, None)


def _guarded(method: F) -> F:
    """A bug or an outage in a view must never stop the study: log it and go on."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception:
            log.exception(
                "metatune: updating the study views failed (the study goes on; "
                "`metatune report` rebuilds them)"
            )

    return wrapper  # type: ignore[return-value]


class StudyCallback(tune.Callback):
    """Forwards Tune events to the monitor registered for the study folder ``key``."""

    def __init__(self, key: str) -> None:
        self.key = key

    def _monitor(self) -> StudyMonitor | None:
        return _MONITORS.get(self.key)

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
        if mon is not None:
            mon.tick(lambda: records(mon.study, trials))
