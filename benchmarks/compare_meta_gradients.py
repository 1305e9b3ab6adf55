"""Every learner's float64 meta-gradient on fixed inputs, recorded to a file and compared
between two files to 1e-12 relative: the before/after check of a refactoring that must not
change what any learner computes.

Each case is a registered learner on the small setting of the learner contract (the copy in
benchmarks/gpu_grads.py): float64, parameters perturbed off their symmetric initial values,
meta-batch 3, 2 inner steps, fixed inputs and inner-loop noise (seeded generator), second and
first order. A case records the meta-loss, the meta-gradient of every parameter (the plain
``meta_gradient(learner)`` path), the per-task outputs (losses, accuracies, statistics) and an
evaluation curve (``batched(record=True)`` over 2 more steps than trained, ``lr_scale`` 0.7,
evaluation noise). Besides each learner's contract setting, variants cover the other branches
of the update rules (Wormhole's C forms, PAMELA's skip width, CxGrad's context modes, ...).

    python benchmarks/compare_meta_gradients.py record after.pt
    PYTHONPATH=/tmp/mt_before python benchmarks/compare_meta_gradients.py record before.pt
    python benchmarks/compare_meta_gradients.py compare before.pt after.pt   # exit 1 on a difference

``compare`` prints, per learner, the largest relative difference max|a - b| / max|b| over every
recorded tensor of its cases, and fails above ``--tolerance`` (1e-12) or on a missing case.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_grads import DEFAULT, SETTINGS

STEPS = 2
TASKS = 3
#: Extra settings per learner, each one more case (beside the contract setting itself).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "metasgd": [{"alpha_init": "uniform"}],
    "wormhole": [
        {"wormhole_c_form": "scalar"}, {"wormhole_c_form": "diag_layer"}, {"wormhole_c_form": "diag_weight"},
        {"wormhole_layers": "last"}, {"wormhole_c_first_order": True}, {"wormhole_c_steps": 0},
    ],
    "pamela": [{"skip_width": 1}, {"inner_steps": 3}, {"skip_init": 0.2}],
    "cxgrad": [
        {"context_update": "step"}, {"cxgrad_detach_first_context_step": True},
        {"context_update": "step", "cxgrad_detach_first_context_step": True},
    ],
    "mtnet": [{"mask_resample": "per_step"}, {"mask_eval": "threshold"}, {"mask_eval": "expected"}],
    "mnet_full": [{"mask_resample": "per_step", "mask_eval": "expected"}],
    "mtnet_full": [{"mask_resample": "per_task", "mask_eval": "threshold"}],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="write every case's meta-loss and meta-gradients to a .pt file")
    rec.add_argument("out", type=Path)
    rec.add_argument("--learners", default=None, help="comma list (default: every registered learner)")
    cmp = sub.add_parser("compare", help="check two recorded files against each other")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    cmp.add_argument("--tolerance", type=float, default=1e-12)
    return p.parse_args(argv)


def _case(name: str, extra: dict[str, Any], first_order: bool) -> dict[str, Any]:
    import torch

    from metatune.config import parse_config
    from metatune.engine import meta_gradient

    f64 = torch.float64
    s = SETTINGS.get(name, DEFAULT)
    hparams = {**s["hparams"], "inner_steps": STEPS, "first_order": first_order, **extra}
    steps = hparams["inner_steps"]
    comp = parse_config({"seed": 0, "task": s["task"], "model": s["model"], "dtype": "float64",
                         "learner": {"name": name, **hparams}})
    learner = comp.learner
    gen = torch.Generator().manual_seed(3)
    meta = learner.init_meta_params(generator=gen, dtype=f64)
    with torch.no_grad():  # off symmetric initial values (zero biases, identity T)
        for v in meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=f64))
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    batch = comp.task.sample(TASKS, generator=gen).to(dtype=f64)
    noise = learner.sample_noise(TASKS, generator=gen, meta_params=meta, steps=steps)
    loss, grads, outputs = meta_gradient(learner)(meta, batch, noise)
    # The evaluation path: more steps than trained, a scaled step size, evaluation noise.
    curve_steps = steps + 2
    eval_noise = learner.sample_noise(TASKS, generator=gen, meta_params=meta, steps=curve_steps, training=False)
    hp = learner.runtime_hparams(lr_scale=0.7, dtype=f64)
    with torch.no_grad():
        curve = learner.batched(meta, batch, eval_noise, steps=curve_steps, record=True, hp=hp)
    return {
        "loss": loss.detach(),
        "grads": {k: g.detach() for k, g in grads.items()},
        "outputs": {k: v.detach() for k, v in outputs.items() if v.is_floating_point()},
        "curve": {k: v.detach() for k, v in curve.items()},
    }


def record(out: Path, learners: str | None) -> int:
    import torch

    import metatune
    from metatune.learners import LEARNERS

    torch.set_num_threads(1)
    names = [n.strip() for n in learners.split(",")] if learners else LEARNERS.names()
    cases: dict[str, dict[str, Any]] = {}
    for name in names:
        for extra in [{}, *VARIANTS.get(name, [])]:
            for first_order in (False, True):
                label = ",".join(f"{k}={v}" for k, v in extra.items()) or "contract"
                cases[f"{name}[{label}]/{'first' if first_order else 'second'}"] = _case(name, extra, first_order)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"metatune": str(Path(metatune.__file__).parent), "cases": cases}, out)
    print(f"recorded {len(cases)} cases of {len(names)} learners from {Path(metatune.__file__).parent} to {out}")
    return 0


def _tensors(case: dict[str, Any]) -> dict[str, Any]:
    flat = {"loss": case["loss"]}
    for part in ("grads", "outputs", "curve"):
        flat.update({f"{part}/{k}": v for k, v in case[part].items()})
    return flat


def _rel_diff(a: Any, b: Any) -> float:
    """max|a - b| / max|b|; the absolute difference where b is all zero; inf on a shape change."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    scale = b.abs().max()
    diff = (a - b).abs().max()
    return float(diff / scale) if scale > 0 else float(diff)


def compare(before: Path, after: Path, tolerance: float) -> int:
    import torch

    a, b = torch.load(before)["cases"], torch.load(after)["cases"]
    problems = [f"case {c} only in {before}" for c in a if c not in b]
    problems += [f"case {c} only in {after}" for c in b if c not in a]
    worst: dict[str, tuple[float, str]] = {}
    for case in (c for c in a if c in b):
        ta, tb = _tensors(a[case]), _tensors(b[case])
        problems += [f"{case}: {k} missing in {after}" for k in ta if k not in tb]
        problems += [f"{case}: {k} new in {after}" for k in tb if k not in ta]
        learner = case.split("[", 1)[0]
        for key in (k for k in ta if k in tb):
            d = _rel_diff(tb[key], ta[key])  # relative to the "before" values
            if learner not in worst or d > worst[learner][0]:
                worst[learner] = (d, f"{case} {key}")
    for learner, (d, where) in worst.items():
        ok = d <= tolerance
        if not ok:
            problems.append(f"{learner}: relative difference {d:.2e} > {tolerance:g} at {where}")
        print(f"{'PASS' if ok else 'FAIL'} {learner:10s} max relative difference {d:.2e}  ({where})")
    for p in problems:
        print(f"problem: {p}")
    cases = sum(1 for c in a if c in b)
    print(f"compare_meta_gradients: {cases} cases of {len(worst)} learners, tolerance {tolerance:g}: "
          + ("equal" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "record":
        return record(args.out, args.learners)
    return compare(args.before, args.after, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
