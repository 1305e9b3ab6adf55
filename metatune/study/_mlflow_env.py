"""The MLflow client's settings for a study and the quieting of MLflow's store logs, applied
when the first client or server starts, never on import."""

from __future__ import annotations

import logging
import os

__all__ = ["configure_mlflow_env"]

#: MLflow settings for the study's client, applied (unless the user set them) when the first
#: client or server starts, never on import.
_CLIENT_ENV = (
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
    # MLflow's HTTP defaults (7 retries, backoff factor 2, 120 s timeout) hold a call to a
    # server that is down for about 4 minutes, on the Tune driver's thread. Fail within
    # seconds instead: the study goes on and `metatune report` catches up.
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
    # No "View run at ..." lines in the driver's output (and no extra request per run).
    ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),
)


def configure_mlflow_env() -> None:
    """Apply _CLIENT_ENV; MLflow reads these on each request, so this may run any time before."""
    for key, value in _CLIENT_ENV:
        os.environ.setdefault(key, value)
    store_log = logging.getLogger("mlflow.store.db.utils")
    if _quiet_store not in store_log.filters:
        store_log.addFilter(_quiet_store)


def _quiet_store(record: logging.LogRecord) -> bool:
    """MLflow's sqlite store announces creating and migrating its tables, and logs each failed
    query with the SQL and a traceback; the study says "MLflow failed ..." once instead."""
    if logging.getLogger().isEnabledFor(logging.INFO):  # --verbose: show everything
        return True
    message = record.getMessage()
    return not message.startswith(("Creating initial MLflow database tables", "Updating database tables",
                                   "SQLAlchemy database error"))
