"""The compiled path: every shipped learner compiles (fullgraph, no fallback) and equals the
eager path in float64, at 1 and 3 inner steps, for the meta-gradient and the evaluation
forward; numeric settings are tensor inputs, so a 6-value alpha grid compiles once; a
user-written learner that fails to compile falls back with one warning, a shipped one raises;
the persistent cache serves a second process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from contract_settings import settings_for
from reference import REFERENCES

from metatune.config import parse_config
from metatune.engine import COMPILE_STATS, evaluation_forward, meta_gradient, train_step
from metatune.errors import ConfigError
from metatune.learners import LEARNERS, MAML, MTNet, is_shipped
from metatune.models import MLP
from metatune.tasks import Sine

F64 = torch.float64
NAMES = LEARNERS.names()


#: The smallest structure of each learner: Inductor's C++ build time grows with the graph, and
#: second-order conv graphs take minutes on 2 cores. The contract suite covers the larger
#: backbones in eager mode; what this file checks is that every learner's step compiles
#: (fullgraph) and computes the same thing. CxGrad needs conv + batch norm.
SINE_TINY = {"task": {"name": "sine", "protocol": "metasgd", "shots": 4, "query": 5}, "model": {"name": "mlp", "hidden": [6]}}
COMPILE_SETTINGS = {
    "cxgrad": {"task": {"name": "digits", "ways": 2, "shots": 1, "query": 1},
               "model": {"name": "conv4", "channels": 2, "blocks": 1, "conv_bias": False}},
}


def build(name: str, steps: int, **hparams):
    s = settings_for(name)
    where = COMPILE_SETTINGS.get(name, SINE_TINY)
    return parse_config({
        "task": where["task"], "model": where["model"],
        "learner": {"name": name, **s["hparams"], "inner_steps": steps, **hparams},
        "training": {"iterations": 4, "meta_batch": 3}, "dtype": "float64",
    })


def inputs(comp, steps: int, batches: int = 2, tasks: int = 3, training: bool = True):
    learner = comp.learner
    gen = torch.Generator().manual_seed(3)
    meta = learner.init_meta_params(generator=gen, dtype=F64)
    with torch.no_grad():  # no parameter at a symmetric initial value (zero biases, identity T)
        for v in meta.values():
            v.add_(0.05 * torch.randn(v.shape, generator=gen, dtype=F64))
    meta = {k: v.requires_grad_() for k, v in meta.items()}
    data = []
    for _ in range(batches):
        batch = comp.task.sample(tasks, generator=gen).to(dtype=F64)
        noise = learner.sample_noise(tasks, generator=gen, meta_params=meta, steps=steps, training=training)
        data.append((batch, noise))
    return meta, data


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_every_learner_compiles_and_equals_eager(name, steps, caplog):
    comp = build(name, steps)
    learner = comp.learner
    assert is_shipped(type(learner))
    meta, data = inputs(comp, steps)
    plain, compiled = meta_gradient(learner), meta_gradient(learner, compile=True)
    before = COMPILE_STATS.snapshot()
    with caplog.at_level(logging.WARNING, logger="metatune.engine"):
        for batch, noise in data:  # new values, same shapes: one graph
            loss, grads, out = compiled(meta, batch, noise)
            ref_loss, ref_grads, ref_out = plain(meta, batch, noise)
            assert rel_err(loss, ref_loss.detach()) < 1e-8
            assert rel_err(out["loss"], ref_out["loss"].detach()) < 1e-8
            for k in meta:
                assert grads[k].dtype == F64 and grads[k].shape == meta[k].shape
                assert rel_err(grads[k], ref_grads[k]) < 1e-8, f"{name} {k}: {rel_err(grads[k], ref_grads[k]):.2e}"
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert COMPILE_STATS.since(before)["compile_graphs"] <= 1, "recompiled for a batch of the same shapes"
    # The gradients are fresh tensors: the trainer clips them in place.
    storages = [t.untyped_storage().data_ptr() for t in [*grads.values(), *meta.values()]]
    assert len(set(storages)) == len(storages)
    # And against the independent per-task loop (not only against our own eager path).
    batch, noise = data[-1]
    ref = REFERENCES[name](learner, meta, batch, noise, steps)
    ref_grads = torch.autograd.grad(ref, list(meta.values()), allow_unused=True)
    for k, g in zip(meta, ref_grads):
        if g is not None:
            assert rel_err(grads[k], g) < 1e-8, f"{name} {k} vs per-task reference"


@pytest.mark.parametrize("name", NAMES)
def test_every_learner_evaluates_compiled_as_eager(name, caplog):
    """The evaluation protocol's call (record every step, lr scale as a tensor) compiled."""
    comp = build(name, 3)
    meta, data = inputs(comp, 3, batches=1, tasks=4, training=False)
    meta = {k: v.detach() for k, v in meta.items()}
    (batch, noise), = data
    with caplog.at_level(logging.WARNING, logger="metatune.engine"):
        for scale in (1.0, 0.5):  # a new lr scale reuses the graph
            got = evaluation_forward(comp.learner, meta, batch, noise, steps=3, lr_scale=scale, compile=True)
            want = evaluation_forward(comp.learner, meta, batch, noise, steps=3, lr_scale=scale, compile=False)
            assert set(got) == set(want)
            for k in want:
                assert got[k].shape == want[k].shape
                assert rel_err(got[k].double(), want[k].double()) < 1e-8, f"{name} {k} at lr scale {scale}"
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def _vary(learner_cls, factor: float) -> dict[str, float]:
    """Every numeric setting moved by ``factor`` (inside its valid range)."""
    out = {}
    for h in learner_cls.hyperparameters:
        if h.name == "wormhole_t_init":
            continue  # C_0's other spelling for the tanh form: given C_0, t_0 follows (and must agree)
        if h.kind == "float":
            value = float(h.default) * factor if h.default else 0.25
            if h.high is not None:
                value = min(value, h.high)
            if h.name == "wormhole_c_init":
                value = 0.5  # another C_0 the tanh form accepts (|C_0| < 1)
            out[h.name] = value
    return out


@pytest.mark.parametrize("name", NAMES)
def test_numeric_settings_reach_the_step_only_as_tensors(name):
    """A learner built with one set of numeric values, called with the hp tensors of another,
    gives exactly the other's meta-gradient: no value is read as a constant inside the step
    (it would be baked into the compiled graph and shared by every trial of the structure)."""
    cls = LEARNERS.get(name)
    varied = _vary(cls, 1.3)
    base, other = build(name, 2), build(name, 2, **varied)
    meta, data = inputs(base, 2, batches=1)
    (batch, noise), = data
    hp = other.learner.runtime_hparams(dtype=F64)
    _, got, _ = meta_gradient(base.learner)(meta, batch, noise, hp)
    _, want, _ = meta_gradient(other.learner)(meta, batch, noise)
    for k in meta:
        assert torch.equal(got[k], want[k]), f"{name} {k}: a numeric setting is read as a constant"
    # And the tensors are what the step reads (every learner scales its inner step by lr_scale).
    _, scaled, _ = meta_gradient(base.learner)(meta, batch, noise, {**hp, "lr_scale": hp["lr_scale"] * 1.3})
    assert any(not torch.equal(scaled[k], got[k]) for k in meta), "hp had no effect"


def test_alpha_grid_compiles_once():
    """Six values of inner_lr (and of MT-net's mask temperature), one learner structure each:
    one compilation per structure, and every value gives its own eager result."""
    task = Sine(protocol="metasgd", shots=5, query=6)
    before = COMPILE_STATS.snapshot()
    for cls, masked in ((MAML, False), (MTNet, True)):
        for i, alpha in enumerate([1e-3, 1e-2, 0.1, 0.3, 1.0, 10.0]):
            hp = {"inner_lr": alpha} | ({"mask_temperature": 0.5 + i} if masked else {})
            learner = cls(backbone=MLP(hidden=(7, 5)), task=task, inner_steps=2, **hp)  # a shape no other test uses
            gen = torch.Generator().manual_seed(1)
            meta = {k: v.requires_grad_() for k, v in learner.init_meta_params(generator=gen, dtype=F64).items()}
            batch = task.sample(4, generator=gen).to(dtype=F64)
            noise = learner.sample_noise(4, generator=gen, meta_params=meta, steps=2)
            _, grads, _ = meta_gradient(learner, compile=True)(meta, batch, noise)
            _, ref, _ = meta_gradient(learner)(meta, batch, noise)
            for k in meta:
                assert rel_err(grads[k], ref[k]) < 1e-8, f"{cls.__name__} alpha={alpha} {k}"
    assert COMPILE_STATS.since(before)["compile_graphs"] == 2  # MAML once, MT-net once


class _UserMAML(MAML):
    """A user-written learner (not shipped): it may fall back to eager, with one warning."""

    name = "user_maml"


def _broken_compile(*args, **kwargs):
    def run(*a, **kw):
        raise NotImplementedError("unsupported op in the traced graph")

    return run


def _user_setup(cls, hidden):
    task = Sine(protocol="metasgd", shots=5, query=6)
    learner = cls(backbone=MLP(hidden=hidden), task=task, inner_lr=0.05, inner_steps=1)
    gen = torch.Generator().manual_seed(0)
    meta = {k: v.requires_grad_() for k, v in learner.init_meta_params(generator=gen, dtype=F64).items()}
    return learner, meta, [task.sample(3, generator=gen).to(dtype=F64) for _ in range(3)]


def test_user_learner_falls_back_once_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch, "compile", _broken_compile)
    learner, meta, data = _user_setup(_UserMAML, (6, 4))
    assert not is_shipped(_UserMAML)
    compiled, plain = meta_gradient(learner, compile=True), meta_gradient(learner)
    with caplog.at_level(logging.WARNING, logger="metatune.engine"):
        for batch in data:
            loss, grads, _ = compiled(meta, batch, {})
            ref_loss, ref, _ = plain(meta, batch, {})
            assert torch.equal(loss, ref_loss) and all(torch.equal(grads[k], ref[k]) for k in meta)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "uncompiled" in warnings[0], warnings


def test_user_learner_train_step_falls_back_once_and_trains_as_eager(monkeypatch, caplog):
    """The Trainer's step (meta-gradient + Adam in one graph) of a user learner that cannot
    compile: one warning, then exactly the uncompiled step (meta-gradient, optimizer.step())."""
    monkeypatch.setattr(torch, "compile", _broken_compile)
    learner, meta, data = _user_setup(_UserMAML, (6, 4))
    twin = {k: v.detach().clone().requires_grad_() for k, v in meta.items()}
    step = train_step(learner, torch.optim.Adam(list(meta.values()), lr=1e-2), compile=True)
    ref = train_step(learner, torch.optim.Adam(list(twin.values()), lr=1e-2))
    hp = learner.runtime_hparams(dtype=F64)
    with caplog.at_level(logging.WARNING, logger="metatune.engine"):
        for batch in data:
            assert torch.equal(step(meta, batch, {}, hp)[0], ref(twin, batch, {}, hp)[0])
    assert all(torch.equal(meta[k], twin[k]) for k in meta)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "uncompiled" in warnings[0], warnings


def test_shipped_learner_never_falls_back_silently(monkeypatch):
    monkeypatch.setattr(torch, "compile", _broken_compile)
    learner, meta, data = _user_setup(MAML, (6, 5))
    with pytest.raises(RuntimeError, match="torch.compile failed for shipped"):
        meta_gradient(learner, compile=True)(meta, data[0], {})


def test_bad_inputs_raise_the_eager_error(monkeypatch):
    """An error the eager path raises too is the caller's, not the compiler's."""
    monkeypatch.setattr(torch, "compile", _broken_compile)
    learner, meta, data = _user_setup(_UserMAML, (6, 3))
    bad = type(data[0])(data[0].support_x[:, :, :0], *[getattr(data[0], f) for f in ("support_y", "query_x", "query_y")])
    with pytest.raises(RuntimeError) as info:
        meta_gradient(learner, compile=True)(meta, bad, {})
    assert "torch.compile" not in str(info.value)


def test_compile_setting_and_auto_rule():
    base = {"task": {"name": "sine"}, "learner": {"name": "maml"}}
    assert parse_config(base).config.compile == "auto"
    short = parse_config({**base, "training": {"iterations": 100}}).config
    long = parse_config({**base, "training": {"iterations": 60000}}).config
    assert not short.compiles() and long.compiles()
    assert parse_config({**base, "compile": True, "training": {"iterations": 10}}).config.compiles()
    assert not parse_config({**base, "compile": False}).config.compiles()
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "compile": "maybe"})
    assert info.value.field == "compile" and "auto" in str(info.value)


_PROBE = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from metatune.engine import COMPILE_STATS, meta_gradient
    from metatune.learners import MAML
    from metatune.models import MLP
    from metatune.tasks import Sine
    task = Sine(protocol="metasgd", shots=5, query=6)
    learner = MAML(backbone=MLP(hidden=(6, 6)), task=task, inner_lr=float(sys.argv[1]), inner_steps=1)
    gen = torch.Generator().manual_seed(0)
    meta = {k: v.requires_grad_() for k, v in learner.init_meta_params(generator=gen).items()}
    meta_gradient(learner, compile=True)(meta, task.sample(4, generator=gen), {})
    print(json.dumps(COMPILE_STATS.since(type(COMPILE_STATS)())))
""")


def test_persistent_cache_serves_the_next_process(tmp_path):
    """Two processes (two trials on a node) with different alphas: the second loads the graph."""
    env = {**os.environ, "METATUNE_COMPILE_CACHE": str(tmp_path / "cc")}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    runs = []
    for alpha in ("0.01", "0.5"):
        proc = subprocess.run([sys.executable, "-c", _PROBE, alpha], env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["compile_graphs"] == 1 and cold["compile_cache_hits"] == 0
    assert warm["compile_graphs"] == 1 and warm["compile_cache_hits"] == 1, runs
    assert warm["compile_seconds"] < cold["compile_seconds"]
    assert any((tmp_path / "cc").iterdir())
