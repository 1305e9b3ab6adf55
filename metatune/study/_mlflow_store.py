"""A study's sqlite MLflow store that MLflow began to create but did not finish.

MLflow creates its tables and then stamps the schema version (the ``alembic_version`` table).
Interrupted in between (Ctrl-C while "Creating initial MLflow database tables"), the file has
some tables and no version; every later client then tries to create the tables again and fails
(``table trace_info already exists``), for good. Such a file can hold no run, so it is moved
aside and MLflow starts a fresh store; a store with any run in it is never touched.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

__all__ = ["heal_incomplete_sqlite_store"]

log = logging.getLogger(__name__)


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]) if uri.startswith(prefix) else None


def heal_incomplete_sqlite_store(uri: str) -> Path | None:
    """Move a half-created store aside; returns where it went (None: nothing to heal)."""
    path = _sqlite_path(uri)
    if path is None or not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            stamped = "alembic_version" in tables and con.execute(
                "SELECT COUNT(*) FROM alembic_version").fetchone()[0] > 0
            runs = con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.Error:
        return None  # not a database we understand: leave it, MLflow reports it
    if stamped or not tables or runs:
        return None
    aside = path.with_name(f"{path.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
    path.rename(aside)
    log.warning("MLflow store %s was left half-created (%d tables, no schema version, no runs; an "
                "interrupted first start): moved to %s, starting a fresh one", path, len(tables), aside.name)
    return aside
