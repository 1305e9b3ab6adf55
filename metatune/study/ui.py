"""`metatune ui`: the MLflow UI of a study, opened on the runs view of its trials.

MLflow 3.17 opens an experiment in its GenAI mode unless the URL says
``workflowType=machine_learning`` (its ``mlflow.experimentKind`` tag does not decide it), and
its runs table shows no metric column and nests the trials, collapsed, under the parent run.
Both are fixed through a *shared view*: MLflow reads the experiment tag
``mlflow.sharedViewState.<key>`` when the URL carries ``viewStateShareKey=<key>`` (the UI's own
"Share" button writes such tags). Ours filters on the trials' role tag, so they are listed flat
(MLflow nests a run only under a parent that is in the listing), sorted by the objective, with
the objective, the test loss, the status and the searched parameters as columns. A row's
expanded state is not part of a shared view in MLflow 3.17, hence the filter.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from metatune.study.driver import public_uri, tracker_for
from metatune.study.metric_keys import TEST_KEY, diverged_key, mlflow_key
from metatune.study.param_names import LEARNER_KEY, SEED_KEY

if TYPE_CHECKING:
    from metatune.study.resolved import Study

__all__ = ["VIEW_KEY", "cmd_ui", "runs_view_path", "runs_view_state", "ui_command"]

#: Name of the study's shared view (tag ``mlflow.sharedViewState.metatune``).
VIEW_KEY = "metatune"


def _col(kind: str, key: str) -> str:
    """A runs-table column as MLflow names it (``metrics.`main/val_loss```)."""
    return f"{kind}.`{key}`"


def runs_view_state(study: Study) -> dict[str, Any]:
    """The shared view: trials only, best objective first, the leading columns in order."""
    objective = mlflow_key(study.metric)
    params = ([LEARNER_KEY] if len(study.learners) > 1 else []) + [p.name for p in study.space.params]
    if study.spec.replicate_seeds:  # which replicate a row is
        params.append(SEED_KEY)
    columns = [
        _col("metrics", objective),
        _col("metrics", TEST_KEY if study.metric != "val_accuracy" else mlflow_key("test_accuracy")),
        _col("tags", "metatune.status"),
        _col("metrics", diverged_key()),
        *(_col("params", p) for p in params),
    ]
    return {
        "searchFilter": "tags.`metatune.role` = 'trial'",
        "orderByKey": _col("metrics", objective),
        "orderByAsc": study.mode == "min",
        "selectedColumns": columns,
        "columnOrder": columns,
    }


def runs_view_path(experiment_id: str) -> str:
    """The URL fragment of the study's runs view (model-training mode, shared view applied)."""
    query = urlencode({"workflowType": "machine_learning", "viewStateShareKey": VIEW_KEY})
    return f"#/experiments/{experiment_id}/runs?{query}"


def ui_command(uri: str, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """``mlflow server`` for a study's store, bound to loopback unless asked otherwise."""
    return [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
        "--host", host, "--port", str(port), "--workers", "1",
    ]


def cmd_ui(args: argparse.Namespace) -> int:
    from metatune.study.cli import find_default_study
    from metatune.study.spec import open_study

    study = open_study(args.study or find_default_study())
    uri = study.tracking_uri
    if not uri.startswith("sqlite:"):
        # The driver wrote the runs view there too: its URL is that server's + runs_view_path.
        print(f"study '{study.name}' logs to {public_uri(study)}: open that in a browser "
              f"(experiment '{study.experiment}', then {runs_view_path('<id>')})")
        return 0
    cmd = ui_command(uri, host=args.host, port=args.port) + [
        "--artifacts-destination",
        str(study.dir / "mlartifacts"),
    ]
    url = f"http://{args.host}:{args.port}"
    with contextlib.suppress(Exception):  # the link is a convenience
        t = tracker_for(study)
        t.set_view(VIEW_KEY, runs_view_state(study))  # again: a study logged before views existed
        url += "/" + runs_view_path(t.experiment_id())
    print(f"MLflow UI for study '{study.name}': {url}\n  ({' '.join(cmd[2:])}; Ctrl-C stops it)", flush=True)
    # The server runs in its own session so that stopping `metatune ui` (Ctrl-C or SIGTERM)
    # stops the server and every helper process it spawned, and nothing else.
    # No background job workers (GenAI scoring, trace archival): a study store needs none.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            # the session leader is gone; helpers in its group may linger for a moment
            time.sleep(0.5)
        except subprocess.TimeoutExpired:
            continue
