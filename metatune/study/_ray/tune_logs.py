"""What Tune logs on the driver, made fit for a study's terminal, and the one log line that must
stop a resume.

Tune has no public hook for "the restore failed, so I start a new experiment": it logs
"Failed to restore the run state" and carries on with an empty experiment, which would forget
every trial of the study. A filter on that logger turns the line into an exception that stops
the driver before any trial starts. The other filters drop Tune's hints (``Tuner.restore(...)``,
"Trials did not complete"), which the study's own lines replace, and fold Tune's repeated
snapshot-failure tracebacks into one line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

__all__ = ["RestoreFailed", "tune_logs_for_a_study"]

_CONTROLLER = "ray.tune.execution.tune_controller"
_TUNE = "ray.tune.tune"
_SNAPSHOT = "ray.tune.execution.experiment_state"
_SYNCER = "ray.train._internal.syncer"
_ANALYSIS = "ray.tune.analysis.experiment_analysis"

#: Tune's lines that the study's own summary replaces.
_DROPPED = (
    "Stop signal received",
    "Experiment has been interrupted",
    "Training has been interrupted",
    "Trials did not complete",
    # A trial's result.json cut short by a full disk; the study's records come from Tune's trials.
    "Failed to fetch metrics",
)
_SNAPSHOT_FAILED = (
    "Saving experiment state to storage",
    "Experiment state snapshotting failed",
    "Last sync command failed",
)


class RestoreFailed(RuntimeError):
    """Tune could not read the study's experiment snapshot back."""


class _StudyFilter(logging.Filter):
    def __init__(self, *, resuming: bool, on_snapshot_failure: Callable[[], None]) -> None:
        super().__init__()
        self.resuming = resuming
        self.on_snapshot_failure = on_snapshot_failure
        self.snapshot_failures = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.resuming and message.startswith("Failed to restore the run state"):
            exc = record.exc_info[1] if record.exc_info else None
            # Raised from inside Tune's `except`, before it logs "Restarting experiment".
            raise RestoreFailed(f"{type(exc).__name__}: {exc}" if exc else message)
        if message.startswith(_DROPPED):
            return False
        if message.startswith(_SNAPSHOT_FAILED):
            self.on_snapshot_failure()
            self.snapshot_failures += 1
            if self.snapshot_failures > 1:
                return False
            exc = record.exc_info[1] if record.exc_info else None
            record.msg = (
                f"saving Tune's experiment snapshot failed ({type(exc).__name__ if exc else 'error'}: "
                f"{exc}); the last good copy is kept (said once)"
            )
            record.args, record.exc_info, record.stack_info = None, None, None
        return True


@contextlib.contextmanager
def tune_logs_for_a_study(*, resuming: bool, on_snapshot_failure: Callable[[], None]) -> Iterator[None]:
    """Filter Tune's driver loggers while a study's Tuner runs; ``on_snapshot_failure`` is called
    each time Tune says it could not write its experiment snapshot."""
    filt = _StudyFilter(resuming=resuming, on_snapshot_failure=on_snapshot_failure)
    loggers = [logging.getLogger(name) for name in (_CONTROLLER, _TUNE, _SNAPSHOT, _SYNCER, _ANALYSIS)]
    for logger in loggers:
        logger.addFilter(filt)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(filt)
