"""The task-distribution contract: sample a whole meta-batch as tensors."""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["Problem", "TaskBatch", "TaskDistribution", "Split"]

Problem = Literal["regression", "classification", "binary"]
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class TaskBatch:
    """A meta-batch: every tensor has the task dimension first.

    ``support_x [B, K, ...]``, ``support_y [B, K, ...]``, ``query_x [B, Q, ...]``,
    ``query_y [B, Q, ...]``. Regression targets are float ``[B, N, 1]``; class labels are
    int64 ``[B, N]``; binary labels are float ``[B, N]`` in {0, 1}.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def to(self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TaskBatch:
        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                t = t.to(dtype)
            return t.to(device) if device is not None else t

        return TaskBatch(*(move(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def __getitem__(self, index: int | slice) -> TaskBatch:
        return TaskBatch(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


class TaskDistribution(abc.ABC):
    """A distribution over tasks. Subclasses are keyword-only frozen dataclasses whose fields
    are the YAML settings; ``shots`` is the support size (per class for classification).

    ``sample`` draws everything from the given generator (on the CPU), so the same generator
    state gives the same batch on every machine.
    """

    name: ClassVar[str]
    problem: ClassVar[Problem]
    shots: int

    @abc.abstractmethod
    def sample(
        self, num_tasks: int, *, generator: torch.Generator, shots: int | None = None, split: Split = "train"
    ) -> TaskBatch:
        """Sample ``num_tasks`` tasks; ``shots`` overrides the configured support size."""

    #: Whether :meth:`sample_block` is cheaper than calling :meth:`sample` once per batch (a
    #: vectorised draw). The trainer then draws training batches in blocks; otherwise one by one.
    samples_in_blocks: ClassVar[bool] = False

    def sample_block(
        self, blocks: int, num_tasks: int, *, generator: torch.Generator, shots: int | None = None,
        split: Split = "train",
    ) -> TaskBatch:
        """``blocks`` meta-batches stacked on a new leading dimension, with exactly the values of
        -- and leaving the generator as -- ``blocks`` consecutive :meth:`sample` calls."""
        batches = [self.sample(num_tasks, generator=generator, shots=shots, split=split) for _ in range(blocks)]
        return TaskBatch(*(torch.stack([getattr(b, f.name) for b in batches]) for f in dataclasses.fields(TaskBatch)))

    @property
    @abc.abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example."""

    @property
    @abc.abstractmethod
    def output_dim(self) -> int:
        """Width of the model output (1 for regression and binary tasks, N for N-way)."""

    def trivial_baseline(self) -> tuple[str, float] | None:
        """What a predictor that learns nothing scores on this distribution's test loss (a
        frame for every number the study table shows), as (what it is, value); None if unknown."""
        return None

    def default_backbone(self) -> dict:
        """The backbone section used when a config gives none."""
        return {"name": "mlp"}

    # Losses are per task (no task dimension) so learners can vmap them.
    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.problem == "regression":
            return F.mse_loss(prediction, target)
        if self.problem == "binary":
            return F.binary_cross_entropy_with_logits(prediction.squeeze(-1), target)
        return F.cross_entropy(prediction, target)

    def accuracy(self, prediction: Tensor, target: Tensor) -> Tensor | None:
        if self.problem == "regression":
            return None
        if self.problem == "binary":
            return ((prediction.squeeze(-1) > 0).to(target.dtype) == target).float().mean()
        return (prediction.argmax(-1) == target).float().mean()
