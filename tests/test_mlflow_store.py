"""The study's sqlite MLflow store is created whole or not at all: a creation killed at any of
nine points leaves either no store or a complete one, and the next client logs a run on it.
(Before, MLflow creating the store in place and killed 2, 3.5 or 4.5 s into its table creation
and migrations left a store that every later client failed on.) Real MLflow, real processes
killed with SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

# Imports once, then creates each store in a forked child whose pid it prints: the test kills
# that child; no re-import per kill point.
CREATOR = """
import os, sys
import mlflow.store.tracking.sqlalchemy_store
from metatune.study._mlflow_store import create_sqlite_store
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        create_sqlite_store(line.strip())
        os._exit(0)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("done", flush=True)
"""
FRACTIONS = (0.05, 0.15, 0.25, 0.35, 0.5, 0.6, 0.7, 0.85, 0.95)


def test_a_killed_store_creation_leaves_no_store_or_a_whole_one(tmp_path):
    from mlflow.tracking import MlflowClient

    from metatune.study._mlflow_store import create_sqlite_store

    creator = subprocess.Popen([sys.executable, "-c", CREATOR], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)

    def create(uri: str, kill_after: float | None) -> None:
        creator.stdin.write(uri + "\n")
        creator.stdin.flush()
        pid = int(creator.stdout.readline())
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert creator.stdout.readline().strip() == "done"

    outcomes = []
    try:
        create(f"sqlite:///{tmp_path / 'warm.db'}", None)  # the first one also imports MLflow's migrations
        start = time.monotonic()
        create(f"sqlite:///{tmp_path / 'whole.db'}", None)  # how long a creation takes here
        took = time.monotonic() - start
        for fraction in FRACTIONS:
            folder = tmp_path / f"kill-{fraction}"
            folder.mkdir()
            db, uri = folder / "mlflow.db", f"sqlite:///{folder / 'mlflow.db'}"
            create(uri, fraction * took)
            outcomes.append((fraction, db.exists()))
            # No store, or a whole one. The next Tracker then creates one (first time: checked
            # below, with the killed creation's temporary file), or logs to this one.
            if db.exists() or not any(existed is False for _, existed in outcomes[:-1]):
                create_sqlite_store(uri)
                client = MlflowClient(tracking_uri=uri)
                run = client.create_run(client.create_experiment("after-a-kill"))
                client.log_metric(run.info.run_id, "val_loss", 1.0)
                client.set_terminated(run.info.run_id)
                assert client.get_run(run.info.run_id).info.status == "FINISHED", fraction
                assert not list(folder.glob(".mlflow.db.creating-*")), fraction  # the killed one's file is gone
    finally:
        creator.kill()
        creator.wait(timeout=30)
    # Kills landed inside the creation (no store left), not all after it.
    assert sum(not existed for _, existed in outcomes) >= 3, (took, outcomes)
