"""Trivial baselines: what a predictor that learns nothing scores on the very test tasks a
study scores its learners on (the same held-out stream, seed and split as
:func:`metatune.evaluate.evaluate`), so every number in a table has a floor beside it.

Regression: predicting 0, and predicting the task's support mean. Classification: chance, a
uniform guess (zero logits: loss log N, expected accuracy 1/N). Losses use the task's own loss
function, so they follow whatever reduction the task is configured with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import vmap

from metatune.evaluate import heldout_tasks
from metatune.tasks.base import Split, TaskDistribution

__all__ = ["Baseline", "trivial_baselines"]


@dataclass(frozen=True)
class Baseline:
    #: What the predictor does ("predicting 0", "predicting the support mean", "chance").
    name: str
    #: Mean test loss over the tasks.
    loss: float
    #: Mean test accuracy (classification only).
    accuracy: float | None = None


def trivial_baselines(
    task: TaskDistribution,
    *,
    tasks: int,
    shots: int | None,
    seed: int,
    split: Split = "test",
    reduction: Literal["mean", "sum"] = "mean",
) -> list[Baseline]:
    """The trivial predictors' scores on tasks ``0 .. tasks`` of the held-out stream ``seed``;
    ``reduction`` as the learners' ``loss_reduction`` (a task's loss over its query examples)."""
    batch = heldout_tasks(task, tasks, seed=seed, shots=shots, split=split)
    query_y = batch.query_y
    per_task = float(query_y.shape[1]) if reduction == "sum" else 1.0

    def mean_loss(prediction: torch.Tensor) -> float:
        return float(vmap(task.loss)(prediction, query_y).mean()) * per_task

    if task.problem == "regression":
        zero = torch.zeros_like(query_y)
        support_mean = batch.support_y.mean(dim=1, keepdim=True).expand_as(query_y)
        return [
            Baseline("predicting 0", mean_loss(zero)),
            Baseline("predicting the support mean", mean_loss(support_mean)),
        ]
    width = 1 if task.problem == "binary" else task.output_dim
    logits = torch.zeros((*query_y.shape, width) if task.problem != "binary" else (*query_y.shape, 1))
    classes = 2 if task.problem == "binary" else width
    return [Baseline("chance (a uniform guess)", mean_loss(logits), accuracy=1.0 / classes)]
