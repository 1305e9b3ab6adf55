"""The README's Python API example runs as printed (in this process: it registers nothing)."""

from __future__ import annotations

import math
import time

from readme_blocks import blocks, section


def test_python_api_example_runs():
    code = blocks(section("Python API"))
    assert code, "the Python API section has no ```python block"
    namespace: dict = {"__name__": "readme_example"}
    start = time.monotonic()
    for i, block in enumerate(code):
        exec(compile(block, f"README.md (Python API, block {i + 1})", "exec"), namespace)
    assert time.monotonic() - start < 30, "the README example should run in seconds"
    # What the example's comments promise.
    assert math.isfinite(namespace["loss"].item())
    assert all(v.grad is not None for v in namespace["meta"].values())
    assert namespace["curves"]["loss"].shape == (4, 11)
