"""Every registered learner, eager vs compiled: one outer step = meta-gradient + Adam update.

Sine case (default): ``Sine(protocol="metasgd", shots=10)`` (10 query points), the task's default
MLP 1-40-40-1 ReLU, meta-batch 4, each learner's default hyperparameters, 1 thread, at 1 and 5
inner steps. Both run the Trainer's step, ``metatune.engine.train_step(learner, adam,
compile=...)`` with the Trainer's Adam (torch's fused kernel, else foreach): ``eager`` is the
meta-gradient then ``adam.step()``, ``compiled`` one graph holding both. Both get the numeric
settings as the Trainer passes them (``hp = learner.runtime_hparams(dtype=, device=)`` once,
``fn(meta, batch, noise, hp)`` per step).
Exceptions, marked in the table's "setting" column:

* ``pamela`` runs only where ``inner_steps >= skip_width`` (default 2): with fewer steps it has no
  skip connection and is per-step Meta-SGD, so its 1-step cell is reported as n/a;
* ``cxgrad`` needs a conv backbone with batch norm, so it cannot run on sine: it runs on its
  smallest valid conv setting, the learner contract's (2-way 1-shot digits, 2 query per class,
  conv4 with 2 blocks of 4 filters, no conv bias, context_dim 6, context_hidden 5).

``--conv4`` adds the image case: conv4 (4 blocks of 64 filters, batch norm, max-pool) on
synthetic 84x84x3 episodes (random images; only speed matters), 5-way 5-shot with 15 query
images per class, 5 inner steps, meta-batch 4, for maml, metasgd, pamela and cxgrad, reported as
milliseconds per task (one outer step / meta-batch). It is on by default on CUDA and off on CPU
(slow there); ``--conv4-size 16`` shrinks the images for a CPU smoke run (``--conv4-steps``:
5, 2 with ``--quick``).

Each cell: a first call (for ``compiled`` the compilation: column "compile s", with the graphs it
built and how many came from the persistent cache), ``--warmup`` more steps, then ``--repeats``
timings of ``--iterations`` steps, eager and compiled interleaved, the fastest reported. A pool
of 8 batches (with their inner-loop noise) is sampled up front and cycled. "grad err" is the
largest relative difference of the compiled meta-gradient (``meta_gradient(learner,
compile=True)``, a graph of its own, built after the timed first call) from the eager one on the
first batch.
By default compilation starts from a fresh, empty cache (cold; the first compilation of the
process also pays Inductor's one-time start-up); ``--warm-cache`` (implied by ``--quick``) uses
metatune's persistent cache.

    python benchmarks/learners.py                                  # every learner, 1 and 5 steps
    python benchmarks/learners.py --quick --learners maml,metasgd  # smoke test
    python benchmarks/learners.py --conv4 only --conv4-size 16     # conv4 case, CPU smoke
    python benchmarks/learners.py --device cuda --conv4 only       # conv4 ms/task on the GPU
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    ROOT,
    cpu_model,
    drop_compile_cache,
    setup_compile_cache,
    sync,
    trainer_adam,
    write_json,
)

SINE = {"name": "sine", "protocol": "metasgd", "shots": 10}
CXGRAD_SMALL = {  # tests/reference_extra.py's contract setting
    "task": {"name": "digits", "ways": 2, "shots": 1, "query": 2},
    "model": {"name": "conv4", "channels": 4, "blocks": 2, "conv_bias": False},
    "hparams": {"context_dim": 6, "context_hidden": 5},
}
CONV4_LEARNERS = ("maml", "metasgd", "pamela", "cxgrad")
OUTER_LR = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learners", default=None, help="comma list of registered learners (default: all)")
    p.add_argument("--steps", default=None, help="comma list of inner-step counts, sine case (default '1,5'; '1' with --quick)")
    p.add_argument("--iterations", type=int, default=None, help="timed steps per repeat (default 100; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, fastest reported (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first call (default 3; 1 with --quick)")
    p.add_argument("--meta-batch", type=int, default=4, help="tasks per outer step (default 4)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--conv4", nargs="?", const="on", default="auto", choices=("auto", "on", "off", "only"),
                   help="the conv4 84x84x3 case: on, off, only (no sine case); default auto = on for cuda only")
    p.add_argument("--conv4-size", type=int, default=84, help="image side of the conv4 case (default 84)")
    p.add_argument("--conv4-steps", type=int, default=None, help="inner steps of the conv4 case (default 5; 2 with --quick)")
    p.add_argument("--conv4-iterations", type=int, default=None,
                   help="timed steps per repeat in the conv4 case (default 20; 2 with --quick)")
    p.add_argument("--eager-only", default="",
                   help="comma list of learners timed eager only (no compilation; e.g. where it would not fit a budget)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 inner step, tiny counts, the persistent cache")
    p.add_argument("--warm-cache", action="store_true",
                   help="use metatune's persistent compile cache (default without --quick: a fresh, cold one)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    q = args.quick
    args.warm_cache = args.warm_cache or q
    args.iterations = args.iterations or (3 if q else 100)
    args.conv4_iterations = args.conv4_iterations or (2 if q else 20)
    args.conv4_steps = args.conv4_steps or (2 if q else 5)
    args.repeats = args.repeats or (1 if q else 3)
    args.warmup = (1 if q else 3) if args.warmup is None else args.warmup
    args.steps = [int(s) for s in (args.steps or ("1" if q else "1,5")).split(",")]
    args.eager_only = {n.strip() for n in args.eager_only.split(",") if n.strip()}
    if args.conv4 == "auto":
        args.conv4 = "on" if args.device == "cuda" else "off"
    return args


# --------------------------------------------------------------------------- settings
def synthetic_images_task():
    """A TaskDistribution of random N-way K-shot image episodes (classification loss)."""
    import torch

    from metatune.tasks import TaskBatch, TaskDistribution

    @dataclass(frozen=True, kw_only=True)
    class SyntheticImages(TaskDistribution):
        name: ClassVar[str] = "synthetic_images"
        problem: ClassVar[str] = "classification"
        ways: int = 5
        shots: int = 5
        query: int = 15
        size: int = 84
        channels: int = 3

        @property
        def input_shape(self) -> tuple[int, ...]:
            return (self.channels, self.size, self.size)

        @property
        def output_dim(self) -> int:
            return self.ways

        def sample(self, num_tasks, *, generator, shots=None, split="train"):
            k = self.shots if shots is None else shots

            def part(n: int):
                x = torch.randn((num_tasks, self.ways * n, *self.input_shape), generator=generator)
                y = torch.arange(self.ways).repeat_interleave(n).expand(num_tasks, -1).contiguous()
                return x, y

            return TaskBatch(*part(k), *part(self.query))

    return SyntheticImages


def build(name: str, steps: int, case: str, args: argparse.Namespace):
    """(learner, task, setting description) or (None, None, reason it does not run)."""
    from metatune.config import parse_config
    from metatune.learners import LEARNERS
    from metatune.models import build_backbone

    cls = LEARNERS.get(name)
    width = cls.declared().get("skip_width")
    if width is not None and steps < width.default:
        return None, None, f"n/a: needs inner_steps >= skip_width ({width.default})"
    if case == "conv4":
        task = synthetic_images_task()(size=args.conv4_size)
        backbone = build_backbone({"name": "conv4", "channels": 64}, input_shape=task.input_shape,
                                  output_dim=task.output_dim)
        learner = cls(backbone=backbone, task=task, inner_steps=steps)  # validated by the learner's config
        return learner, task, f"conv4 64ch, {args.conv4_size}x{args.conv4_size}x3, 5-way 5-shot, 15 query"
    if cls.requires_batchnorm:
        s = CXGRAD_SMALL
        setting = "not sine (needs batch norm): digits 2-way 1-shot, conv4 2x4ch"
    else:
        s = {"task": SINE, "model": None, "hparams": {}}
        setting = "sine, MLP 40-40"
    comp = parse_config({"seed": args.seed, "task": s["task"], "model": s["model"],
                         "learner": {"name": name, **s["hparams"], "inner_steps": steps}})
    return comp.learner, comp.task, setting


# --------------------------------------------------------------------------- measuring
def prepare(learner, task, device: str, compile: bool, batches, init) -> dict:
    import torch

    from metatune.engine import COMPILE_STATS, meta_gradient, train_step

    meta = {k: v.clone().requires_grad_() for k, v in init.items()}
    opt = trainer_adam(list(meta.values()), OUTER_LR)
    hp = learner.runtime_hparams(dtype=torch.float32, device=device)
    fn = train_step(learner, opt, compile=compile)  # the Trainer's step (compiled: one graph with Adam)

    def step(i: int) -> None:
        batch, noise = batches[i % len(batches)]
        fn(meta, batch, noise, hp)

    before = COMPILE_STATS.snapshot()
    sync(device)
    t0 = time.perf_counter()
    step(0)
    sync(device)
    first = time.perf_counter() - t0
    # The gradient check, on the first batch (the compiled meta-gradient is a graph of its own).
    _, g, _ = meta_gradient(learner, compile=compile)({k: v.clone().requires_grad_() for k, v in init.items()},
                                                      *batches[0], hp)
    return {"step": step, "grads": {k: v.detach().clone() for k, v in g.items()}, "first_call_s": first,
            **COMPILE_STATS.since(before)}


def time_once(r: dict, n: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for i in range(n):
        r["step"](i)
    sync(device)
    return time.perf_counter() - t0


def run_cell(name: str, steps: int, case: str, args: argparse.Namespace) -> dict:
    import torch

    learner, task, setting = build(name, steps, case, args)
    row = {"learner": name, "case": case, "steps": steps, "setting": setting, "meta_batch": args.meta_batch}
    if learner is None:
        return row
    print(f"  {case} {name:10s} steps={steps}: first calls (compiling) ...", file=sys.stderr, flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    init = {k: v.to(args.device) for k, v in learner.init_meta_params(generator=gen).items()}
    batches = []
    for _ in range(8):
        batch = task.sample(args.meta_batch, generator=gen).to(device=args.device)
        noise = learner.sample_noise(args.meta_batch, generator=gen, meta_params=init, steps=steps, training=True)
        batches.append((batch, {k: v.to(args.device) for k, v in noise.items()}))
    modes = ("eager",) if name in args.eager_only else ("eager", "compiled")
    ways = {m: prepare(learner, task, args.device, m == "compiled", batches, init) for m in modes}
    row["grad_rel_err"] = None
    if "compiled" in ways:
        e, c = ways["eager"]["grads"], ways["compiled"]["grads"]
        row["grad_rel_err"] = max(((c[k] - e[k]).abs().max() / e[k].abs().max().clamp_min(1e-30)).item() for k in e)
    n = args.conv4_iterations if case == "conv4" else args.iterations
    for r in ways.values():
        for i in range(args.warmup):
            r["step"](i)
    times: dict[str, list[float]] = {m: [] for m in ways}
    for _ in range(args.repeats):  # interleaved: both see the same spells of load
        for m, r in ways.items():
            times[m].append(time_once(r, n, args.device))
    for m, r in ways.items():
        best = min(times[m])
        row[m] = {"it_per_s": n / best, "ms_per_task": 1000 * best / n / args.meta_batch,
                  "it_per_s_repeats": [n / t for t in times[m]], "first_call_s": r["first_call_s"],
                  "compile_graphs": r["compile_graphs"], "compile_cache_hits": r["compile_cache_hits"]}
    row["iterations"] = n
    row.setdefault("compiled", None)
    row["compiled_over_eager"] = row["compiled"]["it_per_s"] / row["eager"]["it_per_s"] if row["compiled"] else None
    done = (f"compiled {row['compiled']['it_per_s']:8.1f} it/s  compile {row['compiled']['first_call_s']:.1f} s"
            if row["compiled"] else "compiled not run (--eager-only)")
    print(f"  {case} {name:10s} steps={steps} eager {row['eager']['it_per_s']:8.1f} it/s  {done}",
          file=sys.stderr, flush=True)
    return row


def run(args: argparse.Namespace) -> dict:
    import torch

    from metatune.learners import LEARNERS

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device available")
    torch.set_num_threads(args.threads)
    names = [n.strip() for n in args.learners.split(",")] if args.learners else LEARNERS.names()
    for n in names:
        LEARNERS.get(n)  # an unknown name fails here, listing the registered ones
    rows = []
    if args.conv4 != "only":
        rows += [run_cell(n, s, "sine", args) for n in names for s in args.steps]
    if args.conv4 in ("on", "only"):
        conv = [n for n in CONV4_LEARNERS if n in names] if args.learners else list(CONV4_LEARNERS)
        rows += [run_cell(n, args.conv4_steps, "conv4", args) for n in conv]
    return {"meta": environment(args), "results": rows}


def environment(args: argparse.Namespace) -> dict:
    import torch

    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "processor": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads, "device": args.device,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "compile_cache": "persistent (may be warm)" if args.warm_cache else "fresh (cold)",
        "iterations": args.iterations, "conv4_iterations": args.conv4_iterations, "conv4_steps": args.conv4_steps, "repeats": args.repeats,
        "warmup": args.warmup, "meta_batch": args.meta_batch, "outer": f"Adam(lr={OUTER_LR})", "dtype": "float32",
    }


# --------------------------------------------------------------------------- reporting
def sine_table(rows: list[dict]) -> str:
    out = ["| learner | steps | eager it/s | compiled it/s | compiled / eager | compile s | graphs (cache hits) "
           "| grad err | setting |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "eager" not in r:
            out.append(f"| {r['learner']} | {r['steps']} | - | - | - | - | - | - | {r['setting']} |")
            continue
        e, c = r["eager"], r["compiled"]
        comp = (f"{c['it_per_s']:.1f} | {r['compiled_over_eager']:.2f} | {c['first_call_s']:.1f} | "
                f"{c['compile_graphs']} ({c['compile_cache_hits']}) | {r['grad_rel_err']:.1e}" if c else
                "not run | - | - | - | -")
        out.append(f"| {r['learner']} | {r['steps']} | {e['it_per_s']:.1f} | {comp} | {r['setting']} |")
    return "\n".join(out)


def conv4_table(rows: list[dict]) -> str:
    out = ["| learner | steps | eager ms/task | compiled ms/task | compiled / eager (speed) | compile s | grad err |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "eager" not in r:
            out.append(f"| {r['learner']} | {r['steps']} | - | - | - | - | {r['setting']} |")
            continue
        e, c = r["eager"], r["compiled"]
        comp = (f"{c['ms_per_task']:.2f} | {r['compiled_over_eager']:.2f} | {c['first_call_s']:.1f} | "
                f"{r['grad_rel_err']:.1e}" if c else "not run | - | - | -")
        out.append(f"| {r['learner']} | {r['steps']} | {e['ms_per_task']:.2f} | {comp} |")
    by = {r["learner"]: r for r in rows if "eager" in r}
    if "maml" in by and "pamela" in by:
        out.append("")
        for m in ("eager", "compiled"):
            if by["pamela"][m] and by["maml"][m]:
                ratio = by["pamela"][m]["ms_per_task"] / by["maml"][m]["ms_per_task"]
                out.append(f"pamela / maml time per task, {m}: {ratio:.3f}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = setup_compile_cache(args.warm_cache)  # before anything compiles
    sys.path.insert(0, str(ROOT))
    try:
        res = run(args)
    finally:
        drop_compile_cache(cache)
    m = res["meta"]
    print(f"# metatune learners, eager vs compiled | torch {m['torch']}, Python {m['python']} | {m['device']}"
          f" ({m['cuda'] or m['processor']}), {m['threads']} thread(s), {m['cpu_count']} CPUs | {m['date']}")
    print(f"# meta-batch {m['meta_batch']}, {m['outer']}, {m['dtype']} | compile cache: {m['compile_cache']} | "
          f"best of {m['repeats']} repeats of {m['iterations']} steps (conv4: {m['conv4_iterations']})")
    sine = [r for r in res["results"] if r["case"] == "sine"]
    conv = [r for r in res["results"] if r["case"] == "conv4"]
    if sine:
        print("\n## Sine(protocol='metasgd', shots=10), default MLP 1-40-40-1, one outer step\n")
        print(sine_table(sine))
    if conv:
        print(f"\n## conv4 (64 filters), synthetic {args.conv4_size}x{args.conv4_size}x3, 5-way 5-shot, "
              f"15 query, {args.conv4_steps} inner steps, meta-batch {args.meta_batch}: ms per task\n")
        print(conv4_table(conv))
    if args.json is not None:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
