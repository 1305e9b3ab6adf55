"""Hand-computed and property checks of Wormhole MAML, PAMELA and CxGrad (algorithms.md §4-6),
beyond the shared contract suite: PAMELA's skip index set, PAMELA(P = 0) = per-step Meta-SGD,
CxGrad's scale invariance (paper eqs. 4-5), the Wormhole multiplier recovering a task's sign,
and the variants the contract suite does not reach, each against the per-task references."""

from __future__ import annotations

import math

import pytest
import torch
from contract_settings import settings_for
from reference import REFERENCES
from torch.func import grad

from metatune.config import parse_config
from metatune.engine import meta_gradient
from metatune.errors import ConfigError
from metatune.learners import PAMELA, Wormhole
from metatune.learners.pamela import skip_indices
from metatune.models import MLP, Conv4, Linear
from metatune.tasks import Sine, TaskBatch

F64 = torch.float64


def build(name: str, *, steps: int, first_order: bool = False, hparams: dict | None = None,
          task: dict | None = None, model: dict | None = None):
    s = settings_for(name)
    return parse_config({
        "seed": 0, "task": task or s["task"], "model": model or s["model"],
        "learner": {"name": name, **s["hparams"], "inner_steps": steps, "first_order": first_order, **(hparams or {})},
        "training": {"iterations": 2, "meta_batch": 3, "eval_every": 0},
        "evaluation": {"tasks": 4, "chunk": 4, "lr_scales": [1.0]}, "dtype": "float64",
    })


def perturbed_meta(learner, gen: torch.Generator) -> dict:
    meta = learner.init_meta_params(generator=gen, dtype=F64)
    with torch.no_grad():
        for v in meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=F64))
    return {k: v.requires_grad_() for k, v in meta.items()}


def assert_matches_reference(comp, steps: int) -> None:
    learner = comp.learner
    gen = torch.Generator().manual_seed(5)
    meta = perturbed_meta(learner, gen)
    batch = comp.task.sample(3, generator=gen).to(dtype=F64)
    loss, grads, _ = meta_gradient(learner)(meta, batch, {})
    ref_loss = REFERENCES[learner.name](learner, meta, batch, {}, steps)
    assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=0)
    keys = list(meta)
    ref = torch.autograd.grad(ref_loss, [meta[k] for k in keys], allow_unused=True)
    for k, r in zip(keys, ref):
        r = torch.zeros_like(meta[k]) if r is None else r
        err = (grads[k] - r).abs().max() / r.abs().max().clamp_min(1e-12)
        assert err < 1e-8, f"{k}: relative error {err:.2e}"


# ============================================================================ PAMELA
@pytest.mark.parametrize(("n", "w", "expected"), [
    (5, 2, [(2, 0), (4, 2)]),
    (5, 1, [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4)]),
    (6, 3, [(3, 0), (6, 3)]),
    (4, 4, [(4, 0)]),
])
def test_pamela_skip_indices(n, w, expected):
    assert skip_indices(n, w) == expected


def test_pamela_meta_parameters_follow_the_skip_set():
    comp = build("pamela", steps=5, hparams={"skip_width": 2})
    meta = comp.learner.init_meta_params(generator=torch.Generator().manual_seed(0), dtype=F64)
    p_indices = sorted({int(k.split("/")[1][1:]) for k in meta if k.startswith("pamela/p")})
    q_indices = sorted({int(k.split("/")[1][1:]) for k in meta if k.startswith("pamela/q")})
    assert p_indices == [0, 2] and q_indices == [0, 1, 2, 3, 4]
    # digits_conv: conv Q is one value per output filter, FC Q per weight and bias element.
    assert meta["pamela/q0/conv0"].shape == (2,) and meta["pamela/q0/conv1"].shape == (3,)
    assert meta["pamela/q3/fc0.weight"].shape == meta["fc0.weight"].shape
    assert meta["pamela/q3/out.bias"].shape == meta["out.bias"].shape
    assert torch.all(meta["pamela/q4/conv1"] == 0.1) and float(meta["pamela/p2/fc0"]) == 0.0


def _sine_mlp(name: str, steps: int, **hp):
    return build(name, steps=steps, hparams=hp, task={"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6},
                 model={"name": "mlp", "hidden": [8, 8]})


def test_pamela_with_zero_skips_is_per_step_metasgd():
    steps = 3
    pam = _sine_mlp("pamela", steps, skip_width=1).learner
    sgd = _sine_mlp("metasgd", steps).learner
    gen = torch.Generator().manual_seed(1)
    theta = sgd.backbone.init_params(generator=gen, dtype=F64)
    batch = pam.task.sample(4, generator=gen).to(dtype=F64)
    alpha = {k: 0.01 + 0.05 * torch.rand(v.shape, generator=gen, dtype=F64) for k, v in theta.items()}
    meta_sgd = {**theta, **{f"lr/{k}": a for k, a in alpha.items()}}
    meta_pam = pam.init_meta_params(generator=torch.Generator().manual_seed(0), dtype=F64)
    assert all(float(v) == 0.0 for k, v in meta_pam.items() if k.startswith("pamela/p"))
    meta_pam.update(theta)
    for j in range(steps):
        for k, a in alpha.items():
            meta_pam[f"pamela/q{j}/{k}"] = a
    a = pam.batched(meta_pam, batch, {})["loss"]
    b = sgd.batched(meta_sgd, batch, {})["loss"]
    assert torch.allclose(a, b, rtol=1e-12, atol=0)
    # Per-step rates: a hand loop with a different Q_j at every step.
    for j in range(steps):
        for k in alpha:
            meta_pam[f"pamela/q{j}/{k}"] = alpha[k] * (j + 1)
    out = pam.batched(meta_pam, batch, {})["loss"]
    for i in range(batch.num_tasks):
        fast = dict(theta)
        for j in range(steps):
            g = grad(lambda f: pam.task.loss(pam.backbone.apply(f, batch.support_x[i]), batch.support_y[i]))(fast)
            fast = {k: fast[k] - alpha[k] * (j + 1) * g[k] for k in fast}
        expected = pam.task.loss(pam.backbone.apply(fast, batch.query_x[i]), batch.query_y[i])
        assert torch.allclose(out[i], expected, rtol=1e-12, atol=0)
    # A non-zero P changes the result.
    meta_pam["pamela/p1/out"] = torch.tensor(0.5, dtype=F64)
    assert not torch.allclose(pam.batched(meta_pam, batch, {})["loss"], out, rtol=1e-6, atol=0)


def test_pamela_skip_mixes_theta_t_minus_w_by_hand():
    # n = 2, w = 2, a one-weight linear model: theta_2 = (1 - P_0) theta~_2 + P_0 theta_0.
    task = Sine(shots=3, query=2)
    bb = Linear(input_shape=(1,), output_dim=1, bias=False)
    pam = PAMELA(backbone=bb, task=task, inner_steps=2, skip_width=2)
    x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=F64)
    y = torch.tensor([[2.0], [1.0], [0.0]], dtype=F64)
    th0, q0, q1, p0 = 0.3, 0.1, 0.2, 0.25
    meta = {"out.weight": torch.tensor([[th0]], dtype=F64), "pamela/q0/out.weight": torch.tensor([[q0]], dtype=F64),
            "pamela/q1/out.weight": torch.tensor([[q1]], dtype=F64), "pamela/p0/out": torch.tensor(p0, dtype=F64)}

    def dloss(th):  # d/dth mean((th x - y)^2)
        return float(2 * ((th * x - y) * x).mean())

    th1 = th0 - q0 * dloss(th0)
    th2 = (1 - p0) * (th1 - q1 * dloss(th1)) + p0 * th0
    state = pam.init_state(meta, x, y, {}, hp=pam.runtime_hparams(dtype=F64))
    for step in range(2):
        state = pam.inner_step(meta, state, x, y, {}, step=step, hp=pam.runtime_hparams(dtype=F64))
    assert math.isclose(float(state["w"]["out.weight"]), th2, rel_tol=1e-12)


def test_pamela_more_steps_than_trained():
    comp = build("pamela", steps=2)
    learner = comp.learner
    gen = torch.Generator().manual_seed(0)
    meta = learner.init_meta_params(generator=gen, dtype=F64)
    batch = comp.task.sample(2, generator=gen).to(dtype=F64)
    out = learner.batched(meta, batch, {}, steps=4, record=True)
    assert out["loss"].shape == (2, 5) and torch.isfinite(out["loss"]).all()
    strict = build("pamela", steps=2, hparams={"pamela_extra_steps": "error"}).learner
    with pytest.raises(ValueError, match="inner_steps = 2"):
        strict.batched(meta, batch, {}, steps=3)


@pytest.mark.parametrize("first_order", [False, True])
def test_pamela_skip_width_one_matches_reference(first_order):
    assert_matches_reference(build("pamela", steps=3, first_order=first_order, hparams={"skip_width": 1}), 3)


# ============================================================================ CxGrad
def _tiny_conv(channels: int = 4) -> Conv4:
    return Conv4(input_shape=(1, 8, 8), output_dim=3, channels=channels, blocks=2, conv_bias=False)


def test_cxgrad_scale_invariance_and_inverse_gradient_scaling():
    """Paper eq. 4: BN output unchanged when a conv weight is scaled by a > 0 (up to BN's eps);
    eq. 5: the gradient w.r.t. the scaled weight is 1/a times the unscaled one."""
    bb = _tiny_conv()
    gen = torch.Generator().manual_seed(0)
    params = bb.init_params(generator=gen, dtype=F64)
    x = torch.rand((6, 1, 8, 8), generator=gen, dtype=F64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    v = params["conv1.weight"] / params["conv1.weight"].norm()

    def loss_at(w):
        return torch.nn.functional.cross_entropy(bb.apply({**params, "conv1.weight": w}, x), y)

    ref_out = bb.apply({**params, "conv1.weight": 4.0 * v}, x)
    g_ref = grad(loss_at)(4.0 * v)
    for a in (1.0, 2.0, 8.0, 30.0):
        out = bb.apply({**params, "conv1.weight": a * v}, x)
        assert torch.allclose(out, ref_out, rtol=0, atol=2e-3 * ref_out.abs().max()), a
        g = grad(loss_at)(a * v)
        ratio = (g.norm() / g_ref.norm()).item()
        assert math.isclose(ratio, 4.0 / a, rel_tol=2e-3), (a, ratio)
    # And the effect is exactly the eps term: at a huge scale the outputs agree to round-off.
    big = bb.apply({**params, "conv1.weight": 1e4 * v}, x)
    bigger = bb.apply({**params, "conv1.weight": 1e5 * v}, x)
    assert torch.allclose(big, bigger, rtol=1e-9, atol=1e-9)


def test_cxgrad_igs_normalises_conv_layers_only():
    comp = build("cxgrad", steps=1)
    learner = comp.learner
    meta = learner.init_meta_params(generator=torch.Generator().manual_seed(0), dtype=F64)
    nu = torch.randn(learner.hparams["context_dim"], generator=torch.Generator().manual_seed(1), dtype=F64)
    gamma = learner.gammas(meta, nu)
    assert gamma.shape == (2,) and torch.all(gamma > 0)
    scaled = learner.igs(meta, {k: meta[k] for k in learner.backbone.adapted_keys()}, nu)
    for i, key in enumerate(("conv0.weight", "conv1.weight")):
        assert math.isclose(scaled[key].norm().item(), gamma[i].item(), rel_tol=1e-12)
    assert scaled["head.weight"] is meta["head.weight"] and scaled["head.bias"] is meta["head.bias"]
    # PyTorch's default Linear init: |W| <= 1/sqrt(fan_in).
    assert meta["cxgrad/g0.weight"].abs().max() <= 1 / math.sqrt(learner.hparams["context_dim"])
    assert meta["cxgrad/g1.weight"].shape == (2, learner.hparams["context_hidden"])


@pytest.mark.parametrize("model", [{"name": "mlp"}, {"name": "digits_conv"}])
def test_cxgrad_needs_batch_norm(model):
    with pytest.raises(ConfigError, match="batch norm"):
        parse_config({"task": {"name": "digits", "ways": 2} if model["name"] != "mlp" else {"name": "sine"},
                      "model": model, "learner": {"name": "cxgrad"}})


def test_cxgrad_stats_after_adaptation():
    comp = build("cxgrad", steps=2)
    learner = comp.learner
    gen = torch.Generator().manual_seed(0)
    meta = learner.init_meta_params(generator=gen, dtype=F64)
    out = learner.batched(meta, comp.task.sample(3, generator=gen).to(dtype=F64), {})
    assert set(k for k in out if k.startswith("stats/")) == {
        "stats/gamma/conv0", "stats/gamma/conv1", "stats/nu_norm", "stats/gamma_shift"}
    assert torch.all(out["stats/nu_norm"] > 0) and out["stats/gamma/conv0"].shape == (3,)


@pytest.mark.parametrize("hp", [
    {"context_update": "step"},
    {"cxgrad_detach_first_context_step": True},
    {"context_update": "step", "cxgrad_detach_first_context_step": True},
])
@pytest.mark.parametrize("first_order", [False, True])
def test_cxgrad_variants_match_reference(hp, first_order):
    assert_matches_reference(build("cxgrad", steps=2, first_order=first_order, hparams=hp), 2)


def test_cxgrad_detached_first_step_changes_the_meta_gradient():
    grads = []
    for detach in (False, True):
        comp = build("cxgrad", steps=2, hparams={"cxgrad_detach_first_context_step": detach})
        gen = torch.Generator().manual_seed(5)
        meta = perturbed_meta(comp.learner, gen)
        batch = comp.task.sample(3, generator=gen).to(dtype=F64)
        grads.append(meta_gradient(comp.learner)(meta, batch, {})[1])
    assert not torch.allclose(grads[0]["cxgrad/g0.weight"], grads[1]["cxgrad/g0.weight"], rtol=1e-6, atol=0)


# ============================================================================ Wormhole
def _flip_batch(signs: list[float], w_star: torch.Tensor, k: int, gen: torch.Generator) -> TaskBatch:
    n, d = len(signs), w_star.numel()
    x = torch.randn((n, 2 * k, d), generator=gen, dtype=F64)
    y = torch.tensor(signs, dtype=F64).view(n, 1, 1) * (x @ w_star.view(d, 1))
    return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


@pytest.mark.parametrize(("form", "steps", "lr", "tol"), [
    ("scalar", 30, 0.2, 1e-6),
    ("diag_layer", 30, 0.2, 1e-6),
    ("tanh", 200, 1.0, 0.05),
    ("diag_weight", 400, 0.2, 1e-3),
])
def test_wormhole_c_recovers_the_sign(form, steps, lr, tol):
    """y = s (w* . x), s = +-1, theta = w*: the C-steps drive C to s (tanh: towards s)."""
    gen = torch.Generator().manual_seed(0)
    w_star = torch.tensor([0.8, -0.6, 0.5], dtype=F64)
    bb = Linear(input_shape=(3,), output_dim=1, bias=False)
    learner = Wormhole(backbone=bb, task=Sine(), wormhole_c_form=form, wormhole_c_steps=steps, wormhole_c_lr=lr)
    signs = [1.0, -1.0, -1.0, 1.0]
    batch = _flip_batch(signs, w_star, 20, gen)
    out = learner.batched({"out.weight": w_star.view(1, 3)}, batch, {}, steps=0)
    s = torch.tensor(signs, dtype=F64)
    assert torch.allclose(out["stats/c_mean"], s, atol=tol), out["stats/c_mean"]
    assert torch.allclose(out["stats/c_abs_mean"], torch.ones(4, dtype=F64), atol=tol)
    assert out["loss"].max() < 0.05 if form == "tanh" else out["loss"].max() < 1e-6


def test_wormhole_c_shapes():
    bb = MLP(input_shape=(1,), output_dim=1, hidden=(8, 8))
    task = Sine()
    shapes = {form: Wormhole(backbone=bb, task=task, wormhole_c_form=form).c_shapes()
              for form in ("scalar", "tanh", "diag_layer", "diag_weight")}
    assert shapes["scalar"] == {"c": (1,)} and shapes["tanh"] == {"c": (1,)}
    assert shapes["diag_layer"] == {"c": (3,)}
    params = bb.init_params(generator=torch.Generator().manual_seed(0))
    assert shapes["diag_weight"] == {k: tuple(v.shape) for k, v in params.items()}
    last = Wormhole(backbone=bb, task=task, wormhole_c_form="diag_weight", wormhole_layers="last")
    assert last.c_shapes() == {"out.weight": (1, 8), "out.bias": (1,)}
    assert Wormhole(backbone=bb, task=task, wormhole_c_form="diag_layer", wormhole_layers="last").c_shapes() == {"c": (1,)}
    tanh = Wormhole(backbone=bb, task=task, wormhole_c_form="tanh")
    assert math.isclose(tanh.c_values(tanh.init_c(dtype=F64))["c"].item(), 0.9, rel_tol=1e-12)
    assert Wormhole(backbone=bb, task=task, wormhole_c_form="scalar").init_c()["c"].item() == 1.0
    # last = only the last linear cell is multiplied; w-steps still adapt every cell.
    raw = {"out.weight": torch.full((1, 8), -1.0), "out.bias": torch.full((1,), -1.0)}
    multiplied = last.apply_c(params, raw)
    assert torch.equal(multiplied["out.weight"], -params["out.weight"])
    assert torch.equal(multiplied["fc0.weight"], params["fc0.weight"])


@pytest.mark.parametrize("form", ["scalar", "diag_layer", "diag_weight", "tanh"])
@pytest.mark.parametrize("layers", ["all", "last"])
def test_wormhole_forms_match_reference(form, layers):
    hp = {"wormhole_c_form": form, "wormhole_layers": layers, "wormhole_c_init": 0.8}
    assert_matches_reference(build("wormhole", steps=2, hparams=hp), 2)


@pytest.mark.parametrize("first_order", [False, True])
def test_wormhole_c_first_order_matches_reference(first_order):
    hp = {"wormhole_c_first_order": True, "wormhole_layers": "last"}
    assert_matches_reference(build("wormhole", steps=2, first_order=first_order, hparams=hp), 2)
    # Stopping the C-step gradients changes the second-order meta-gradient.
    if not first_order:
        gen = torch.Generator().manual_seed(5)
        a = build("wormhole", steps=2, hparams=hp).learner
        b = build("wormhole", steps=2, hparams={**hp, "wormhole_c_first_order": False}).learner
        meta = perturbed_meta(a, gen)
        batch = a.task.sample(3, generator=gen).to(dtype=F64)
        ga, gb = meta_gradient(a)(meta, batch, {})[1], meta_gradient(b)(meta, batch, {})[1]
        assert not torch.allclose(ga["out.weight"], gb["out.weight"])


def test_wormhole_last_layer_on_a_conv_net_matches_reference():
    hp = {"wormhole_layers": "last"}
    comp = build("wormhole", steps=1, hparams=hp, task={"name": "digits", "ways": 2, "shots": 1, "query": 2},
                 model={"name": "digits_conv", "channels": [2, 3], "hidden": 6})
    assert comp.learner.c_keys == ("out.weight", "out.bias")
    assert_matches_reference(comp, 1)


@pytest.mark.parametrize(("section", "c0"), [
    ({}, 0.9),  # neither given: the inferred default, t_0 = atanh(0.9)
    ({"wormhole_c_init": 0.5}, 0.5),  # C_0 given: t_0 = atanh(C_0)
    ({"wormhole_c_init": math.tanh(1.0)}, math.tanh(1.0)),
    ({"wormhole_t_init": 1.0}, math.tanh(1.0)),  # t_0 given: C_0 = tanh(t_0)
    ({"wormhole_t_init": 1.0, "wormhole_c_init": math.tanh(1.0)}, math.tanh(1.0)),  # both, consistent
])
def test_wormhole_tanh_initial_value_readings(section, c0):
    """Each reading of the tanh form's C_0 is one setting; the learner starts from it and matches
    the reference (which starts from atanh(wormhole_c_init)); values() parses back unchanged."""
    comp = build("wormhole", steps=1, hparams={"wormhole_c_form": "tanh", **section})
    learner = comp.learner
    assert math.isclose(learner.c_values(learner.init_c(dtype=F64))["c"].item(), c0, rel_tol=1e-12)
    assert math.isclose(learner.config.wormhole_c_init, c0, rel_tol=1e-12)
    assert learner.config_class.parse(learner.hparams) == learner.config
    assert_matches_reference(comp, 1)


def test_wormhole_initial_value_is_validated():
    with pytest.raises(ConfigError, match=r"^field 'learner.wormhole_c_init': the tanh form needs -1 < C_0 < 1"):
        build("wormhole", steps=1, hparams={"wormhole_c_init": 1.0})
    with pytest.raises(ConfigError, match=r"^field 'learner.wormhole_t_init': tanh\(1\) = 0.761594 differs"):
        build("wormhole", steps=1, hparams={"wormhole_t_init": 1.0, "wormhole_c_init": 0.5})
    with pytest.raises(ConfigError, match=r"^field 'learner.wormhole_t_init': expected a number"):
        build("wormhole", steps=1, hparams={"wormhole_t_init": "one"})
    # Other forms take any C_0 (t_0 is the tanh form's only); one value alone (a search range's
    # end, a grid value) is checked by its own field's rules.
    assert build("wormhole", steps=1, hparams={"wormhole_c_form": "scalar", "wormhole_c_init": 1.3}).learner
    assert Wormhole.declared()["wormhole_c_init"].validate(1.3) == 1.3


def test_wormhole_defaults_are_the_papers_reading():
    """One C-step (Alg. 1 line 7), C_0 around 1 for the plain forms."""
    cfg = Wormhole.config_class.parse({"wormhole_c_form": "scalar"})
    assert cfg.wormhole_c_steps == 1 and cfg.wormhole_c_init == 1.0
    assert {h.name: h.source for h in Wormhole.hyperparameters}["wormhole_c_steps"] == "paper"
