"""A study on a real two-node Ray cluster (both nodes on loopback, private temp dir) logging
to a real `mlflow server` on loopback: `metatune run --address ... --tracking-uri http://...`
completes and the runs are visible through the MLflow client. Everything started here is
stopped by process id (never `ray stop`, which would kill every Ray process of the user).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

BIN = Path(sys.executable).parent
RAY = BIN / "ray"

pytestmark = [
    pytest.mark.slow,  # about 2 minutes: two `ray start`, an mlflow server, a study
    pytest.mark.skipif(
        not RAY.exists() or not Path("/proc").is_dir(),
        reason="needs the ray CLI beside this Python and Linux /proc",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        OMP_NUM_THREADS="1",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    return env


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line), read from /proc."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out[int(d)] = (ppid, cmd)
    return out


def _ray_pids(temp_dir: str) -> set[int]:
    """Processes of the cluster we started: those naming our private temp dir, and their descendants."""
    procs = _processes()
    pids = {pid for pid, (_, cmd) in procs.items() if temp_dir in cmd and pid != os.getpid()}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in pids and pid not in pids:
                pids.add(pid)
                grew = True
    return pids


def _kill(pids: set[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + 10
        while (
            sig == signal.SIGTERM
            and time.monotonic() < deadline
            and any(Path(f"/proc/{p}").exists() for p in pids)
        ):
            time.sleep(0.2)


@pytest.fixture
def cluster():
    temp_dir = tempfile.mkdtemp(prefix="mtray", dir="/tmp")  # short: Ray's socket paths must stay < 107 chars
    port = _free_port()
    env = _env()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    try:
        subprocess.run(
            [
                str(RAY),
                "start",
                "--head",
                f"--port={port}",
                "--include-dashboard=false",
                f"--temp-dir={temp_dir}",
                *common,
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [str(RAY), "start", f"--address=127.0.0.1:{port}", *common],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield {"address": f"127.0.0.1:{port}", "temp_dir": temp_dir}
    finally:
        _kill(_ray_pids(temp_dir))
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "mlflow.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:  # start-up takes 10-15 s here: poll /health, never sleep a fixed time
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: its gunicorn/uvicorn workers too
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_study_on_two_node_cluster_with_mlflow_server(cluster, mlflow_server, tmp_path):
    nodes = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import ray; ray.init(address={cluster['address']!r}, log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert nodes.stdout.strip().splitlines()[-1] == "2", nodes.stderr[-2000:]
    study = {
        "name": "cluster",
        "task": {"name": "sine", "protocol": "metasgd", "shots": 5},
        "learners": ["maml"],
        "search_space": {"params": {"inner_lr": {"grid": [0.01, 0.1]}}},
        "sampler": {"name": "grid"},
        "resources": {"cpus": 1},
        "training": {"iterations": 20, "meta_batch": 2, "eval_every": 10, "log_every": 5, "val_tasks": 10},
        "evaluation": {"tasks": 10, "shots": [5], "inner_steps": 1, "lr_scales": [1.0]},
        "storage": str(tmp_path / "storage"),
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(study))
    run = subprocess.run(
        [
            str(BIN / "metatune"),
            "run",
            str(path),
            "--address",
            cluster["address"],
            "--tracking-uri",
            mlflow_server,
            "--progress-every",
            "10",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=420,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2/2 done" in run.stdout and mlflow_server in run.stdout

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("cluster")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("metatune.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("metatune.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {float(c.data.params["inner_lr"]) for c in children} == {0.01, 0.1}
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "table")}
    assert "table/study_table.md" in arts  # uploaded through the server's artifact proxy

    # A trial no node can hold (2 CPUs; each node has 1): Tune would wait forever without a word.
    # The driver says it is waiting, waits the bounded time, then gives one line and exit 2.
    too_big = {**study, "name": "cluster-too-big", "resources": {"cpus": 2}, "storage": str(tmp_path / "big")}
    path.write_text(yaml.safe_dump(too_big))
    start = time.monotonic()
    refused = subprocess.run(
        [str(BIN / "metatune"), "run", str(path), "--address", cluster["address"], "--no-mlflow",
         "--wait-for-node", "3"],
        env=_env(), capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    err = refused.stderr.strip().splitlines()
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "waiting up to 3 s for one to join" in refused.stdout
    assert err and "field 'resources.cpus'" in err[-1] and "largest node: 1 CPU" in err[-1], err
    assert "Traceback" not in refused.stderr and time.monotonic() - start < 120
