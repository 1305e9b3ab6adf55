"""A study's sqlite MLflow store, created whole or not at all.

MLflow creates its tables, stamps the schema version (the ``alembic_version`` table) and then
runs its migrations, over about five seconds. Interrupted anywhere in there (Ctrl-C while
"Creating initial MLflow database tables"), the file is left with some tables, or a version
stamp and half a migration; every later client then fails on it (``table trace_info already
exists``, or a migration error), for good. So a new store is created in a temporary file beside
the target and renamed into place once MLflow has finished with it: the study's path holds a
complete store or none (``create_sqlite_store``; a test kills the creation at nine points).

Stores left half-created before this (or by another tool) are healed: such a file can hold no
run, so it is moved aside and a fresh store created; a store with any run in it is never touched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

__all__ = ["create_sqlite_store", "heal_incomplete_sqlite_store"]

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


def create_sqlite_store(uri: str) -> Path | None:
    """If ``uri`` names a sqlite file that does not exist yet, create the MLflow store in a
    temporary file and rename it into place; returns the path created (None: nothing to do)."""
    path = _sqlite_path(uri)
    if path is None or path.exists():
        return None
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.creating-*"):  # a creation that was killed
        with contextlib.suppress(OSError):
            stale.unlink()
    tmp = path.with_name(f".{path.name}.creating-{os.getpid()}")
    try:
        # The "Default" experiment's artifact root only; the study's experiment sets its own.
        store = SqlAlchemyStore(f"sqlite:///{tmp}", str(path.parent / "mlartifacts"))
        store.engine.dispose()  # no connection left open on the file being renamed
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path
