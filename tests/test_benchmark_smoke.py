"""``benchmarks/throughput.py --quick`` runs end to end and prints every row of its table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

METHODS = ("loop", "higher", "vmap", "compiled")


def test_throughput_quick(root, tmp_path):
    out = tmp_path / "throughput.json"
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "throughput.py"), "--quick", "--json", str(out)],
        cwd=root, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("cpu ")]
    # --quick: CPU, 1 thread, 1 inner step, second and first order, the four methods.
    seen = {(r[3], r[4]) for r in rows}
    assert seen == {(order, m) for order in ("second", "first") for m in METHODS}, proc.stdout
    for r in rows:
        assert r[1] == "1" and r[2] == "1"
        it_per_s, ratio, first_call, err, iters = map(float, r[5:10])
        assert it_per_s > 0 and ratio > 0 and first_call >= 0 and iters == 3
        assert err < 1e-4, f"{r[3]} {r[4]}: gradient differs from the loop's ({err:.1e})"
        assert "compile failed" not in " ".join(r)
        if r[4] == "loop":
            assert ratio == 1.0
    data = json.loads(out.read_text())
    assert len(data["results"]) == len(rows) == 8
    assert data["meta"]["torch"] and data["meta"]["setup"]["meta_batch"] == 25
