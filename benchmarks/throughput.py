"""Meta-training throughput on sine regression: per-task loop, ``higher``, metatune, a hand-written ceiling.

One outer step = the meta-gradient of a meta-batch of 25 sine tasks (``Sine(protocol="maml",
shots=10)``, 1-40-40-1 ReLU MLP, plain SGD inner loop with rate 0.01) plus an Adam update of the
meta-parameters. Five implementations of that step, on the same initial parameters and batches:

* ``loop``     -- a Python loop over tasks with ``torch.autograd.grad(create_graph=not first_order)``
  on the functional backbone (``MLP.apply``); the reference every ratio is taken against;
* ``higher``   -- ``higher.innerloop_ctx`` (higher 0.2.1) around an ``nn.Sequential`` copy of the
  same MLP with an SGD inner optimiser, ``track_higher_grads`` = second order (first order takes
  the query gradient at the adapted weights, as FOMAML does with higher);
* ``vmap``     -- ``metatune.engine.train_step(learner, adam)``, the Trainer's step uncompiled:
  every task at once (vmap + grad), then ``adam.step()``;
* ``reference`` -- a minimal hand-written compiled torch.func MAML (benchmarks/_reference_maml.py,
  no metatune inside): the ceiling ``compiled`` is compared with (column "x ref", and the
  "compiled / reference" lines per cell);
* ``compiled`` -- ``train_step(learner, adam, compile=True)``, the Trainer's default: the
  meta-gradient and the Adam update in one ``torch.compile``'d graph.

``vmap`` and ``compiled`` get the numeric settings as the Trainer passes them: ``hp =
learner.runtime_hparams(dtype=, device=)`` once, then ``fn(meta, batch, {}, hp)`` every step.
Every method's Adam is the Trainer's (torch's fused kernel, else foreach): a separate
``adam.step()`` after the gradient for all but ``compiled``, where it is inside the graph.

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
warm-up and 20 steps, over its RSS after setup (about 5 s per method and cell, so optional; the
JSON also has ``steady_peak_mib``: the growth over 20 more steps, once everything is resident).
For the compiled methods the first call includes compilation, in both cases.

By default everything compiles into a fresh, temporary cache, so "first call" of ``compiled`` and
``reference`` is a cold compilation; ``--warm-cache`` (implied by ``--quick``) uses metatune's
persistent compile cache (``$METATUNE_COMPILE_CACHE``) instead.

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
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    cpu_model,
    drop_compile_cache,
    proc_status_kib,
    resolve_devices,
    resolve_threads,
    setup_compile_cache,
    sync,
    trainer_adam,
    write_json,
)

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
                   help="smoke test: tiny counts, 1 thread, 1 inner step, the persistent compile cache")
    p.add_argument("--warm-cache", action="store_true",
                   help="use metatune's persistent compile cache (default without --quick: a fresh, cold one)")
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
class Setup:
    """Learner, initial meta-parameters and a pool of batches shared by the methods."""

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
    opt = trainer_adam(list(meta.values()), OUTER_LR)
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
    opt = trainer_adam(list(model.parameters()), OUTER_LR)

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
    from metatune.engine import meta_gradient, train_step

    meta = s.fresh_meta()
    opt = trainer_adam(list(meta.values()), OUTER_LR)
    # The Trainer's step: with compile, the meta-gradient and the Adam update are one graph.
    fn = train_step(s.learner, opt, compile=compile)
    gradient = meta_gradient(s.learner, compile=compile)
    # As the Trainer does: the numeric settings as tensors, built once, passed to every call.
    ref = next(iter(meta.values()))
    hp = s.learner.runtime_hparams(dtype=ref.dtype, device=ref.device)

    def grads(batch):
        _, g, _ = gradient(meta, batch, {}, hp)
        return tuple(g[k] for k in meta)

    def step(batch):
        fn(meta, batch, {}, hp)

    return step, grads, gradient


def build_vmap(s: Setup):
    step, grads, _ = _build_metatune(s, compile=False)
    return step, grads


def build_compiled(s: Setup):
    step, grads, fn = _build_metatune(s, compile=True)
    return step, grads, fn


def build_reference(s: Setup):
    from _reference_maml import compiled_maml_step

    meta = s.fresh_meta()
    keys = tuple(meta)
    assert [k.rsplit(".", 1)[1] for k in keys] == ["weight", "bias"] * (len(keys) // 2), keys
    opt = trainer_adam(list(meta.values()), OUTER_LR)
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


def run_cell(args: argparse.Namespace, device: str, n_threads: int, steps: int, order: str, run: int) -> list[dict]:
    """One cell: every method prepared, then the repeats interleaved; rows with it/s and ratios."""
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
            run=run, device=device, threads=n_threads, steps=steps, order=order, seconds=min(t),
            it_per_s=r["iterations"] / min(t), it_per_s_repeats=[r["iterations"] / x for x in t],
        )
        print(f"  run {run} {device} threads={n_threads} steps={steps} {order:6s} {r['method']:9s} "
              f"{r['it_per_s']:9.1f} it/s", file=sys.stderr, flush=True)
    by = {r["method"]: r for r in rows}
    for r in rows:
        r["ratio_vs_loop"] = r["it_per_s"] / by["loop"]["it_per_s"]
        r["ratio_vs_reference"] = r["it_per_s"] / by["reference"]["it_per_s"] if "reference" in by else None
    if args.memory and device == "cpu" and run == 1:
        for r in rows:
            got = child_peak_rss(args, r["method"], n_threads, steps, order)
            r.update(peak_mib=got.get("peak_rss_growth_mib"), peak_what="cpu rss growth",
                     steady_peak_mib=got.get("steady_rss_growth_mib"))
    return rows


def run(args: argparse.Namespace) -> dict:
    import torch

    results = []
    devices = resolve_devices(args.device)
    threads = resolve_threads(args.threads)
    default_threads = torch.get_num_threads()
    for run_index in range(1, args.runs + 1):
        for device in devices:
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                for steps in args.steps:
                    for order in args.orders:
                        results.extend(run_cell(args, device, n_threads, steps, order, run_index))
        if args.runs > 1 and "reference" in args.methods and "compiled" in args.methods:
            print(f"# run {run_index}/{args.runs}: " + ratio_summary(results, args, runs=[run_index])[1],
                  file=sys.stderr, flush=True)
    torch.set_num_threads(default_threads)
    return {"meta": environment(args, default_threads), "results": results}


# --------------------------------------------------------------------------- peak memory (CPU)
def memory_child(args: argparse.Namespace) -> int:
    """In a fresh process: set up one cell, then report how far one method's first call, warm-up
    and 20 steps raised the peak RSS above the RSS after setup, and how far 20 more steps raised
    it above the RSS after those (steady state) (MiB, JSON on stdout)."""
    import torch

    torch.set_num_threads(int(args.threads))
    s = Setup(args.steps[0], args.orders[0] == "first", "cpu", args.meta_batch, args.seed)
    try:  # writing 5 resets VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    base = proc_status_kib("VmRSS")["VmRSS"]
    step, grads = BUILDERS[args.memory_child](s)[:2]
    grads(s.batches[0])
    for i in range(max(args.warmup, 1) + 20):
        step(s.batches[i % len(s.batches)])
    peak = proc_status_kib("VmHWM")["VmHWM"]
    steady = None
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
        before = proc_status_kib("VmRSS")["VmRSS"]
        for i in range(20):
            step(s.batches[i % len(s.batches)])
        steady = (proc_status_kib("VmHWM")["VmHWM"] - before) / 1024
    print(json.dumps({"peak_rss_growth_mib": (peak - base) / 1024, "steady_rss_growth_mib": steady,
                      "hwm_reset": reset}))
    return 0


def child_peak_rss(args: argparse.Namespace, method: str, n_threads: int, steps: int, order: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", method, "--threads", str(n_threads),
           "--steps", str(steps), "--orders", order, "--meta-batch", str(args.meta_batch), "--seed", str(args.seed),
           "--warmup", str(args.warmup), "--warm-cache"]
    env = {**os.environ, "OMP_NUM_THREADS": str(n_threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        print(f"  memory child for {method} failed: {proc.stderr[-500:]}", file=sys.stderr)
        return {}


# --------------------------------------------------------------------------- reporting
def environment(args: argparse.Namespace, default_threads: int) -> dict:
    import torch

    try:
        higher_version = importlib.metadata.version("higher")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        higher_version = None
    return {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(), "torch": torch.__version__, "higher": higher_version,
        "platform": platform.platform(), "processor": cpu_model(),
        "cpu_count": os.cpu_count(), "torch_default_threads": default_threads,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "inductor_cache": "persistent (may be warm)" if args.warm_cache else "fresh (cold)",
        "setup": {
            "task": "Sine(protocol='maml', shots=10)", "model": "MLP 1-40-40-1 relu", "meta_batch": args.meta_batch,
            "inner_lr": INNER_LR, "outer": f"Adam(lr={OUTER_LR})", "dtype": "float32",
            "iterations": args.iterations, "max_seconds": args.max_seconds, "repeats": args.repeats,
            "warmup": args.warmup, "runs": args.runs,
        },
    }


def _cells(rows: list[dict]) -> list[tuple]:
    return list(dict.fromkeys((r["device"], r["threads"], r["steps"], r["order"]) for r in rows))


def ratio_summary(rows: list[dict], args: argparse.Namespace, runs: list[int]) -> tuple[list[str], str]:
    """compiled / reference per cell and run; the lines of the table and a one-line verdict."""
    ratio = {(r["device"], r["threads"], r["steps"], r["order"], r["run"]): r["ratio_vs_reference"]
             for r in rows if r["method"] == "compiled" and r["ratio_vs_reference"] is not None}
    head = f"{'device':6s} {'threads':>7s} {'steps':>5s} {'order':6s} " + " ".join(f"{'run ' + str(k):>6s}" for k in runs)
    lines = [head + f" {'min':>6s}", "-" * (len(head) + 7)]
    worst = float("inf")
    for cell in _cells(rows):
        vals = [ratio.get((*cell, k)) for k in runs]
        got = [v for v in vals if v is not None]
        worst = min([worst, *got])
        lines.append(f"{cell[0]:6s} {cell[1]:>7d} {cell[2]:>5d} {cell[3]:6s} "
                     + " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6s}" for v in vals)
                     + (f" {min(got):6.3f}" if got else ""))
    verdict = (f"compiled / reference >= {args.ratio_target:g} in every cell of "
               f"{'every run' if len(runs) > 1 else 'this run'}: {'yes' if worst >= args.ratio_target else 'NO'}"
               f" (lowest {worst:.3f})")
    return lines, verdict


def table(rows: list[dict]) -> str:
    head = (f"{'device':6s} {'threads':>7s} {'steps':>5s} {'order':6s} {'method':9s} {'it/s':>9s} "
            f"{'x loop':>7s} {'first call s':>12s} {'grad err':>9s} {'iters':>5s} {'x ref':>6s} {'peak MiB':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        note = "  (compile failed: uncompiled)" if r["compile_fell_back"] else ""
        xref = f"{r['ratio_vs_reference']:6.3f}" if r["ratio_vs_reference"] is not None else f"{'-':>6s}"
        peak = f"{r['peak_mib']:8.1f}" if r["peak_mib"] is not None else f"{'-':>8s}"
        lines.append(
            f"{r['device']:6s} {r['threads']:>7d} {r['steps']:>5d} {r['order']:6s} {r['method']:9s} "
            f"{r['it_per_s']:9.1f} {r['ratio_vs_loop']:7.2f} {r['first_call_s']:12.2f} "
            f"{r['grad_rel_err_vs_loop']:9.1e} {r['iterations']:5d} {xref} {peak}{note}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    if args.memory_child:
        return memory_child(args)
    cache = setup_compile_cache(args.warm_cache)  # cold: a fresh folder, before anything compiles
    try:
        res = run(args)
    finally:
        drop_compile_cache(cache)
    m = res["meta"]
    print(f"# metatune throughput: {m['setup']['task']}, {m['setup']['model']}, meta-batch {m['setup']['meta_batch']}, "
          f"{m['setup']['outer']} | torch {m['torch']}, higher {m['higher']}, Python {m['python']}")
    print(f"# {m['processor']}, {m['cpu_count']} CPUs | {m['date']} | inductor cache: {m['inductor_cache']} | "
          f"best of {args.repeats} repeats of {args.iterations} iterations"
          + (f" (fewer where one repeat would exceed {args.max_seconds:g} s)" if args.max_seconds else ""))
    peaks = {r["peak_what"] for r in res["results"] if r["peak_mib"] is not None}
    if peaks:
        print(f"# peak MiB: {', '.join(sorted(peaks))}, from the first call on (see the module docstring)")
    for k in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"\n## run {k}/{args.runs}")
        print(table([r for r in res["results"] if r["run"] == k]))
    if "reference" in args.methods and "compiled" in args.methods:
        lines, verdict = ratio_summary(res["results"], args, list(range(1, args.runs + 1)))
        print("\n# compiled / reference (throughput ratio, best repeat of each, same process, interleaved)")
        print("\n".join(lines))
        print(f"# {verdict}")
    if args.json is not None:
        write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
