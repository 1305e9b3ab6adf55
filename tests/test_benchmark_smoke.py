"""Smoke tests of the benchmark scripts: ``benchmarks/throughput.py --quick`` and
``benchmarks/learners.py --quick`` run end to end and print every row of their tables;
``benchmarks/gpu_check.sh`` without a GPU says so and succeeds. Each run is bounded: under 90 s with
a warm compile cache (--quick uses metatune's persistent one), 300 s allowed for a cold one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

METHODS = ("loop", "higher", "vmap", "reference", "compiled")


def _run(root, args, timeout):
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _throughput_rows(stdout):
    return [line.split() for line in stdout.splitlines() if line.startswith("cpu ") and len(line.split()) >= 12]


def test_throughput_quick(root, tmp_path):
    out = tmp_path / "throughput.json"
    proc = _run(root, [str(root / "benchmarks" / "throughput.py"), "--quick", "--json", str(out)], timeout=300)
    rows = _throughput_rows(proc.stdout)
    # --quick: CPU, 1 thread, 1 inner step, second and first order, every method.
    seen = {(r[3], r[4]) for r in rows}
    assert seen == {(order, m) for order in ("second", "first") for m in METHODS}, proc.stdout
    for r in rows:
        assert r[1] == "1" and r[2] == "1"
        it_per_s, ratio, first_call, err, iters, xref = map(float, r[5:11])
        assert it_per_s > 0 and ratio > 0 and first_call >= 0 and iters == 3 and xref > 0
        assert err < 1e-4, f"{r[3]} {r[4]}: gradient differs from the loop's ({err:.1e})"
        assert "compile failed" not in " ".join(r)
        if r[4] == "loop":
            assert ratio == 1.0
        if r[4] == "reference":
            assert xref == 1.0
    data = json.loads(out.read_text())
    assert len(data["results"]) == len(rows) == 10
    assert data["meta"]["torch"] and data["meta"]["setup"]["meta_batch"] == 25


def test_throughput_quick_reference_ratio(root, tmp_path):
    out = tmp_path / "throughput.json"
    proc = _run(root, [str(root / "benchmarks" / "throughput.py"), "--quick", "--methods", "loop,reference,compiled",
                       "--json", str(out)], timeout=300)
    rows = _throughput_rows(proc.stdout)
    assert {(r[3], r[4]) for r in rows} == {(o, m) for o in ("second", "first") for m in ("loop", "reference", "compiled")}
    assert "# compiled / reference" in proc.stdout
    summary = [line.split() for line in proc.stdout.splitlines() if line.startswith("cpu ") and len(line.split()) == 6]
    assert {r[3] for r in summary} == {"second", "first"}, proc.stdout
    assert all(float(r[4]) > 0 and r[4] == r[5] for r in summary)  # one run: its ratio is the minimum
    assert "in every cell of this run: " in proc.stdout
    data = json.loads(out.read_text())
    compiled = [r for r in data["results"] if r["method"] == "compiled"]
    assert len(compiled) == 2 and all(r["ratio_vs_reference"] > 0 and r["run"] == 1 for r in compiled)
    assert all(r["grad_rel_err_vs_loop"] < 1e-4 for r in data["results"])


def test_learners_quick(root, tmp_path):
    out = tmp_path / "learners.json"
    proc = _run(root, [str(root / "benchmarks" / "learners.py"), "--quick", "--learners", "maml,metasgd",
                       "--json", str(out)], timeout=300)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in proc.stdout.splitlines()
            if line.startswith("| maml ") or line.startswith("| metasgd ")]
    assert [r[0] for r in rows] == ["maml", "metasgd"], proc.stdout
    for r in rows:
        steps, eager, compiled, ratio, compile_s = r[1], *map(float, r[2:6])
        assert steps == "1" and eager > 0 and compiled > 0 and ratio > 0 and compile_s >= 0
        assert float(r[7]) < 1e-4, f"{r[0]}: compiled gradient differs from eager ({r[7]})"
        assert r[8] == "sine, MLP 40-40"
    data = json.loads(out.read_text())
    assert [r["learner"] for r in data["results"]] == ["maml", "metasgd"]
    for r in data["results"]:
        assert r["meta_batch"] == 4 and r["compiled"]["compile_graphs"] >= 1
        assert r["compiled_over_eager"] == pytest.approx(r["compiled"]["it_per_s"] / r["eager"]["it_per_s"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_check_without_gpu(root, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    env.pop("GPU_CHECK_DEVICE", None)
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "not run: no GPU available"
    assert not any(tmp_path.iterdir())  # nothing written when nothing ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_scripts_import_without_gpu(root):
    proc = _run(root, [str(root / "benchmarks" / "gpu_grads.py")], timeout=60)
    assert proc.stdout.strip() == "not run: no GPU available"
    proc = _run(root, [str(root / "benchmarks" / "gpu_grads.py"), "--list"], timeout=60)
    assert "maml" in proc.stdout.split() and "cxgrad" in proc.stdout.split()
    proc = _run(root, [str(root / "benchmarks" / "gpu_pack.py"), "--help"], timeout=60)
    assert "--copies" in proc.stdout


def test_divergence_encoding_on_its_cached_landscape(root, tmp_path):
    """The committed landscape covers the whole grid, so nothing trains: seconds, every encoding
    in the table, and ``fail`` no faster than ``prune`` (the default's reason) on these seeds."""
    import shutil

    cache = tmp_path / "landscape.json"
    shutil.copy(root / "benchmarks" / "results_divergence_landscape.json", cache)
    out = tmp_path / "runs.json"
    proc = _run(root, [str(root / "benchmarks" / "divergence_encoding.py"), "--seeds", "6", "--trials", "20",
                       "--cache", str(cache), "--json", str(out)], timeout=120)
    assert "(0 trained now" in proc.stdout, proc.stdout[-2000:]
    rows = {line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert {"prune", "constraint", "fail", "penalty"} <= rows, proc.stdout
    summary = json.loads(out.read_text())["summary"]
    assert summary["fail"]["median"] >= summary["prune"]["median"]
    assert summary["fail"]["mean_diverged"] > summary["prune"]["mean_diverged"]
