"""Helpers shared by the benchmark scripts (no metatune or torch import at module level, so a
script can set up its compile cache before torch is imported)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def resolve_threads(spec: str) -> list[int]:
    """'1,all' -> [1, number of usable cores], without duplicates."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = []
    for s in spec.split(","):
        n = cores if s.strip() == "all" else int(s)
        if n not in out:
            out.append(n)
    return out


def resolve_devices(spec: str) -> list[str]:
    """'cpu,cuda' or 'auto' (cpu, and cuda if available); exits on an unavailable cuda."""
    import torch

    names = ["cpu", "cuda"] if spec == "auto" else [s.strip() for s in spec.split(",")]
    out = []
    for name in names:
        if name == "cuda" and not torch.cuda.is_available():
            if spec == "auto":
                continue
            sys.exit("--device cuda: no CUDA device available")
        if name not in ("cpu", "cuda"):
            sys.exit(f"--device: unknown device {name!r}")
        out.append(name)
    return out


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def setup_compile_cache(warm: bool) -> str | None:
    """Call before anything compiles. ``warm``: metatune's persistent cache folder
    (``$METATUNE_COMPILE_CACHE``, see metatune.engine.compile_cache_dir) serves every compilation,
    the hand-written reference's too. Otherwise a fresh temporary folder is both metatune's and
    Inductor's cache, so every first compilation is cold; returns it (remove it with
    :func:`drop_compile_cache`)."""
    if warm:
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        from metatune.engine import configure_compile_cache

        configure_compile_cache()
        return None
    cache = tempfile.mkdtemp(prefix="metatune-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.environ["METATUNE_COMPILE_CACHE"] = cache
    return cache


def drop_compile_cache(cache: str | None) -> None:
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)


def proc_status_kib(*fields: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB (VmRSS, VmHWM); empty where there is no /proc."""
    out = {}
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[name] = int(value.split()[0])
    return out


def write_json(path, results: dict) -> None:
    """Write a benchmark's results (``--json``), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def trainer_adam(params, lr: float):
    """The Adam the Trainer builds: torch's fused kernel, else foreach (metatune.trial)."""
    import torch

    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)
