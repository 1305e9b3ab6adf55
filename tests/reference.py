"""Independent per-task references for every learner: a plain Python loop over tasks with
``torch.autograd.grad(create_graph=not first_order)``, written from the update rules in
algorithms.md, sharing nothing with the vmapped implementation but the backbone's forward.

A new learner registers its reference here; the contract suite fails for a learner without one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from metatune.learners import Learner
from metatune.tasks import TaskBatch

Reference = Callable[[Learner, dict[str, Tensor], TaskBatch, dict[str, Tensor], int], Tensor]
REFERENCES: dict[str, Reference] = {}


def reference(*names: str) -> Callable[[Reference], Reference]:
    def deco(fn: Reference) -> Reference:
        for n in names:
            REFERENCES[n] = fn
        return fn

    return deco


def _grad(loss: Tensor, tensors: list[Tensor], first_order: bool) -> tuple[Tensor, ...]:
    return torch.autograd.grad(loss, tensors, create_graph=not first_order)


def _sgd_loop(learner: Learner, meta: dict, batch: TaskBatch, steps: int, rate) -> Tensor:
    """Per-task loop: ``steps`` of theta <- theta - rate(key) * grad, then the mean query loss."""
    keys = list(learner.backbone.adapted_keys())
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(meta)
        for _ in range(steps):
            loss = learner.task.loss(learner.backbone.apply(fast, batch.support_x[i]), batch.support_y[i])
            grads = _grad(loss, [fast[k] for k in keys], learner.hparams["first_order"])
            fast.update({k: fast[k] - rate(k) * g for k, g in zip(keys, grads)})
        total = total + learner.task.loss(learner.backbone.apply(fast, batch.query_x[i]), batch.query_y[i])
    return total / batch.num_tasks


@reference("maml", "fomaml")
def maml_reference(learner: Learner, meta: dict, batch: TaskBatch, noise: dict, steps: int) -> Tensor:
    return _sgd_loop(learner, meta, batch, steps, lambda key: learner.hparams["inner_lr"])


@reference("metasgd")
def metasgd_reference(learner: Learner, meta: dict, batch: TaskBatch, noise: dict, steps: int) -> Tensor:
    return _sgd_loop(learner, meta, batch, steps, lambda key: meta["lr/" + key])


# References of the other learner families live beside this file and register on import.
import reference_mtnet  # noqa: E402,F401
import reference_extra  # noqa: E402,F401
