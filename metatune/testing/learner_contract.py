"""The learner contract: what every meta-learner must satisfy, as plain functions that raise
``AssertionError`` with a message (usable from pytest or from any script).

- its meta-gradient equals an independent per-task reference the author supplies (float64);
- first order differs from second order;
- the same seed trains to the same meta-parameters, another seed to others;
- a non-finite loss stops training as ``diverged`` with the last finite loss;
- a checkpoint taken mid-run resumes to exactly the uninterrupted result.

Each check builds a short float64 run from a :class:`LearnerCase` (the learner's registered
name, a small task and backbone where it makes sense, and its reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from metatune.config import Components, parse_config
from metatune.engine import meta_gradient
from metatune.testing.references import Reference
from metatune.trial import Trainer

__all__ = [
    "DEFAULT_HPARAMS", "DEFAULT_MODEL", "DEFAULT_TASK", "LearnerCase", "build_components",
    "check_checkpoint_round_trip", "check_finite_loss_guard", "check_first_order_differs",
    "check_learner", "check_meta_gradient", "check_seeded_determinism", "meta_gradients",
]

#: The setting a learner is checked on unless its case says otherwise: the Meta-SGD sine
#: protocol with few points and a small MLP.
DEFAULT_TASK: Mapping[str, Any] = MappingProxyType(
    {"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6}
)
DEFAULT_MODEL: Mapping[str, Any] = MappingProxyType({"name": "mlp", "hidden": [8, 8]})
DEFAULT_HPARAMS: Mapping[str, Any] = MappingProxyType({"inner_lr": 0.05})

Gradients = dict[str, Tensor]


@dataclass(frozen=True, kw_only=True)
class LearnerCase:
    """One learner under contract: its registered ``learner`` name, its per-task ``reference``,
    and the config sections of the run it is checked on (``hparams`` are learner settings;
    the contract sets ``inner_steps`` and ``first_order`` itself)."""

    learner: str
    reference: Reference
    task: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_TASK))
    model: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_MODEL))
    hparams: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_HPARAMS))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def build_components(
    case: LearnerCase, *, steps: int, first_order: bool | None = None, seed: int = 0,
    extra: Mapping[str, Any] | None = None,
) -> Components:
    """A 4-iteration float64 run of ``case`` (meta-batch 3, checkpoints every 2 iterations)."""
    hp = {**case.hparams, "inner_steps": steps, **(extra or {})}
    if first_order is not None:
        hp["first_order"] = first_order
    return parse_config({
        "seed": seed, "task": dict(case.task), "model": dict(case.model),
        "learner": {"name": case.learner, **hp},
        "training": {
            "iterations": 4, "meta_batch": 3, "eval_every": 0, "log_every": 2, "checkpoint_every": 2,
        },
        "evaluation": {"tasks": 4, "chunk": 4, "lr_scales": [1.0]}, "dtype": "float64",
    })


def meta_gradients(
    case: LearnerCase, *, steps: int, first_order: bool,
) -> tuple[Tensor, Gradients, Tensor, Gradients]:
    """(loss, meta-gradient) of the learner and of its reference on the same perturbed
    meta-parameters, task batch (3 tasks) and noise."""
    comp = build_components(case, steps=steps, first_order=first_order)
    learner = comp.learner
    gen = torch.Generator().manual_seed(3)
    initial = learner.init_meta_params(generator=gen, dtype=torch.float64)
    meta = {k: v.requires_grad_() for k, v in initial.items()}
    # Perturb so no parameter sits at a symmetric initial value (zero biases, identity T).
    with torch.no_grad():
        for v in meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=torch.float64))
    batch = comp.task.sample(3, generator=gen).to(dtype=torch.float64)
    noise = learner.sample_noise(3, generator=gen, meta_params=meta, steps=steps)
    loss, grads, _ = meta_gradient(learner)(meta, batch, noise)
    ref_loss = case.reference(learner, meta, batch, noise, steps)
    keys = list(meta)
    ref_grads = torch.autograd.grad(ref_loss, [meta[k] for k in keys], allow_unused=True)
    ref = {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(keys, ref_grads, strict=True)}
    return loss, grads, ref_loss, ref


def check_meta_gradient(case: LearnerCase, *, steps: int, first_order: bool) -> None:
    """Loss to 1e-10 and every meta-gradient tensor to 1e-8 (relative) of the reference."""
    loss, grads, ref_loss, ref = meta_gradients(case, steps=steps, first_order=first_order)
    _check(bool(torch.allclose(loss, ref_loss, rtol=1e-10, atol=0)),
           f"{case.learner}: loss {loss.item()!r} differs from the reference's {ref_loss.item()!r}")
    for k in grads:
        scale = ref[k].abs().max().clamp_min(1e-12)
        err = (grads[k] - ref[k]).abs().max() / scale
        _check(bool(err < 1e-8), f"{case.learner} {k}: relative error {err:.2e}")


def check_first_order_differs(case: LearnerCase) -> None:
    """Over 2 inner steps the first-order meta-gradient differs (1e-6 relative) from the full one."""
    _, so, _, _ = meta_gradients(case, steps=2, first_order=False)
    _, fo, _, _ = meta_gradients(case, steps=2, first_order=True)
    diff = max(((so[k] - fo[k]).abs().max() / so[k].abs().max().clamp_min(1e-12)).item() for k in so)
    _check(diff > 1e-6, f"{case.learner}: first-order gradient equals second-order ({diff:.1e})")


def _train(case: LearnerCase, *, seed: int, iterations: int = 4) -> Trainer:
    trainer = Trainer(build_components(case, steps=1, seed=seed))
    for i in range(iterations):
        _check(trainer.step() is not None, f"{case.learner}: training step {i + 1} reported no loss")
    return trainer


def check_seeded_determinism(case: LearnerCase) -> None:
    """Seed 0 twice trains to equal meta-parameters; seed 1 to different ones."""
    a, b, c = _train(case, seed=0), _train(case, seed=0), _train(case, seed=1)
    for k in a.meta:
        _check(torch.equal(a.meta[k], b.meta[k]), f"{case.learner} {k}: same seed, different result")
    _check(any(not torch.equal(a.meta[k], c.meta[k]) for k in a.meta),
           f"{case.learner}: seeds 0 and 1 trained to the same meta-parameters")


def check_finite_loss_guard(case: LearnerCase) -> None:
    """A NaN meta-parameter after iteration 1 ends training as diverged at iteration 2."""
    trainer = Trainer(build_components(case, steps=1))
    trainer.step()
    with torch.no_grad():
        next(iter(trainer.meta.values())).fill_(math.nan)
    result = trainer.train()
    name = case.learner
    _check(result.status == "diverged", f"{name}: status {result.status!r}, expected 'diverged'")
    _check(result.diverged_at == 2, f"{name}: diverged_at {result.diverged_at!r}, expected 2")
    _check(result.last_finite_loss is not None and math.isfinite(result.last_finite_loss),
           f"{name}: last finite loss {result.last_finite_loss!r}")
    _check(result.evaluation is None, f"{name}: a diverged run was evaluated")
    _check(all(math.isfinite(v) for v in trainer.metrics({"train_loss": 1.0}).values()),
           f"{name}: non-finite metrics after divergence")


def check_checkpoint_round_trip(case: LearnerCase, *, folder: Path) -> None:
    """A run checkpointed at iteration 2 (in ``folder``) resumes to the uninterrupted result."""
    full = Trainer(build_components(case, steps=2))
    full.train()
    half = Trainer(build_components(case, steps=2))
    for _ in range(2):
        half.step()
    path = half.save(Path(folder) / "ckpt.pt")
    resumed = Trainer.restore(path)
    _check(resumed.iteration == 2, f"{case.learner}: resumed at iteration {resumed.iteration}, expected 2")
    resumed.train()
    for k in full.meta:
        _check(torch.equal(full.meta[k], resumed.meta[k]), f"{case.learner} {k}: resumed run differs")


def check_learner(case: LearnerCase, *, folder: Path) -> None:
    """The whole contract, outside pytest (``folder`` holds the checkpoint)."""
    for steps in (1, 3):
        for first_order in (False, True):
            check_meta_gradient(case, steps=steps, first_order=first_order)
    check_first_order_differs(case)
    check_seeded_determinism(case)
    check_finite_loss_guard(case)
    check_checkpoint_round_trip(case, folder=folder)
