"""Building blocks for a learner's independent per-task reference.

A reference recomputes a learner's meta-loss with a plain Python loop over the tasks of a
batch and ``torch.autograd.grad(create_graph=not first_order)``, written from the learner's
update rule and sharing nothing with its vmapped implementation but the backbone's forward.
The contract (:mod:`metatune.testing.learner_contract`) differentiates it with ordinary
autograd and compares that with the learner's meta-gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from metatune.learners.base import Learner
from metatune.tasks.base import TaskBatch

__all__ = ["Reference", "inner_grad", "per_task_sgd", "task_loss"]


class Reference(Protocol):
    """``(learner, meta, batch, noise, steps) -> mean query loss`` after ``steps`` inner steps,
    with ``meta``'s tensors (which require grad) as the leaves of the graph."""

    def __call__(
        self, learner: Learner[Any], meta: dict[str, Tensor], batch: TaskBatch, noise: dict[str, Tensor],
        steps: int,
    ) -> Tensor: ...


def task_loss(learner: Learner[Any], prediction: Tensor, target: Tensor) -> Tensor:
    """One task's loss as ``loss_reduction`` defines it, apart from ``Learner.loss``: the task's
    mean, or the sum of every example's own loss (Wormhole eq. 8), one example at a time."""
    if learner.config.loss_reduction == "mean":
        return learner.task.loss(prediction, target)
    n = target.shape[0]
    return torch.stack([learner.task.loss(prediction[i:i + 1], target[i:i + 1]) for i in range(n)]).sum()


def inner_grad(loss: Tensor, tensors: Sequence[Tensor], first_order: bool) -> tuple[Tensor, ...]:
    """The inner-loop gradient: kept in the graph (second order) unless ``first_order``."""
    return torch.autograd.grad(loss, list(tensors), create_graph=not first_order)


def per_task_sgd(
    learner: Learner[Any], meta: dict[str, Tensor], batch: TaskBatch, steps: int, *,
    rate: Callable[[str], Tensor | float], keys: Sequence[str] | None = None,
) -> Tensor:
    """Per task: ``steps`` of ``w <- w - rate(key) * grad_w L_support`` on ``keys`` (default:
    the backbone's adapted keys), then the mean over tasks of the query loss."""
    keys = list(learner.backbone.adapted_keys() if keys is None else keys)
    first_order = learner.config.first_order
    total = meta[keys[0]].new_zeros(())  # 0 + x == x exactly: the sum is the plain loop's
    for i in range(batch.num_tasks):
        fast = dict(meta)
        for _ in range(steps):
            loss = task_loss(learner, learner.backbone.apply(fast, batch.support_x[i]), batch.support_y[i])
            grads = inner_grad(loss, [fast[k] for k in keys], first_order)
            fast.update({k: fast[k] - rate(k) * g for k, g in zip(keys, grads, strict=True)})
        total = total + task_loss(learner, learner.backbone.apply(fast, batch.query_x[i]), batch.query_y[i])
    return total / batch.num_tasks
