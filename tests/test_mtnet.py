"""Hand-computed checks of the MT-net family (algorithms.md §3): mask structure, the
straight-through Gumbel sampler, temperature, the T metric of thesis eq. 4.3, evaluation mask
modes and what the inner loop adapts."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from test_learner_contract import case_for
from torch.func import vmap

from metatune.config import parse_config
from metatune.engine import meta_gradient
from metatune.errors import ConfigError
from metatune.evaluate import evaluate
from metatune.learners import LEARNERS
from metatune.learners.mtnet import EXPECTED, GUMBEL, MTNet, TNet
from metatune.models import Linear
from metatune.testing import build_components, check_meta_gradient

FAMILY = ["tnet", "mnet", "mtnet", "mnet_full", "mtnet_full"]
MASKED = ["mnet", "mtnet", "mnet_full", "mtnet_full"]
F64 = torch.float64
SINE = {"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6}
DIGITS = {"name": "digits", "ways": 3, "shots": 1, "query": 2}


def make(name, *, task=SINE, model=None, dtype="float64", **hp):
    comp = parse_config({
        "seed": 0, "task": task, "model": model or {"name": "mlp", "hidden": [6, 5]},
        "learner": {"name": name, "inner_lr": 0.05, **hp},
        "training": {"iterations": 2, "meta_batch": 2, "eval_every": 0, "log_every": 1},
        "evaluation": {"tasks": 4, "chunk": 4, "lr_scales": [1.0]}, "dtype": dtype,
    })
    return comp.learner


def init(learner, seed=0):
    return learner.init_meta_params(generator=torch.Generator().manual_seed(seed), dtype=F64)


def one(noise, i=0):
    return {k: v[i] for k, v in noise.items()}


class RegressionStub:
    """Just the ``loss`` a learner needs: mean squared error on vector outputs."""

    def loss(self, pred, y):
        return ((pred - y) ** 2).mean()

    def accuracy(self, pred, y):
        return None


# ----------------------------------------------------------------------------- declarations
def test_registered_with_declared_hyperparameters():
    for name in FAMILY:
        declared = LEARNERS.get(name).declared()
        assert {"inner_lr", "inner_steps", "first_order"} <= set(declared)
    assert set(LEARNERS.get("tnet").declared()) == {"inner_lr", "inner_steps", "first_order", "loss_reduction"}
    for name in MASKED:
        d = LEARNERS.get(name).declared()
        assert d["mask_temperature"].default == 1.0 and d["mask_temperature"].log
        assert d["mask_temperature"].low == 0 and d["mask_temperature"].low_open
        assert d["mask_temperature"].search == (0.1, 10.0)
        assert d["mask_eval"].default == "sample"
        assert d["mask_resample"].default == ("per_step" if name.endswith("_full") else "per_task")
        assert d["mask_forward"].default == "hard" and d["mask_output"].default is True


def test_init_identity_T_and_logits():
    for name in FAMILY:
        learner = make(name)
        meta = init(learner)
        has_T = name in ("tnet", "mtnet", "mtnet_full")
        for cell in learner.backbone.cells:  # every cell, the output cell included
            assert (f"{cell.name}.T" in meta) == has_T
            if has_T:
                assert torch.equal(meta[f"{cell.name}.T"], torch.eye(cell.out_features, dtype=F64))
        zetas = {k: v for k, v in meta.items() if k.startswith("zeta/")}
        if name == "tnet":
            assert not zetas
        elif name.endswith("_full"):
            assert set(zetas) == {"zeta/" + k for k in learner.backbone.adapted_keys()}
            for k, z in zetas.items():
                assert z.shape == meta[k[5:]].shape
        else:
            assert set(zetas) == {f"zeta/{c.name}.weight" for c in learner.backbone.cells}
            for c in learner.backbone.cells:
                assert torch.equal(zetas[f"zeta/{c.name}.weight"], torch.zeros(c.out_features, dtype=F64))
    # -full: truncated normal, std 0.1 for linear cells and 0.01 for conv cells (the code's init)
    wide = make("mtnet_full", model={"name": "mlp", "hidden": [40, 40]})
    z = init(wide)["zeta/fc1.weight"]
    assert abs(z.std().item() - 0.088) < 0.01 and z.abs().max() <= 0.2  # std of N(0, .1) cut at 2 std
    conv = make("mnet_full", task=DIGITS, model={"name": "digits_conv"})
    zc = init(conv)["zeta/conv1.weight"]
    assert abs(zc.std().item() - 0.0088) < 0.001 and zc.abs().max() <= 0.02
    shifted = make("mnet", logit_init=1.5)
    assert torch.all(init(shifted)["zeta/fc0.weight"] == 1.5)


# ----------------------------------------------------------------------------- masks
@pytest.mark.parametrize("name,model,task", [
    ("mtnet", {"name": "mlp", "hidden": [40, 40]}, SINE),
    ("mnet", {"name": "conv4", "blocks": 2, "channels": 4}, DIGITS),
])
def test_shared_mask_rows(name, model, task):
    learner = make(name, model=model, task=task)
    meta = init(learner)
    noise = learner.sample_noise(3, generator=torch.Generator().manual_seed(1), meta_params=meta, steps=2,
                                 training=True)
    for i in range(3):
        masks = learner.masks(meta, one(noise, i), step=0)
        for cell in learner.backbone.cells:
            w = meta[f"{cell.name}.weight"]
            mw = masks[f"{cell.name}.weight"] * torch.ones_like(w)
            flat = mw.reshape(w.shape[0], -1)
            assert torch.all(flat == flat[:, :1]), "a shared mask must be constant along each row"
            if f"{cell.name}.bias" in masks:
                assert torch.equal(flat[:, 0], masks[f"{cell.name}.bias"])
            assert set(flat.unique().tolist()) <= {0.0, 1.0}
        # per task: the same masks at every inner step
        later = learner.masks(meta, one(noise, i), step=1)
        assert all(torch.equal(masks[k], later[k]) for k in masks)


def test_full_masks_vary_within_rows_and_across_steps():
    learner = make("mtnet_full", model={"name": "mlp", "hidden": [40, 40]})
    meta = init(learner)
    noise = learner.sample_noise(1, generator=torch.Generator().manual_seed(1), meta_params=meta, steps=3,
                                 training=True)
    assert noise[GUMBEL + "zeta/fc1.weight"].shape == (1, 3, 40, 40)
    m0, m1 = learner.masks(meta, one(noise), 0), learner.masks(meta, one(noise), 1)
    w = m0["fc1.weight"]
    assert w.shape == (40, 40)
    assert (w.min(dim=1).values != w.max(dim=1).values).float().mean() > 0.9
    assert m0["fc1.bias"].shape == (40,)
    assert not torch.equal(m0["fc1.weight"], m1["fc1.weight"])  # re-sampled every inner step
    shared = make("mtnet", model={"name": "mlp", "hidden": [40, 40]})
    sn = shared.sample_noise(2, generator=torch.Generator(), meta_params=init(shared), steps=3, training=True)
    assert sn[GUMBEL + "zeta/fc1.weight"].shape == (2, 1, 40)
    resampled = make("mtnet", mask_resample="per_step")
    assert resampled.sample_noise(2, generator=torch.Generator(), meta_params=init(resampled), steps=3,
                                  training=True)[GUMBEL + "zeta/fc0.weight"].shape == (2, 3, 6)


@pytest.mark.parametrize("name", MASKED)
def test_forced_noise_gives_indicator_mask(name):
    learner = make(name)
    meta = init(learner)
    gen = torch.Generator().manual_seed(4)
    for k in list(meta):
        if k.startswith("zeta/"):
            meta[k] = torch.randn(meta[k].shape, generator=gen, dtype=F64)
    noise = {}
    for k in learner._zeta_keys:
        draws = 2 if name.endswith("_full") else 1  # per_step / per_task defaults
        g = torch.randn((1, draws, *meta[k].shape), generator=gen, dtype=F64)
        g.view(-1)[0] = -meta[k].view(-1)[0] + 1e-9  # right at the boundary: zeta + g > 0
        noise[GUMBEL + k] = g
    for step in (0, 1):
        masks = learner.zeta_masks(meta, one(noise), step)
        for k, m in masks.items():
            g = noise[GUMBEL + k][0, step if name.endswith("_full") else 0]
            assert torch.equal(m, (meta[k] + g > 0).to(F64)), k


def test_update_fraction_matches_sigmoid_zeta():
    learner = make("mnet", model={"name": "mlp", "hidden": [5]})
    meta = init(learner)
    zeta = torch.tensor([-2.0, -0.7, 0.0, 1.0, 2.5], dtype=F64)
    meta["zeta/fc0.weight"] = zeta
    n = 20000
    noise = learner.sample_noise(n, generator=torch.Generator().manual_seed(7), meta_params=meta, steps=1,
                                 training=True)
    masks = vmap(lambda nz: learner.zeta_masks(meta, nz, 0))(noise)["zeta/fc0.weight"]
    p = torch.sigmoid(zeta)
    tol = 4.5 * torch.sqrt(p * (1 - p) / n)
    assert torch.all((masks.mean(0) - p).abs() < tol), (masks.mean(0), p)
    stats = vmap(lambda nz: learner.task_stats(meta, meta, nz))(noise)
    expected = (p.sum() + torch.sigmoid(meta["zeta/out.weight"]).sum()).item() / 6  # 5 + 1 units
    assert abs(stats["mask_update_fraction"].mean().item() - expected) < 0.01


def test_task_stats_sign_convention():
    learner = make("mtnet_full")
    meta = init(learner)
    noise = learner.sample_noise(1, generator=torch.Generator(), meta_params=meta, steps=1, training=True)
    stats = learner.task_stats(meta, meta, one(noise))
    zetas = [meta[k] for k in learner._zeta_keys]
    allz = torch.cat([z.flatten() for z in zetas])
    assert torch.allclose(stats["mask_p_update"], torch.sigmoid(allz).mean())
    # the code's "change probs": mean over logit tensors of mean sigmoid(-zeta)
    per_tensor = torch.stack([torch.sigmoid(-z).mean() for z in zetas])
    assert torch.allclose(stats["mask_p_frozen_thesis"], per_tensor.mean())
    hard = torch.cat([(z + noise[GUMBEL + k][0] > 0).flatten().to(F64)
                      for k, z in zip(learner._zeta_keys, zetas)])
    assert torch.allclose(stats["mask_update_fraction"], hard.mean())
    fc0 = torch.cat([meta["zeta/fc0.weight"].flatten(), meta["zeta/fc0.bias"]])
    assert torch.allclose(stats["mask_p_update/fc0"], torch.sigmoid(fc0).mean())


def test_temperature_changes_only_the_zeta_gradient():
    learners = {c: make("mtnet", mask_temperature=c) for c in (1.0, 0.25)}
    meta = {k: v.requires_grad_() for k, v in init(learners[1.0]).items()}
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for v in meta.values():
            v.add_(0.1 * torch.randn(v.shape, generator=gen, dtype=F64))
    batch = learners[1.0].task.sample(1, generator=gen).to(dtype=F64)
    noise = learners[1.0].sample_noise(1, generator=gen, meta_params=meta, steps=1, training=True)
    res = {c: meta_gradient(lrn)(meta, batch, noise) for c, lrn in learners.items()}
    assert torch.equal(res[1.0][0], res[0.25][0])  # forward pass unchanged
    for k in meta:
        if not k.startswith("zeta/"):
            assert torch.allclose(res[1.0][1][k], res[0.25][1][k], rtol=1e-12, atol=1e-15), k
    # one task, one step: dL/dzeta = dL/dM * s (1 - s) / c with s = sigmoid((zeta + g) / c)
    for k in learners[1.0]._zeta_keys:
        z = meta[k].detach() + noise[GUMBEL + k][0, 0]
        factor = {c: torch.sigmoid(z / c) * (1 - torch.sigmoid(z / c)) / c for c in learners}
        g1, g2 = res[1.0][1][k], res[0.25][1][k]
        assert not torch.allclose(g1, g2)
        assert torch.allclose(g1 * factor[0.25], g2 * factor[1.0], rtol=1e-9, atol=1e-18), k


# ----------------------------------------------------------------------------- T metric (eq. 4.3)
@pytest.mark.parametrize("masked", [False, True])
def test_T_metric_closed_form(masked):
    """y = T W x: one inner step on W moves the outputs by -alpha T T^T grad_A L x (A = T W);
    with a row mask m (MT-net, thesis eq. 4.4) by -alpha T diag(m) T^T grad_A L x."""
    d, m, k, alpha = 4, 3, 7, 0.3
    backbone = Linear(input_shape=(d,), output_dim=m, bias=False)
    learner = (MTNet if masked else TNet)(backbone=backbone, task=RegressionStub(), inner_lr=alpha)
    gen = torch.Generator().manual_seed(5)
    meta = init(learner)
    meta["out.weight"] = torch.randn(m, d, generator=gen, dtype=F64)
    T = torch.randn(m, m, generator=gen, dtype=F64) + 2 * torch.eye(m, dtype=F64)
    meta["out.T"] = T
    sx, sy = torch.randn(k, d, generator=gen, dtype=F64), torch.randn(k, m, generator=gen, dtype=F64)
    qx = torch.randn(5, d, generator=gen, dtype=F64)
    noise, mask = {}, torch.ones(m, dtype=F64)
    if masked:
        meta["zeta/out.weight"] = torch.zeros(m, dtype=F64)
        g = torch.tensor([[[3.0, -3.0, 1.0]]], dtype=F64)
        noise = {GUMBEL + "zeta/out.weight": g}
        mask = (g[0, 0] > 0).to(F64)
        noise = one(noise)
    state = learner.init_state(meta, sx, sy, noise, hp=learner.runtime_hparams(dtype=F64))
    new = learner.inner_step(meta, state, sx, sy, noise, step=0, hp=learner.runtime_hparams(dtype=F64))
    A = (T @ meta["out.weight"]).requires_grad_()
    grad_A = torch.autograd.grad(((sx @ A.T - sy) ** 2).mean(), A)[0]
    y_old = qx @ A.detach().T
    expected = y_old - alpha * (T @ torch.diag(mask) @ T.T @ grad_A @ qx.T).T
    got = learner.predict(meta, new, qx)
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    # and it is not the plain (MAML-on-A) step unless T T^T = I
    plain = y_old - alpha * (torch.diag(mask) @ grad_A @ qx.T).T
    assert not torch.allclose(got, plain, atol=1e-6)


# ----------------------------------------------------------------------------- evaluation modes
def test_mask_eval_modes():
    base = dict(model={"name": "mlp", "hidden": [40]})
    for name in ("mtnet", "mtnet_full"):
        gen = torch.Generator().manual_seed(0)
        thr, exp_, smp = (make(name, mask_eval=m, **base) for m in ("threshold", "expected", "sample"))
        meta = init(thr)
        for k in thr._zeta_keys:
            meta[k] = torch.randn(meta[k].shape, generator=gen, dtype=F64)
        nt = thr.sample_noise(2, generator=gen, meta_params=meta, steps=3, training=False)
        for k, m in thr.zeta_masks(meta, one(nt, 1), 2).items():
            assert torch.equal(m, (torch.sigmoid(meta[k]) > 0.5).to(F64))
        ne = exp_.sample_noise(2, generator=gen, meta_params=meta, steps=3, training=False)
        assert set(ne) == {EXPECTED}
        for k, m in exp_.zeta_masks(meta, one(ne, 0), 0).items():
            assert torch.equal(m, torch.sigmoid(meta[k]))
        # training always samples, whatever mask_eval says
        for lrn in (thr, exp_):
            nz = lrn.sample_noise(2, generator=gen, meta_params=meta, steps=3, training=True)
            assert EXPECTED not in nz and all(v.abs().sum() > 0 for v in nz.values())
        # training defaults to true; evaluation passes training=False explicitly
        assert set(exp_.sample_noise(1, generator=gen, meta_params=meta, steps=1, training=False)) == {EXPECTED}
        assert EXPECTED not in exp_.sample_noise(1, generator=gen, meta_params=meta, steps=1)
        # sample mode at evaluation draws fresh masks (the authors' meta-test behaviour)
        ns = smp.sample_noise(2, generator=gen, meta_params=meta, steps=3, training=False)
        assert all(v.abs().sum() > 0 for v in ns.values())


def test_evaluate_uses_the_eval_mask_mode():
    learner = make("mtnet", mask_eval="expected")
    meta = init(learner)
    res = evaluate(learner, meta, tasks=4, chunk=4, steps=2, dtype=F64)
    stats = res.by_shots[learner.task.shots].stats
    assert math.isclose(stats["mask_update_fraction"], stats["mask_p_update"], rel_tol=1e-12)
    assert math.isclose(stats["mask_p_update"], 0.5)


# ----------------------------------------------------------------------------- what adapts
def test_T_and_zeta_are_never_adapted():
    for name in FAMILY:
        learner = make(name, inner_steps=2)
        meta = init(learner)
        gen = torch.Generator().manual_seed(3)
        batch = learner.task.sample(1, generator=gen).to(dtype=F64)
        noise = one(learner.sample_noise(1, generator=gen, meta_params=meta, steps=2, training=True))
        state = learner.init_state(meta, batch.support_x[0], batch.support_y[0], noise, hp=learner.runtime_hparams(dtype=F64))
        for step in range(2):
            state = learner.inner_step(meta, state, batch.support_x[0], batch.support_y[0], noise, step=step,
                                       hp=learner.runtime_hparams(dtype=F64))
        assert set(state) == set(learner.backbone.adapted_keys())  # weights and biases only


def test_masks_gate_the_update():
    frozen = open_ = make("mtnet", inner_steps=2)
    tnet = make("tnet", inner_steps=2)
    meta = init(frozen)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for k in meta:
            meta[k] = meta[k] + 0.1 * torch.randn(meta[k].shape, generator=gen, dtype=F64)
    batch = frozen.task.sample(2, generator=gen).to(dtype=F64)
    noise = frozen.sample_noise(2, generator=gen, meta_params=meta, steps=2, training=True)
    zeta_keys = [k for k in meta if k.startswith("zeta/")]
    closed = {**meta, **{k: torch.full_like(meta[k], -60.0) for k in zeta_keys}}
    opened = {**meta, **{k: torch.full_like(meta[k], 60.0) for k in zeta_keys}}
    before = frozen.batched(closed, batch, noise, steps=0)["loss"]
    after = frozen.batched(closed, batch, noise, steps=2)["loss"]
    assert torch.equal(before, after)  # every mask 0: nothing moves
    t_meta = {k: v for k, v in meta.items() if not k.startswith("zeta/")}
    # every mask 1: MT-net's update is T-net's
    got, want = open_.batched(opened, batch, noise)["loss"], tnet.batched(t_meta, batch, {})["loss"]
    assert torch.allclose(got, want, rtol=1e-13)


def test_straight_through_gradient_reaches_zeta():
    from test_learner_contract import gradients

    for name in MASKED:
        _, grads, _, ref = gradients(name, 1, False)
        for k in grads:
            if k.startswith("zeta/"):
                assert ref[k].abs().max() > 0 and grads[k].abs().max() > 0, k


# ----------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", FAMILY)
@pytest.mark.parametrize("task,model", [
    (SINE, {"name": "mlp", "hidden": [6]}),
    ({"name": "avg_threshold"}, {"name": "linear"}),
    (DIGITS, {"name": "conv4", "blocks": 2, "channels": 4}),
    (DIGITS, {"name": "digits_conv", "channels": [3, 4], "hidden": 6}),
])
def test_every_backbone(name, task, model):
    learner = make(name, task=task, model=model, dtype="float32", inner_steps=2,
                   first_order=name.endswith("full"))
    meta = {k: v.float().requires_grad_() for k, v in init(learner).items()}
    gen = torch.Generator().manual_seed(0)
    batch = learner.task.sample(3, generator=gen)
    noise = learner.sample_noise(3, generator=gen, meta_params=meta, steps=2)
    noise = {k: v.float() for k, v in noise.items()}
    loss, grads, out = meta_gradient(learner)(meta, batch, noise)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    for k in grads:
        if k.endswith(".T") or k.startswith("zeta/"):
            assert grads[k].abs().sum() > 0, k
    assert out["loss"].shape == (3,)


@pytest.mark.parametrize("name", ["mtnet_full", "mnet_full"])
def test_noise_drawn_for_fewer_steps_than_run_is_an_error_naming_the_learner(name):
    """-full masks are re-drawn every step: noise for 1 step run for 10 would silently reuse the
    step-0 draw (the README's pattern before); now an error. Enough noise runs, and a per-task
    learner (mtnet) keeps its single draw."""
    from metatune.learners import LEARNERS
    from metatune.models import MLP
    from metatune.tasks import Sine

    task = Sine(protocol="metasgd", shots=5)
    backbone = MLP(input_shape=task.input_shape, output_dim=task.output_dim, hidden=(8,))
    gen = torch.Generator().manual_seed(0)
    for learner_name, must_fail in ((name, True), ("mtnet", False)):
        learner = LEARNERS.get(learner_name)(backbone=backbone, task=task, inner_lr=0.01, inner_steps=1)
        meta = learner.init_meta_params(generator=gen)
        batch = task.sample(3, generator=gen)
        short = learner.sample_noise(3, generator=gen, meta_params=meta, steps=1)
        if must_fail:
            with pytest.raises(ValueError, match=rf"{learner_name}: mask noise drawn for 1 inner step\(s\) but 10"):
                learner.batched(meta, batch, short, steps=10)
        else:
            assert learner.batched(meta, batch, short, steps=10)["loss"].shape == (3,)
        enough = learner.sample_noise(3, generator=gen, meta_params=meta, steps=10)
        assert torch.isfinite(learner.batched(meta, batch, enough, steps=10, record=True)["loss"]).all()
        # Evaluation noise (threshold masks: zeros) follows the same rule and gives the same masks.
        zeros = learner.sample_noise(3, generator=gen, meta_params=meta, steps=10, training=False)
        assert torch.isfinite(learner.batched(meta, batch, zeros, steps=10)["loss"]).all()


# ----------------------------------------------------------------------------- readings
@pytest.mark.parametrize("name", MASKED)
@pytest.mark.parametrize("hp", [{"mask_forward": "soft"}, {"mask_output": False},
                                {"mask_forward": "soft", "mask_output": False}])
def test_mask_readings_match_the_reference(name, hp):
    """Eq. 3.9's soft mask value and the unmasked output cell, against the per-task reference."""
    case = dataclasses.replace(case_for(name), hparams={**case_for(name).hparams, **hp})
    if case.model["name"] == "linear" and not hp.get("mask_output", True):
        with pytest.raises(ConfigError, match=r"^field 'learner.mask_output': false leaves 'linear'"):
            build_components(case, steps=1)
        return
    check_meta_gradient(case, steps=2, first_order=False)


def test_soft_masks_take_the_gumbel_softmax_value():
    hard, soft = make("mtnet", mask_temperature=0.5), make("mtnet", mask_temperature=0.5, mask_forward="soft")
    gen = torch.Generator().manual_seed(1)
    meta = init(hard)
    noise = hard.sample_noise(1, generator=gen, meta_params=meta, steps=1)
    for k, m in soft.zeta_masks(meta, one(noise), 0).items():
        z = meta[k] + noise[GUMBEL + k][0, 0]
        assert torch.allclose(m, torch.sigmoid(z / 0.5), rtol=1e-12) and ((m > 0) & (m < 1)).all()
        assert torch.equal(hard.zeta_masks(meta, one(noise), 0)[k], (z > 0).to(F64))
    # threshold masks at evaluation stay 0/1 under the soft reading
    thr = make("mtnet", mask_forward="soft", mask_eval="threshold")
    nt = thr.sample_noise(1, generator=gen, meta_params=meta, steps=1, training=False)
    for k, m in thr.zeta_masks(meta, one(nt), 0).items():
        assert torch.equal(m, (torch.sigmoid(meta[k]) > 0.5).to(F64))


@pytest.mark.parametrize("name", ["mtnet", "mnet_full"])
def test_unmasked_output_cell_has_no_logits_and_a_plain_step(name):
    learner = make(name, mask_output=False)
    meta = init(learner)
    assert not any(k.startswith("zeta/out.") for k in meta)
    assert any(k.startswith("zeta/fc0.") for k in meta)
    gen = torch.Generator().manual_seed(4)
    for k in learner._zeta_keys:
        meta[k] = torch.full_like(meta[k], -30.0)  # every masked unit frozen
    batch = learner.task.sample(1, generator=gen).to(dtype=F64)
    noise = one(learner.sample_noise(1, generator=gen, meta_params=meta, steps=1))
    hp = learner.runtime_hparams(dtype=F64)
    sx, sy = batch.support_x[0], batch.support_y[0]
    state = learner.init_state(meta, sx, sy, noise, hp=hp)
    new = learner.inner_step(meta, state, sx, sy, noise, step=0, hp=hp)
    g = torch.func.grad(lambda w: learner.loss_at(meta, w, sx, sy))(state.w)
    assert torch.allclose(new.w["out.weight"], meta["out.weight"] - 0.05 * g["out.weight"], rtol=1e-12)
    assert torch.equal(new.w["fc0.weight"], meta["fc0.weight"])
