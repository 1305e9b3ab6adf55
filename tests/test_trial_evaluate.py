"""Trainer and evaluation protocol against hand-computed and independent cases."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from metatune.cli import main
from metatune.config import parse_config
from metatune.errors import CheckpointError
from metatune.evaluate import evaluate, heldout_tasks, summarise
from metatune.trial import Trainer, load_checkpoint

BASE = {
    "task": {"name": "sine", "shots": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "learner": {"name": "maml", "inner_lr": 0.02},
    "training": {"iterations": 30, "meta_batch": 4, "eval_every": 10, "log_every": 10, "val_tasks": 8},
    "evaluation": {"tasks": 20, "shots": [3, 5], "inner_steps": 3, "lr_scales": [0.5, 1.0, 2.0], "chunk": 7},
    "dtype": "float64",
}


def test_summary_hand_case():
    s = summarise(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)
    assert s.mean == pytest.approx(2.5) and s.ci95 == pytest.approx(1.96 * std / 2) and s.n == 4
    bad = summarise(torch.tensor([1.0, math.inf, math.nan]))
    assert bad.nonfinite == 2 and bad.mean == math.inf and "diverged" in str(bad)


def test_step_zero_is_unadapted_loss_and_curve_length():
    comp = parse_config(BASE)
    gen = torch.Generator().manual_seed(0)
    meta = comp.learner.init_meta_params(generator=gen, dtype=torch.float64)
    res = evaluate(comp.learner, meta, tasks=10, shots=[5], steps=3, seed=4, chunk=3, dtype=torch.float64)
    r = res.by_shots[5]
    assert len(r.loss_by_step) == 4 and len(r.task_losses) == 10
    # Independent: the same held-out tasks, scored by hand without adaptation.
    tasks = heldout_tasks(comp.task, 10, seed=4, shots=5).to(dtype=torch.float64)
    by_hand = torch.stack([comp.task.loss(comp.backbone.apply(meta, tasks.query_x[i]), tasks.query_y[i]) for i in range(10)])
    assert r.loss_by_step[0].mean == pytest.approx(by_hand.mean().item(), rel=1e-12)


def test_lr_scale_equals_scaled_inner_lr():
    comp = parse_config(BASE)
    meta = comp.learner.init_meta_params(generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scaled = evaluate(comp.learner, meta, tasks=6, steps=2, lr_scales=[2.0], seed=3, dtype=torch.float64)
    doubled = parse_config({**BASE, "learner": {"name": "maml", "inner_lr": 0.04}})
    direct = evaluate(doubled.learner, meta, tasks=6, steps=2, lr_scales=[1.0], seed=3, dtype=torch.float64)
    assert scaled.lr_scale_curve[2.0].mean == pytest.approx(direct.by_shots[5].loss.mean, rel=1e-12)


def test_heldout_stream_is_independent_of_slicing():
    comp = parse_config(BASE)
    whole = heldout_tasks(comp.task, 25, seed=2)
    part = heldout_tasks(comp.task, 9, seed=2, start=13)
    assert torch.equal(whole.query_y[13:22], part.query_y)
    assert not torch.equal(heldout_tasks(comp.task, 5, seed=3).query_y, whole.query_y[:5])


def test_same_tasks_for_every_learner_and_chunking_invariant():
    comp = parse_config(BASE)
    meta = comp.learner.init_meta_params(generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = evaluate(comp.learner, meta, tasks=12, steps=1, seed=9, chunk=5, dtype=torch.float64)
    b = evaluate(comp.learner, meta, tasks=12, steps=1, seed=9, chunk=12, dtype=torch.float64)
    assert a.by_shots[5].task_losses == pytest.approx(b.by_shots[5].task_losses, rel=1e-12)


def test_training_reduces_loss_and_records_history():
    trainer = Trainer(parse_config({**BASE, "training": {**BASE["training"], "iterations": 200, "eval_every": 100, "log_every": 50, "val_tasks": 100}}))
    before = trainer.validate()["val_loss"]
    result = trainer.train()
    assert result.status == "completed"
    assert [h["iteration"] for h in result.history] == [50, 100, 150, 200]
    assert "val_loss" in result.history[1] and "val_loss" not in result.history[0]
    assert result.history[-1]["val_loss"] < 0.95 * before
    assert set(result.evaluation.lr_scale_curve) == {0.5, 1.0, 2.0}


def test_a_validation_is_never_skipped_for_a_log_period_that_does_not_divide_it(tmp_path):
    cfg = {**BASE, "training": {**BASE["training"], "iterations": 30, "eval_every": 10, "log_every": 4,
                                "checkpoint_every": 15}}
    seen = []
    result = Trainer(parse_config(cfg)).train(report=lambda m, t: seen.append(m["iteration"]), checkpoint_dir=tmp_path)
    assert seen == [10, 20, 30]
    # Logged at every multiple of 4, and at each validation and checkpoint besides.
    assert [h["iteration"] for h in result.history] == [4, 8, 10, 12, 15, 16, 20, 24, 28, 30]
    assert [h["iteration"] for h in result.history if "val_loss" in h] == [10, 20, 30]
    assert (tmp_path / "checkpoint.pt").is_file()


def test_sgd_outer_optimizer_is_plain_gradient_descent():
    cfg = {**BASE, "training": {**BASE["training"], "outer_optimizer": "sgd", "outer_lr": 0.1}}
    trainer = Trainer(parse_config(cfg))
    before = {k: v.detach().clone() for k, v in trainer.meta.items()}
    gen_state = trainer.generator.get_state()
    trainer.step()
    # Independent: the same batch's meta-gradient, applied by hand.
    probe = Trainer(parse_config(cfg))
    probe.generator.set_state(gen_state)
    batch = probe.task.sample(4, generator=probe.generator).to(dtype=torch.float64)
    loss, _ = probe.learner.meta_loss(probe.meta, batch, {})
    grads = torch.autograd.grad(loss, list(probe.meta.values()))
    for (k, v), g in zip(before.items(), grads):
        assert torch.allclose(trainer.meta[k], v - 0.1 * g, rtol=1e-10, atol=1e-12), k


def test_divergence_recorded_not_raised():
    cfg = {**BASE, "learner": {"name": "maml", "inner_lr": 1e6, "inner_steps": 3}}
    result = Trainer(parse_config(cfg)).train()
    assert result.status == "diverged"
    assert result.diverged_at is not None and result.diverged_at <= 30
    assert result.evaluation is None


def test_report_callback_metrics_are_finite():
    seen = []
    Trainer(parse_config(BASE)).train(report=lambda m, t: seen.append(m))
    assert [m["iteration"] for m in seen] == [10, 20, 30]
    assert all(math.isfinite(v) for m in seen for v in m.values()) and all(m["diverged"] == 0 for m in seen)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    trainer = Trainer(parse_config(BASE))
    path = trainer.save(tmp_path / "c.pt")
    assert load_checkpoint(path)["iteration"] == 0
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.pt"):
        Trainer.restore(tmp_path / "trunc.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")


def _run_cli(tmp_path, name, config, *extra):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / f"out-{name}"
    assert main(["train", str(cfg), "--no-progress", "--output", str(out), *extra]) == 0
    return json.loads((out / "result.json").read_text()), out


def test_cli_train_is_reproducible_and_resumable(tmp_path):
    a, _ = _run_cli(tmp_path, "a", BASE)
    b, _ = _run_cli(tmp_path, "b", BASE)
    c, _ = _run_cli(tmp_path, "c", BASE, "--seed", "5")
    assert a["evaluation"] == b["evaluation"]
    assert a["evaluation"] != c["evaluation"]
    assert a["status"] == "completed" and a["evaluation"]["by_shots"]["3"]["loss"]["n"] == 20
    # Interrupted after 10 iterations, then resumed: same numbers as the uninterrupted run.
    half = {**BASE, "training": {**BASE["training"], "checkpoint_every": 10}}
    _, out = _run_cli(tmp_path, "d", half, "--iterations", "10")
    d, _ = _run_cli(tmp_path, "d", half, "--resume")
    assert d["iterations"] == 30
    assert d["evaluation"] == a["evaluation"]
