"""CUDA against CPU meta-gradients in float64 for every registered learner, eager and compiled
(step (a) of benchmarks/gpu_check.sh).

Each learner runs on the small setting the learner contract uses (tests/contract_settings.py,
tests/reference_extra.py, tests/reference_mtnet.py; copied here so this script does not import
the tests): 2 inner steps (PAMELA's first skip falls after step 2), meta-batch 3, parameters
perturbed off their symmetric initial values, the same batch and inner-loop noise on both
devices. The reference is the CPU eager meta-gradient; ``eager`` is ``meta_gradient(learner)``
and ``compiled`` ``meta_gradient(learner, compile=True)`` on ``--device``. A learner passes when
the largest relative error over its parameters, max|g - g_cpu| / max|g_cpu| per tensor, is below
``--tolerance`` (1e-8) for both. Exit status 1 if any learner fails.

    python benchmarks/gpu_grads.py                       # every learner, on cuda
    python benchmarks/gpu_grads.py --learners maml,cxgrad --first-order
    python benchmarks/gpu_grads.py --device cpu          # plumbing check only (CPU against CPU)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, setup_compile_cache  # noqa: E402

SINE = {"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6}
SMALL_MLP = {"name": "mlp", "hidden": [8, 8]}
DIGITS_2 = {"name": "digits", "ways": 2, "shots": 1, "query": 2}
DIGITS_3 = {"name": "digits", "ways": 3, "shots": 1, "query": 2}
DEFAULT = {"task": SINE, "model": SMALL_MLP, "hparams": {"inner_lr": 0.05}}
SETTINGS = {
    "wormhole": {"task": SINE, "model": SMALL_MLP, "hparams": {
        "inner_lr": 0.05, "wormhole_c_form": "tanh", "wormhole_c_steps": 2, "wormhole_c_lr": 0.3}},
    "pamela": {"task": DIGITS_2, "model": {"name": "digits_conv", "channels": [2, 3], "hidden": 6},
               "hparams": {"inner_lr": 0.1, "skip_width": 2}},
    "cxgrad": {"task": DIGITS_2, "model": {"name": "conv4", "channels": 4, "blocks": 2, "conv_bias": False},
               "hparams": {"inner_lr": 0.1, "context_dim": 6, "context_hidden": 5, "context_lr": 1.0}},
    "mtnet": {"task": SINE, "model": SMALL_MLP, "hparams": {"inner_lr": 0.05, "mask_temperature": 0.5}},
    "mnet": {"task": DIGITS_3, "model": {"name": "conv4", "blocks": 2, "channels": 3, "conv_bias": False},
             "hparams": {"inner_lr": 0.1, "mask_resample": "per_step"}},
    "mnet_full": {"task": {"name": "avg_threshold", "shots": 6, "query": 5}, "model": {"name": "linear"},
                  "hparams": {"inner_lr": 0.5, "mask_resample": "per_task", "mask_temperature": 2.0}},
    "mtnet_full": {"task": DIGITS_3, "model": {"name": "digits_conv", "channels": [2, 3], "hidden": 5},
                   "hparams": {"inner_lr": 0.1}},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--learners", default=None, help="comma list (default: every registered learner)")
    p.add_argument("--device", default="cuda", help="device compared with the CPU (default cuda)")
    p.add_argument("--steps", type=int, default=2, help="inner steps (default 2)")
    p.add_argument("--first-order", action="store_true", help="also check first order")
    p.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    p.add_argument("--tolerance", type=float, default=1e-8)
    p.add_argument("--list", action="store_true", help="print the registered learners and exit")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def check(name: str, device: str, steps: int, first_order: bool, modes: list[str]) -> dict:
    import torch

    from metatune.config import parse_config
    from metatune.engine import meta_gradient

    s = SETTINGS.get(name, DEFAULT)
    comp = parse_config({"seed": 0, "task": s["task"], "model": s["model"], "dtype": "float64",
                         "learner": {"name": name, **s["hparams"], "inner_steps": steps, "first_order": first_order}})
    learner = comp.learner
    gen = torch.Generator().manual_seed(3)
    meta = learner.init_meta_params(generator=gen, dtype=torch.float64)
    with torch.no_grad():  # off symmetric initial values (zero biases, identity T)
        for v in meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=torch.float64))
    batch = comp.task.sample(3, generator=gen).to(dtype=torch.float64)
    noise = learner.sample_noise(3, generator=gen, meta_params=meta, steps=steps)

    def grads(where: str, compile: bool) -> dict:
        m = {k: v.detach().to(where).requires_grad_() for k, v in meta.items()}
        nz = {k: v.to(where) for k, v in noise.items()}
        _, g, _ = meta_gradient(learner, compile=compile)(m, batch.to(device=where), nz)
        return {k: v.detach().cpu() for k, v in g.items()}

    ref = grads("cpu", False)
    out = {"learner": name, "first_order": first_order, "steps": steps}
    for mode in modes:
        t0 = time.perf_counter()
        try:
            g = grads(device, mode == "compiled")
        except Exception as exc:  # noqa: BLE001 -- report, keep checking the others
            out[mode] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
            continue
        errs = {k: ((g[k] - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-12)).item() for k in ref}
        worst = max(errs, key=errs.get)
        out[mode] = {"max_rel_err": errs[worst], "worst_key": worst, "seconds": time.perf_counter() - t0}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    setup_compile_cache(warm=True)
    import torch

    from metatune.learners import LEARNERS

    if args.list:
        print(" ".join(LEARNERS.names()))
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("not run: no GPU available")
        return 0
    torch.set_num_threads(1)
    names = [n.strip() for n in args.learners.split(",")] if args.learners else LEARNERS.names()
    modes = [m.strip() for m in args.modes.split(",")]
    results, failed = [], []
    for name in names:
        for fo in (False, True) if args.first_order else (False,):
            r = check(name, args.device, args.steps, fo, modes)
            results.append(r)
            for mode in modes:
                m = r[mode]
                ok = "error" not in m and m["max_rel_err"] < args.tolerance
                if not ok:
                    failed.append(f"{name}/{mode}/{'first' if fo else 'second'}")
                detail = m.get("error") or f"max rel err {m['max_rel_err']:.2e} ({m['worst_key']}), {m['seconds']:.1f} s"
                print(f"{'PASS' if ok else 'FAIL'} {name:10s} {mode:8s} {'first' if fo else 'second'} order, "
                      f"{args.device} vs cpu float64: {detail}", flush=True)
    print(f"gpu_grads: {len(results) * len(modes) - len(failed)} passed, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
