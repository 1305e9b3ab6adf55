"""Meta-training throughput on sine regression: per-task loop vs ``higher`` vs metatune vs a hand-written ceiling.

One outer step = the meta-gradient of a meta-batch of 25 sine tasks (``Sine(protocol="maml",
shots=10)``, 1-40-40-1 ReLU MLP, plain SGD inner loop with rate 0.01) plus an Adam update of the
meta-parameters. Five implementations of that step, on the same initial parameters and batches:

* ``loop``     -- a Python loop over tasks with ``torch.autograd.grad(create_graph=not first_order)``
  on the functional backbone (``MLP.apply``); the reference every ratio is taken against;
* ``higher``   -- ``higher.innerloop_ctx`` (higher 0.2.1) around an ``nn.Sequential`` copy of the
  same MLP with an SGD inner optimiser, ``track_higher_grads`` = second order (first order takes
  the query gradient at the adapted weights, as FOMAML does with higher);
* ``vmap``     -- ``metatune.engine.meta_gradient(learner)``: every task at once (vmap + grad);
* ``reference`` -- a minimal hand-written compiled torch.func MAML (benchmarks/_reference_maml.py,
  no metatune inside): the ceiling ``compiled`` is compared with (column "x ref", and the
  "compiled / reference" lines per cell);
* ``compiled`` -- ``meta_gradient(learner, compile=True)``: the same, ``torch.compile``'d.
The metatune methods get the hyperparameters as the Trainer passes them: ``hp =
learner.runtime_hparams(dtype=, device=)`` once, then ``fn(meta, batch, {}, hp)`` per step.

Each measurement: a first call (for ``compiled`` the compilation; reported as "first call"),
``--warmup`` more calls, then ``--repeats`` timings of ``--iterations`` outer steps each, of
which the fastest is reported (the machines this runs on are shared; the repeats of the
methods are interleaved so that each sees the same spells of load); ``--max-seconds`` lowers
the count for slow methods (column "iters"). Batches are sampled up front (a pool of 8,
cycled), so task sampling is not timed. Before timing, each method's gradient on the first
batch is compared with the loop's (column "grad err": max relative error). ``--runs N`` repeats
the whole comparison N times in one process (graphs compiled in run 1 are reused) and prints
the compiled / reference ratio of every cell per run.

Peak memory ("peak MiB"): on CUDA ``torch.cuda.max_memory_allocated`` over the method's first
call and warm-up, less what was allocated before (reset per method); on CPU, with ``--memory``,
the growth of the peak RSS (VmHWM) of a fresh child process running that method's first call,
warm-up and 20 steps, over its RSS after setup (about 5 s per method and cell, so optional).

By default Inductor compiles into a fresh, temporary cache, so "first call" of ``compiled`` is a
cold compilation; ``--warm-cache`` (implied by ``--quick``) uses the user's cache instead.

    python benchmarks/throughput.py                          # 1 thread and all cores, CPU
    python benchmarks/throughput.py --device cpu,cuda        # also on the GPU
    python benchmarks/throughput.py --quick                  # smoke test (under a minute)
    python benchmarks/throughput.py --threads 1 --methods loop,reference,compiled --runs 3
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("loop", "higher", "vmap", "reference", "compiled")
INNER_LR = 0.01
OUTER_LR = 1e-3
META_BATCH = 25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=None, help="timed outer steps per repeat (default 100; 3 with --quick)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats, fastest reported (default 3; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after the first call (default 3; 1 with --quick)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="cap one repeat at about this long: fewer iterations (at least 3) for slow methods, "
                        "estimated from the warm-up; the count used is reported (default: no cap)")
    p.add_argument("--threads", default=None, help="comma list of thread counts, 'all' = every core (default '1,all'; '1' with --quick)")
    p.add_argument("--device", default="cpu", help="comma list of cpu, cuda; 'auto' = cpu and cuda if available (default cpu)")
    p.add_argument("--steps", default=None, help="comma list of inner-step counts (default '1,5'; '1' with --quick)")
    p.add_argument("--orders", default="second,first", help="comma list of second, first (default both)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--meta-batch", type=int, default=META_BATCH, help=f"tasks per outer step (default {META_BATCH})")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: tiny counts, 1 thread, 1 inner step, the user's Inductor cache")
    p.add_argument("--warm-cache", action="store_true",
                   help="use the user's Inductor cache (default without --quick: a fresh, cold one)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=1, help="repeat the whole comparison this many times in one process")
    p.add_argument("--memory", action="store_true",
                   help="CPU: also measure each method's peak RSS growth in a fresh child process (CUDA: always)")
    p.add_argument("--ratio-target", type=float, default=0.95,
                   help="compiled / reference ratio every cell should reach (summary line; default 0.95)")
    p.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)  # internal: one method, one cell
    args = p.parse_args(argv)
    q = args.quick
    args.warm_cache = args.warm_cache or q
    args.iterations = args.iterations or (3 if q else 100)
    args.repeats = args.repeats or (1 if q else 3)
    args.warmup = (1 if q else 3) if args.warmup is None else args.warmup
    args.threads = args.threads or ("1" if q else "1,all")
    args.steps = [int(s) for s in (args.steps or ("1" if q else "1,5")).split(",")]
    args.orders = [o.strip() for o in args.orders.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",")]
    for o in args.orders:
        if o not in ("second", "first"):
            p.error(f"--orders: unknown order {o!r}")
    for m in args.methods:
        if m not in METHODS:
            p.error(f"--methods: unknown method {m!r}")
    if args.runs < 1:
        p.error("--runs: expected at least 1")
    args.methods = ["loop"] + [m for m in args.methods if m != "loop"]  # the reference of every ratio
    return args


# --------------------------------------------------------------------------- setup
def resolve_threads(spec: str) -> list[int]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out = []
    for s in spec.split(","):
        n = cores if s.strip() == "all" else int(s)
        if n not in out:
            out.append(n)
    return out


def resolve_devices(spec: str) -> list[str]:
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


class Setup:
    """Learner, initial meta-parameters and a pool of batches shared by the four methods."""

    def __init__(self, steps: int, first_order: bool, device: str, meta_batch: int, seed: int) -> None:
        import torch

        from metatune.learners import MAML
        from metatune.models import MLP
        from metatune.tasks import Sine

        self.steps, self.first_order, self.device = steps, first_order, device
        self.task = Sine(protocol="maml", shots=10)
        self.backbone = MLP(hidden=(40, 40), activation="relu")
        self.learner = MAML(
            backbone=self.backbone, task=self.task, inner_lr=INNER_LR, inner_steps=steps, first_order=first_order
        )
        gen = torch.Generator().manual_seed(seed)
        self.init = {k: v.to(device) for k, v in self.learner.init_meta_params(generator=gen).items()}
        self.batches = [self.task.sample(meta_batch, generator=gen).to(device=device) for _ in range(8)]

    def fresh_meta(self):
        return {k: v.clone().requires_grad_() for k, v in self.init.items()}


# --------------------------------------------------------------------------- the methods
# Each builder returns (step, grads): step(batch) does one outer step including the Adam update;
# grads(batch) returns the meta-gradient (ordered like Setup.init) without updating anything.
def build_loop(s: Setup):
    import torch

    meta = s.fresh_meta()
    keys = list(meta)
    opt = torch.optim.Adam(list(meta.values()), lr=OUTER_LR)
    apply, loss_fn = s.backbone.apply, s.task.loss

    def grads(batch):
        total = 0.0
        for i in range(batch.num_tasks):
            fast = dict(meta)
            for _ in range(s.steps):
                loss = loss_fn(apply(fast, batch.support_x[i]), batch.support_y[i])
                gs = torch.autograd.grad(loss, [fast[k] for k in keys], create_graph=not s.first_order)
                fast = {k: fast[k] - INNER_LR * g for k, g in zip(keys, gs)}
            total = total + loss_fn(apply(fast, batch.query_x[i]), batch.query_y[i])
        return torch.autograd.grad(total / batch.num_tasks, [meta[k] for k in keys])

    def step(batch):
        for p, g in zip(meta.values(), grads(batch)):
            p.grad = g
        opt.step()

    return step, grads


def build_higher(s: Setup):
    import higher
    import torch
    from torch import nn
    from torch.nn import functional as F

    widths = [1, *s.backbone.hidden, 1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).to(s.device)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, cell in zip(linears, s.backbone.cells):
            lin.weight.copy_(s.init[f"{cell.name}.weight"])
            lin.bias.copy_(s.init[f"{cell.name}.bias"])
    params = [p for lin in linears for p in (lin.weight, lin.bias)]  # ordered like Setup.init
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)

    def accumulate(batch):
        for p in params:
            p.grad = None
        n = batch.num_tasks
        for i in range(n):
            with higher.innerloop_ctx(
                model, inner_opt, copy_initial_weights=False, track_higher_grads=not s.first_order
            ) as (fmodel, diffopt):
                for _ in range(s.steps):
                    diffopt.step(F.mse_loss(fmodel(batch.support_x[i]), batch.support_y[i]))
                query = F.mse_loss(fmodel(batch.query_x[i]), batch.query_y[i]) / n
                if s.first_order:
                    # Without higher grads the adapted weights are fresh leaves: FOMAML applies
                    # the query gradient at them to the initial weights.
                    fast = list(fmodel.parameters())
                    for p, g in zip(model.parameters(), torch.autograd.grad(query, fast)):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    query.backward()

    def grads(batch):
        accumulate(batch)
        out = tuple(p.grad.clone() for p in params)
        opt.zero_grad(set_to_none=True)
        return out

    def step(batch):
        accumulate(batch)
        opt.step()

    return step, grads


def _build_metatune(s: Setup, compile: bool):
    import torch

    from metatune.engine import meta_gradient

    meta = s.fresh_meta()
    opt = torch.optim.Adam(list(meta.values()), lr=OUTER_LR)
    fn = meta_gradient(s.learner, compile=compile)
    # As the Trainer does: the numeric settings as tensors, built once, passed to every call.
    ref = next(iter(meta.values()))
    hp = s.learner.runtime_hparams(dtype=ref.dtype, device=ref.device)

    def grads(batch):
        _, g, _ = fn(meta, batch, {}, hp)
        return tuple(g[k] for k in meta)

    def step(batch):
        _, g, _ = fn(meta, batch, {}, hp)
        for k, p in meta.items():
            p.grad = g[k]
        opt.step()

    return step, grads, fn


def build_vmap(s: Setup):
    step, grads, _ = _build_metatune(s, compile=False)
    return step, grads


def build_compiled(s: Setup):
    step, grads, fn = _build_metatune(s, compile=True)
    return step, grads, fn


def build_reference(s: Setup):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _reference_maml import compiled_maml_step

    meta = s.fresh_meta()
    keys = tuple(meta)
    assert [k.rsplit(".", 1)[1] for k in keys] == ["weight", "bias"] * (len(keys) // 2), keys
    opt = torch.optim.Adam(list(meta.values()), lr=OUTER_LR)
    fn = compiled_maml_step(keys, s.steps, INNER_LR, s.first_order)

    def grads(batch):
        _, g = fn({k: v.detach() for k, v in meta.items()}, batch.support_x, batch.support_y,
                  batch.query_x, batch.query_y)
        return tuple(g[k] for k in keys)

    def step(batch):
        for p, g in zip(meta.values(), grads(batch)):
            p.grad = g
        opt.step()

    return step, grads


BUILDERS = {"loop": build_loop, "higher": build_higher, "vmap": build_vmap, "reference": build_reference,
            "compiled": build_compiled}


# --------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def prepare(method: str, s: Setup, args: argparse.Namespace, ref_grads) -> dict:
    """Build ``method``, make its first call (for ``compiled`` the compilation), check its
    gradient against the loop's, warm it up and fix its timed iteration count."""
    import torch

    cuda = s.device == "cuda"
    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    built = BUILDERS[method](s)
    step, grads = built[0], built[1]
    batches = s.batches
    sync(s.device)
    t0 = time.perf_counter()
    g = grads(batches[0])
    sync(s.device)
    first_call = time.perf_counter() - t0
    if ref_grads is None:
        ref_grads = g
    err = max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(g, ref_grads))
    fell_back = bool(method == "compiled" and getattr(built[2], "failed", False))
    sync(s.device)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    sync(s.device)
    iterations = args.iterations
    if args.max_seconds is not None and args.warmup:
        per_step = (time.perf_counter() - t0) / args.warmup
        iterations = max(3, min(iterations, int(args.max_seconds / max(per_step, 1e-9))))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return {
        "method": method, "first_call_s": first_call, "grad_rel_err_vs_loop": err, "iterations": iterations,
        "compile_fell_back": fell_back, "peak_mib": peak, "peak_what": "cuda max_memory_allocated" if cuda else None,
        "_step": step, "_grads": g,
    }


def time_once(r: dict, s: Setup) -> float:
    step, batches = r["_step"], s.batches
    sync(s.device)
    t0 = time.perf_counter()
    for i in range(r["iterations"]):
        step(batches[i % len(batches)])
    sync(s.device)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict:
    import torch

    results = []
    devices = resolve_devices(args.device)
    threads = resolve_threads(args.threads)
    default_threads = torch.get_num_threads()
    for device in devices:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for steps in args.steps:
                for order in args.orders:
                    s = Setup(steps, order == "first", device, args.meta_batch, args.seed)
                    rows: list[dict] = []
                    for method in args.methods:  # "loop" first: the reference gradient
                        rows.append(prepare(method, s, args, rows[0]["_grads"] if rows else None))
                    # Repeats interleave the methods, so each sees the same spells of load.
                    times: dict[str, list[float]] = {r["method"]: [] for r in rows}
                    for _ in range(args.repeats):
                        for r in rows:
                            times[r["method"]].append(time_once(r, s))
                    for r in rows:
                        del r["_step"], r["_grads"]
                        t = times[r["method"]]
                        r.update(
                            device=device, threads=n_threads, steps=steps, order=order, seconds=min(t),
                            it_per_s=r["iterations"] / min(t), it_per_s_repeats=[r["iterations"] / x for x in t],
                        )
                        print(f"  {device} threads={n_threads} steps={steps} {order:6s} {r['method']:8s} "
                              f"{r['it_per_s']:9.1f} it/s", file=sys.stderr, flush=True)
                    loop = rows[0]
                    for r in rows:
                        r["ratio_vs_loop"] = r["it_per_s"] / loop["it_per_s"]
                    results.extend(rows)
    torch.set_num_threads(default_threads)
    return {"meta": environment(args, default_threads), "results": results}


def environment(args: argparse.Namespace, default_threads: int) -> dict:
    import torch

    try:
        higher_version = importlib.metadata.version("higher")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        higher_version = None
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(), "torch": torch.__version__, "higher": higher_version,
        "platform": platform.platform(), "processor": _cpu_model(),
        "cpu_count": os.cpu_count(), "torch_default_threads": default_threads,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "inductor_cache": "user's (may be warm)" if args.warm_cache else "fresh (cold)",
        "setup": {
            "task": "Sine(protocol='maml', shots=10)", "model": "MLP 1-40-40-1 relu", "meta_batch": args.meta_batch,
            "inner_lr": INNER_LR, "outer": f"Adam(lr={OUTER_LR})", "dtype": "float32",
            "iterations": args.iterations, "max_seconds": args.max_seconds, "repeats": args.repeats,
            "warmup": args.warmup,
        },
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(res: dict) -> str:
    rows = res["results"]
    head = (f"{'device':6s} {'threads':>7s} {'steps':>5s} {'order':6s} {'method':8s} {'it/s':>9s} "
            f"{'x loop':>7s} {'first call s':>12s} {'grad err':>9s} {'iters':>5s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        note = "  (compile failed: uncompiled)" if r["compile_fell_back"] else ""
        lines.append(
            f"{r['device']:6s} {r['threads']:>7d} {r['steps']:>5d} {r['order']:6s} {r['method']:8s} "
            f"{r['it_per_s']:9.1f} {r['ratio_vs_loop']:7.2f} {r['first_call_s']:12.2f} "
            f"{r['grad_rel_err_vs_loop']:9.1e} {r['iterations']:5d}{note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = None
    if not args.warm_cache:
        # Before torch is imported: every compilation below starts from an empty cache.
        cache = tempfile.mkdtemp(prefix="metatune-bench-inductor-")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        res = run(args)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    m = res["meta"]
    print(f"# metatune throughput: {m['setup']['task']}, {m['setup']['model']}, meta-batch {m['setup']['meta_batch']}, "
          f"{m['setup']['outer']} | torch {m['torch']}, higher {m['higher']}, Python {m['python']}")
    print(f"# {m['processor']}, {m['cpu_count']} CPUs | {m['date']} | inductor cache: {m['inductor_cache']} | "
          f"best of {args.repeats} repeats of {args.iterations} iterations"
          + (f" (fewer where one repeat would exceed {args.max_seconds:g} s)" if args.max_seconds else ""))
    print(table(res))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
