"""Avg-Threshold binary classification (Wormhole MAML §4.1, algorithms.md §7.3).

x ~ U[0, 1]^d with d = 5 (uniform [inferred]); each task draws a threshold tau ~ U[0, 1]
(uniform [inferred]) and a sign s ~ U{-1, +1}; the label is y = 1 iff s * mean(x) > s * tau.
The sign makes tasks pull a shared model in opposite directions (the conflict Wormhole MAML
targets). Model: one linear layer (d -> 1 logit, with bias), binary cross-entropy. The support
size is unspecified in the paper; 10 support and 10 query points [inferred].

The mean of d uniforms concentrates near 0.5 (sd ~ 0.13 for d = 5), so tasks with tau far
from 0.5 are nearly all one label; that is the faithful reading of the paper (tau in [0, 1])
and is the default. ``threshold: [0.3, 0.7]`` (a task section's setting, within [0, 1]) is the
other reading, with fewer one-label tasks (it moves vanilla MAML's loss, e.g. to 5.72).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from metatune._fields import positive
from metatune.errors import ConfigError
from metatune.tasks._checks import interval
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution

__all__ = ["AvgThreshold"]


@dataclass(frozen=True, kw_only=True)
class AvgThreshold(TaskDistribution):
    problem: ClassVar[Problem] = "binary"

    dim: int = 5
    shots: int = 10
    query: int = 10
    #: Range [low, high] of the per-task threshold tau ~ U[low, high], within [0, 1] (the paper's
    #: tau in [0, 1]: the default).
    threshold: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        positive(self.dim, "dim")
        positive(self.shots, "shots")
        positive(self.query, "query")
        interval(self.threshold, "threshold", strict=False)
        if not 0.0 <= self.threshold[0] <= self.threshold[1] <= 1.0:  # outside: every label the same
            raise ConfigError("threshold", f"expected 0 <= low <= high <= 1, got {list(self.threshold)!r}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def output_dim(self) -> int:
        return 1

    def default_backbone(self) -> dict:
        return {"name": "linear"}

    def sample(
        self, num_tasks: int, *, generator: torch.Generator, shots: int | None = None, split: Split = "train"
    ) -> TaskBatch:
        k = self.shots if shots is None else shots
        q = self.query
        lo, hi = self.threshold
        tau = torch.rand((num_tasks, 1), generator=generator, dtype=torch.float64) * (hi - lo) + lo
        sign = torch.randint(2, (num_tasks, 1), generator=generator).to(torch.float64) * 2 - 1
        x = torch.rand((num_tasks, k + q, self.dim), generator=generator, dtype=torch.float32)
        # Labels from the float32 inputs the model sees (mean taken in float64).
        y = (sign * x.to(torch.float64).mean(-1) > sign * tau).to(torch.float32)
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
