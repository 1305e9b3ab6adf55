"""The contract every registered learner passes (float64, fixed noise): meta-gradient equal to
an independent per-task autograd reference, first order differing from second order, seeded
determinism, a finite-loss guard and a checkpoint round trip."""

from __future__ import annotations

import math

import pytest
import torch

from contract_settings import settings_for
from reference import REFERENCES
from metatune.config import parse_config
from metatune.engine import meta_gradient
from metatune.learners import LEARNERS
from metatune.trial import Trainer

NAMES = LEARNERS.names()


def build(name: str, *, steps: int, first_order: bool | None = None, seed: int = 0, extra: dict | None = None):
    s = settings_for(name)
    hp = {**s["hparams"], "inner_steps": steps, **(extra or {})}
    if first_order is not None:
        hp["first_order"] = first_order
    return parse_config({
        "seed": seed, "task": s["task"], "model": s["model"], "learner": {"name": name, **hp},
        "training": {"iterations": 4, "meta_batch": 3, "eval_every": 0, "log_every": 2, "checkpoint_every": 2},
        "evaluation": {"tasks": 4, "chunk": 4, "lr_scales": [1.0]}, "dtype": "float64",
    })


def gradients(name: str, steps: int, first_order: bool):
    comp = build(name, steps=steps, first_order=first_order)
    learner = comp.learner
    gen = torch.Generator().manual_seed(3)
    meta = {k: v.requires_grad_() for k, v in learner.init_meta_params(generator=gen, dtype=torch.float64).items()}
    # Perturb so no parameter sits at a symmetric initial value (zero biases, identity T).
    with torch.no_grad():
        for v in meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=torch.float64))
    batch = comp.task.sample(3, generator=gen).to(dtype=torch.float64)
    noise = learner.sample_noise(3, generator=gen, meta_params=meta, steps=steps)
    loss, grads, _ = meta_gradient(learner)(meta, batch, noise)
    ref_loss = REFERENCES[name](learner, meta, batch, noise, steps)
    keys = list(meta)
    ref = torch.autograd.grad(ref_loss, [meta[k] for k in keys], allow_unused=True)
    ref = {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(keys, ref)}
    return loss, grads, ref_loss, ref


def test_every_learner_has_a_reference():
    missing = [n for n in NAMES if n not in REFERENCES]
    assert not missing, f"learners without an independent reference: {missing}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_per_task_reference(name, steps, first_order):
    loss, grads, ref_loss, ref = gradients(name, steps, first_order)
    assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=0)
    for k in grads:
        scale = ref[k].abs().max().clamp_min(1e-12)
        err = (grads[k] - ref[k]).abs().max() / scale
        assert err < 1e-8, f"{name} {k}: relative error {err:.2e}"


@pytest.mark.parametrize("name", NAMES)
def test_first_order_differs_from_second_order(name):
    _, so, _, _ = gradients(name, 2, False)
    _, fo, _, _ = gradients(name, 2, True)
    diff = max(((so[k] - fo[k]).abs().max() / so[k].abs().max().clamp_min(1e-12)).item() for k in so)
    assert diff > 1e-6, f"{name}: first-order gradient equals second-order ({diff:.1e})"


def _train(name: str, seed: int, iterations: int = 4):
    trainer = Trainer(build(name, steps=1, seed=seed))
    for _ in range(iterations):
        assert trainer.step() is not None
    return trainer


@pytest.mark.parametrize("name", NAMES)
def test_seeded_determinism(name):
    a, b, c = _train(name, 0), _train(name, 0), _train(name, 1)
    for k in a.meta:
        assert torch.equal(a.meta[k], b.meta[k]), k
    assert any(not torch.equal(a.meta[k], c.meta[k]) for k in a.meta)


@pytest.mark.parametrize("name", NAMES)
def test_finite_loss_guard(name):
    trainer = Trainer(build(name, steps=1))
    trainer.step()
    with torch.no_grad():
        next(iter(trainer.meta.values())).fill_(math.nan)
    result = trainer.train()
    assert result.status == "diverged"
    assert result.diverged_at == 2
    assert result.last_finite_loss is not None and math.isfinite(result.last_finite_loss)
    assert result.evaluation is None
    assert all(math.isfinite(v) for v in trainer.metrics({"train_loss": 1.0}).values())


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    full = Trainer(build(name, steps=2))
    full.train()
    half = Trainer(build(name, steps=2))
    for _ in range(2):
        half.step()
    path = half.save(tmp_path / "ckpt.pt")
    resumed = Trainer.restore(path)
    assert resumed.iteration == 2
    resumed.train()
    for k in full.meta:
        assert torch.equal(full.meta[k], resumed.meta[k]), k
