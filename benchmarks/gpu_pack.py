"""Aggregate training throughput of trials packed on one GPU: N concurrent trials against one
alone (step (c) of benchmarks/gpu_check.sh).

Each trial is a separate process running ``metatune.trial.Trainer`` on a compiled sine MAML run
(``Sine(protocol="maml", shots=10)``, MLP 1-40-40-1, meta-batch 25, ``--steps`` inner steps,
``compile: true``, 1 thread, ``gpu_memory_fraction`` = 1 / copies, as a study packing trials on a
GPU sets it). A trial first takes 3 checked steps (the compilation: every copy after the first
loads it from the shared persistent compile cache), waits until every copy is ready, then runs
the Trainer's own sync-free training step for ``--seconds`` seconds (the device is synchronised
every 10 steps to read the clock). Aggregate iterations/s = the sum over the copies of
iterations / elapsed; the single trial is run first, then the packed ones.

    python benchmarks/gpu_pack.py --copies 4 --seconds 10
    python benchmarks/gpu_pack.py --device cpu --copies 2 --seconds 3     # plumbing check only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=4, help="trials packed on the GPU (default 4)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per trial (default 10)")
    p.add_argument("--steps", type=int, default=5, help="inner steps (default 5)")
    p.add_argument("--meta-batch", type=int, default=25)
    p.add_argument("--device", default="cuda")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for every copy to compile")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: barrier folder of one trial
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT))
    import torch

    from metatune.trial import Trainer

    cuda = args.device.startswith("cuda")
    trainer = Trainer.from_config({
        "seed": args.index, "device": args.device, "compile": True, "threads": 1,
        "gpu_memory_fraction": 1.0 / args.copies if cuda else None,
        "task": {"name": "sine", "protocol": "maml", "shots": 10},
        "model": {"name": "mlp", "hidden": [40, 40], "activation": "relu"},
        "learner": {"name": "maml", "inner_lr": 0.01, "inner_steps": args.steps},
        "training": {"iterations": 10**9, "meta_batch": args.meta_batch, "eval_every": 0, "log_every": 100},
    })
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(3):
        trainer.step()
    sync()
    warm = time.perf_counter() - t0
    barrier = Path(args.child)
    (barrier / f"ready{args.index}").touch()
    deadline = time.monotonic() + args.ready_timeout
    while len(list(barrier.glob("ready*"))) < args.copies:
        if time.monotonic() > deadline:
            print(json.dumps({"error": "not every copy got ready"}))
            return 1
        time.sleep(0.01)
    step = getattr(trainer, "_step", trainer.step)  # the sync-free step train() uses
    n, t0 = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        n += 10
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= args.seconds:
            break
    print(json.dumps({"index": args.index, "iterations": n, "seconds": elapsed, "it_per_s": n / elapsed,
                      "warmup_s": warm, "compile": trainer.compile_record()}))
    return 0


def launch(args: argparse.Namespace, copies: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="metatune-pack-") as barrier:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", barrier, "--copies", str(copies),
               "--seconds", str(args.seconds), "--steps", str(args.steps), "--meta-batch", str(args.meta_batch),
               "--device", args.device, "--ready-timeout", str(args.ready_timeout)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([*cmd, "--index", str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for i in range(copies)]
        runs = []
        for p in procs:
            out, err = p.communicate()
            try:
                runs.append(json.loads(out.strip().splitlines()[-1]))
            except (IndexError, ValueError):
                runs.append({"error": f"exit {p.returncode}: {err.strip()[-400:]}"})
    ok = [r for r in runs if "it_per_s" in r]
    return {"copies": copies, "aggregate_it_per_s": sum(r["it_per_s"] for r in ok) if len(ok) == copies else None,
            "trials": runs}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    res = {"device": args.device, "steps": args.steps, "meta_batch": args.meta_batch, "seconds": args.seconds,
           "single": launch(args, 1), "packed": launch(args, args.copies)}
    one, many = res["single"]["aggregate_it_per_s"], res["packed"]["aggregate_it_per_s"]
    print(f"# packing: compiled sine MAML trials ({args.steps} inner steps, meta-batch {args.meta_batch}, 1 thread "
          f"each) on {args.device}, {args.seconds:g} s timed per trial")
    for label, r in (("1 trial alone", res["single"]), (f"{args.copies} trials packed", res["packed"])):
        per = ", ".join(f"{t['it_per_s']:.1f}" if "it_per_s" in t else t.get("error", "?") for t in r["trials"])
        agg = f"{r['aggregate_it_per_s']:.1f}" if r["aggregate_it_per_s"] is not None else "failed"
        print(f"{label:18s}: aggregate {agg} it/s (per trial: {per})")
    if one and many:
        print(f"packed / alone aggregate: {many / one:.2f}x with {args.copies} trials")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if one and many else 1


if __name__ == "__main__":
    sys.exit(main())
