"""``meta_gradient(learner, compile=True)``: the torch.compile'd meta-gradient equals the plain one
(float64) and the per-task reference, first order stays a stop-gradient, one graph serves
batches of the same shapes, and a compiler failure falls back to the plain path with one
warning."""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.utils import counters

from reference import REFERENCES
from metatune.engine import meta_gradient
from metatune.learners import MAML, MetaSGD
from metatune.models import MLP
from metatune.tasks import Sine

LEARNERS = {"maml": MAML, "metasgd": MetaSGD}
TASKS = 3


def setup(name: str, steps: int, first_order: bool, batches: int = 3):
    task = Sine(protocol="metasgd", shots=5, query=6)
    learner = LEARNERS[name](
        backbone=MLP(hidden=(8, 8)), task=task, inner_lr=0.05, inner_steps=steps, first_order=first_order
    )
    gen = torch.Generator().manual_seed(3)
    meta = learner.init_meta_params(generator=gen, dtype=torch.float64)
    with torch.no_grad():  # no parameter at a symmetric initial value (zero biases)
        for v in meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=torch.float64))
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    data = [task.sample(TASKS, generator=gen).to(dtype=torch.float64) for _ in range(batches)]
    return learner, meta, data


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def reference_grads(name, learner, meta, batch, steps):
    loss = REFERENCES[name](learner, meta, batch, {}, steps)
    keys = list(meta)
    grads = torch.autograd.grad(loss, [meta[k] for k in keys], allow_unused=True)
    return {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(keys, grads)}


@pytest.mark.parametrize("name", list(LEARNERS))
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_compiled_equals_plain(name, steps, first_order, caplog):
    learner, meta, data = setup(name, steps, first_order)
    plain = meta_gradient(learner)
    compiled = meta_gradient(learner, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    with caplog.at_level(logging.WARNING, logger="metatune.engine"):
        for batch in data:  # new values, same shapes: one compilation
            loss, grads, out = compiled(meta, batch, {})
            ref_loss, ref_grads, ref_out = plain(meta, batch, {})
            assert set(grads) == set(meta)
            assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=0)
            assert torch.allclose(out["loss"], ref_out["loss"], rtol=1e-10, atol=0)
            for k in meta:
                assert grads[k].dtype == torch.float64 and grads[k].shape == meta[k].shape
                assert rel_err(grads[k], ref_grads[k]) < 1e-8, f"{name} {k}: {rel_err(grads[k], ref_grads[k]):.2e}"
    assert not caplog.records, "compilation fell back to the plain path"
    assert counters["stats"]["unique_graphs"] - graphs == 1, "recompiled for a batch of the same shapes"
    # The gradients are fresh tensors: the trainer clips them in place.
    storages = [t.untyped_storage().data_ptr() for t in [*grads.values(), *meta.values()]]
    assert len(set(storages)) == len(storages)

    # Against the independent per-task loop, and first order is a real stop-gradient.
    batch = data[-1]
    ref = reference_grads(name, learner, meta, batch, steps)
    for k in meta:
        assert rel_err(grads[k], ref[k]) < 1e-8, f"{name} {k} vs per-task reference: {rel_err(grads[k], ref[k]):.2e}"
    if first_order:
        second, _, _ = setup(name, steps, False, batches=0)
        _, so_grads, _ = meta_gradient(second)(meta, batch, {})
        diff = max(rel_err(grads[k], so_grads[k]) for k in meta)
        assert diff > 1e-6, f"compiled first-order gradient equals the second-order one ({diff:.1e})"


def _fallback_check(monkeypatch, caplog, fake_compile, expected_compile_calls: int = 1):
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return fake_compile(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", counting)
    learner, meta, data = setup("maml", 2, False)
    plain = meta_gradient(learner)
    compiled = meta_gradient(learner, compile=True)
    with caplog.at_level(logging.WARNING, logger="metatune.engine"):
        for batch in data:
            loss, grads, _ = compiled(meta, batch, {})
            ref_loss, ref_grads, _ = plain(meta, batch, {})
            assert torch.equal(loss, ref_loss)
            for k in meta:
                assert torch.equal(grads[k], ref_grads[k])
    warnings = [r for r in caplog.records if r.name == "metatune.engine" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "uncompiled" in warnings[0].getMessage()
    assert len(calls) == expected_compile_calls  # not retried after the failure


def test_fallback_when_torch_compile_raises(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("no working C++ compiler")

    _fallback_check(monkeypatch, caplog, broken)


def test_fallback_when_the_compiled_function_raises(monkeypatch, caplog):
    def lazy(fn, **kwargs):  # like torch.compile: fails on the first call, not when wrapping
        def run(*args, **kw):
            raise NotImplementedError("unsupported op in the traced graph")

        return run

    _fallback_check(monkeypatch, caplog, lazy)


def test_bad_inputs_raise_and_do_not_disable_compilation(monkeypatch, caplog):
    """An error the plain path raises too is the caller's, not the compiler's."""
    seen = []

    def passthrough(fn, **kwargs):
        def run(*args, **kw):
            seen.append(1)
            return fn(*args, **kw)  # eager: the "compiled" function is the uncompiled one

        return run

    monkeypatch.setattr(torch, "compile", passthrough)
    learner, meta, data = setup("maml", 1, False)
    compiled = meta_gradient(learner, compile=True)
    bad = type(data[0])(data[0].support_x[:, :, :0], *[getattr(data[0], f) for f in ("support_y", "query_x", "query_y")])
    with caplog.at_level(logging.WARNING, logger="metatune.engine"), pytest.raises(RuntimeError):
        compiled(meta, bad, {})
    loss, grads, _ = compiled(meta, data[0], {})
    assert len(seen) == 2 and not caplog.records
    ref_loss, ref_grads, _ = meta_gradient(learner)(meta, data[0], {})
    assert torch.allclose(loss, ref_loss, rtol=1e-12, atol=0)
    for k in meta:
        assert rel_err(grads[k], ref_grads[k]) < 1e-12


def test_compile_false_is_the_plain_path():
    learner, meta, data = setup("maml", 1, False, batches=1)
    loss, grads, _ = meta_gradient(learner, compile=False)(meta, data[0], {})
    assert loss.requires_grad  # the plain path returns the differentiable loss
    assert set(grads) == set(meta)


def test_each_meta_gradient_compiles_on_its_own(monkeypatch, caplog):
    """More learners in one process (a study's trials) than TorchDynamo's per-function
    recompile limit (8): each keeps its compiled graph. The eager backend keeps this fast."""
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real_compile(fn, **{**kw, "backend": "eager"}))
    _, meta, data = setup("maml", 1, False, batches=1)
    graphs = counters["stats"]["unique_graphs"]
    n = torch._dynamo.config.recompile_limit + 2
    with caplog.at_level(logging.WARNING, logger="metatune.engine"):
        for i in range(n):
            learner = MAML(backbone=MLP(hidden=(8, 8)), task=Sine(protocol="metasgd", shots=5, query=6),
                           inner_lr=0.01 * (i + 1), inner_steps=1)
            _, grads, _ = meta_gradient(learner, compile=True)(meta, data[0], {})
            _, ref, _ = meta_gradient(learner)(meta, data[0], {})
            for k in meta:
                assert rel_err(grads[k], ref[k]) < 1e-10
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert counters["stats"]["unique_graphs"] - graphs == n
