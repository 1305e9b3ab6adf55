"""The training step without host syncs equals the step that checked every iteration: the
meta-parameters after each iteration (float64, 1e-12), and on divergence the exact iteration,
the last finite loss and the parameters before the bad step, although flags are read only
at log points. Written against a plain reference loop (the former per-step trainer)."""

from __future__ import annotations

import math

import pytest
import torch

from metatune.config import parse_config
from metatune.trial import Trainer

F64 = torch.float64


def config(**training):
    return {
        "seed": 0,
        "task": {"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6},
        "model": {"name": "mlp", "hidden": [8, 8]},
        "learner": {"name": "mtnet", "inner_lr": 0.05, "inner_steps": 2},
        "training": {"iterations": 30, "meta_batch": 3, "eval_every": 0, "log_every": 7, "checkpoint_every": 0,
                     **training},
        "evaluation": {"tasks": 4, "chunk": 4, "lr_scales": [1.0]},
        "dtype": "float64",
        "compile": False,
    }


class Reference:
    """The per-step loop: item() and an isfinite per gradient every iteration, for-loop Adam."""

    def __init__(self, cfg: dict) -> None:
        comp = parse_config(cfg)
        self.learner, self.task, self.cfg = comp.learner, comp.task, comp.config.training
        params = self.learner.init_meta_params(generator=torch.Generator().manual_seed(0), dtype=F64)
        self.meta = {k: v.requires_grad_() for k, v in params.items()}
        self.opt = torch.optim.Adam(list(self.meta.values()), lr=self.cfg.outer_lr, foreach=False)
        self.gen = torch.Generator().manual_seed(0 + 1_000_003)
        self.iteration, self.diverged_at, self.last_finite_loss = 0, None, None

    def step(self) -> bool:
        batch = self.task.sample(self.cfg.meta_batch, generator=self.gen).to(dtype=F64)
        noise = self.learner.sample_noise(self.cfg.meta_batch, generator=self.gen, meta_params=self.meta,
                                          steps=self.learner.hparams["inner_steps"])
        loss, _ = self.learner.meta_loss(self.meta, batch, noise)
        grads = torch.autograd.grad(loss, list(self.meta.values()))
        value = loss.item()
        if not (math.isfinite(value) and all(torch.isfinite(g).all() for g in grads)):
            self.diverged_at = self.iteration + 1
            return False
        if self.cfg.grad_clip is not None:
            grads = [g.clamp(-self.cfg.grad_clip, self.cfg.grad_clip) for g in grads]
        for p, g in zip(self.meta.values(), grads):
            p.grad = g
        self.opt.step()
        self.iteration += 1
        self.last_finite_loss = value
        return True


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


MAML = {"name": "maml", "inner_lr": 0.05, "inner_steps": 2}


# mtnet draws mask noise (tasks one batch per step); maml does not (tasks drawn in blocks).
@pytest.mark.parametrize(("grad_clip", "learner"), [(None, None), (0.05, None), (0.05, MAML)])
def test_parameters_after_every_iteration_equal_the_per_step_loop(grad_clip, learner):
    cfg = config(grad_clip=grad_clip)
    if learner is not None:
        cfg["learner"] = learner
    trainer, ref = Trainer.from_config(cfg), Reference(cfg)
    for it in range(1, 16):
        loss, finite = trainer._step()
        assert ref.step() and bool(finite)
        assert trainer.iteration == ref.iteration == it
        assert math.isclose(loss.item(), ref.last_finite_loss, rel_tol=1e-12)
        for k in ref.meta:
            assert rel(trainer.meta[k].detach(), ref.meta[k].detach()) < 1e-12, f"iteration {it}: {k}"


def test_divergence_is_found_at_its_exact_iteration_between_log_points():
    # A large outer rate blows up within a few dozen steps; flags are read every 7 iterations.
    cfg = config(outer_lr=1.0, iterations=400, log_every=7)
    cfg["learner"] = {"name": "maml", "inner_lr": 4.0, "inner_steps": 3}
    ref = Reference(cfg)
    while ref.iteration < 400 and ref.step():
        pass
    assert ref.diverged_at is not None and ref.diverged_at > 1, "the reference run did not diverge"
    assert (ref.diverged_at - 1) % 7 != 0, "not inside a window: the replay path would not run"
    trainer = Trainer.from_config(cfg)
    result = trainer.train()
    assert result.status == "diverged"
    assert result.diverged_at == ref.diverged_at
    assert result.iterations == ref.iteration == ref.diverged_at - 1
    assert result.last_finite_loss == pytest.approx(ref.last_finite_loss, rel=1e-12)
    for k in ref.meta:  # rewound to the last finite step, as if every step had been checked
        assert rel(trainer.meta[k].detach(), ref.meta[k].detach()) < 1e-12, k
    assert all(e["iteration"] < ref.diverged_at for e in result.history)
    assert result.compile["compiled"] is False and result.compile["compile_graphs"] == 0


@pytest.mark.parametrize(("learner", "training"), [
    (None, {}), (MAML, {"grad_clip": 0.05}), (MAML, {"outer_optimizer": "sgd", "outer_lr": 0.01}),
])
def test_compiled_training_follows_the_eager_run(learner, training):
    """compile: true -- the meta-gradient, the clip and the Adam or SGD update in one graph --
    trains the same parameters and optimiser state as eager (float64) and records its compile."""
    cfg = config(iterations=12, log_every=4, **training)
    if learner is not None:
        cfg["learner"] = learner
    eager, compiled = Trainer.from_config(cfg), Trainer.from_config({**cfg, "compile": True})
    eager.train()
    result = compiled.train()
    assert result.compile["compiled"] is True and result.compile["compile_graphs"] >= 1
    assert result.compile["compile_seconds"] > 0
    for k, p in eager.meta.items():
        assert rel(compiled.meta[k].detach(), p.detach()) < 1e-8, k
        for name, value in eager.optimizer.state[p].items():  # the state eager Adam would continue from
            assert rel(compiled.optimizer.state[compiled.meta[k]][name], value) < 1e-8, (k, name)


def test_compiled_checkpoint_continues_eager():
    """The compiled step keeps torch's Adam state layout: a checkpoint written by a compiled run
    continues uncompiled exactly where an all-eager run is."""
    cfg = {**config(iterations=12, log_every=4), "learner": MAML}
    eager, compiled = Trainer.from_config(cfg), Trainer.from_config({**cfg, "compile": True})
    for _ in range(6):
        eager._step()
        compiled._step()
    resumed = Trainer.from_config(cfg)
    resumed.load_state_dict(compiled.state_dict())
    for _ in range(6):
        eager._step()
        resumed._step()
    for k in eager.meta:
        assert rel(resumed.meta[k].detach(), eager.meta[k].detach()) < 1e-8, k


@pytest.mark.parametrize("learner", [None, MAML])
def test_checkpoint_inside_a_task_block_resumes_the_same_batches(learner):
    """Saved between log points (inside a block of pre-drawn training batches for maml), a
    checkpoint resumes the batches, and so the parameters, of the uninterrupted run exactly."""
    cfg = config(iterations=40, log_every=10)
    if learner is not None:
        cfg["learner"] = learner
    whole, first = Trainer.from_config(cfg), Trainer.from_config(cfg)
    for _ in range(13):
        whole._step()
        first._step()
    state = first.state_dict()
    assert state["task_block"] == ([3, 10] if learner else [0, 0])
    second = Trainer.from_config(cfg)
    second.load_state_dict(state)
    for _ in range(14):  # through the next log point into a new block
        loss, _ = whole._step()
        assert second._step()[0].item() == loss.item()
    for k in whole.meta:
        assert torch.equal(second.meta[k], whole.meta[k]), k
