"""Sine-wave regression in the two published protocols (algorithms.md §7.1).

``maml``    (Finn et al., cbfinn/maml): y = A sin(x - phi), K support and K query points.
``metasgd`` (Meta-SGD, MT-net thesis Tables 6.1/6.2, PAMELA): y = A sin(omega x - phi),
            omega ~ U[0.8, 1.2], K support and 10 query points.
Both: A ~ U[0.1, 5.0], phi ~ U[0, pi], x ~ U[-5, 5].
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from metatune._fields import positive
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution

__all__ = ["Sine"]


@functools.lru_cache(maxsize=8)
def _affine(ranges: tuple[tuple[float, float], ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi - lo, lo) per range, shaped to scale a [ranges, tasks, 1, 1] draw (made once)."""
    width = torch.tensor([hi - lo for lo, hi in ranges], dtype=torch.float64).view(-1, 1, 1, 1)
    return width, torch.tensor([lo for lo, _ in ranges], dtype=torch.float64).view(-1, 1, 1, 1)


@dataclass(frozen=True, kw_only=True)
class Sine(TaskDistribution):
    problem: ClassVar[Problem] = "regression"

    protocol: Literal["maml", "metasgd"] = "metasgd"
    shots: int = 10
    #: Query points per task; null means the protocol's own (K for ``maml``, 10 for ``metasgd``).
    query: int | None = None
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        positive(self.shots, "shots")
        if self.query is not None:
            positive(self.query, "query")

    def trivial_baseline(self) -> tuple[str, float] | None:
        # Predicting 0 everywhere: E[A^2 sin^2(.)] = E[A^2] / 2, exactly, because sin^2 has period
        # pi and the phase is uniform over [0, pi]; A ~ U[a, b] gives E[A^2] = (a^2 + ab + b^2) / 3.
        if self.phase != (0.0, math.pi):
            return None
        a, b = self.amplitude
        return "predicting 0", (a * a + a * b + b * b) / 6.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1,)

    @property
    def output_dim(self) -> int:
        return 1

    def query_size(self, shots: int) -> int:
        if self.query is not None:
            return self.query
        return shots if self.protocol == "maml" else 10

    #: ``sample_block`` is one vectorised draw (see TaskDistribution.samples_in_blocks).
    samples_in_blocks: ClassVar[bool] = True

    def sample(
        self, num_tasks: int, *, generator: torch.Generator, shots: int | None = None, split: Split = "train"
    ) -> TaskBatch:
        return self.sample_block(1, num_tasks, generator=generator, shots=shots, split=split)[0]

    def sample_block(
        self, blocks: int, num_tasks: int, *, generator: torch.Generator, shots: int | None = None,
        split: Split = "train",
    ) -> TaskBatch:
        k = self.shots if shots is None else shots
        q = self.query_size(k)
        n = num_tasks
        # One draw for amplitude, phase, (frequency) and x, in that order, per batch: the CPU
        # generator fills a tensor sequentially, so these are exactly the values of separate
        # draws -- of four per batch, and of ``blocks`` batches one after the other -- and the
        # same elementwise float64 arithmetic follows (sampling is part of every training step).
        ranges = (self.amplitude, self.phase) + (((0.8, 1.2),) if self.protocol == "metasgd" else ())
        r = len(ranges)
        u = torch.rand(blocks * (n * r + n * (k + q)), generator=generator, dtype=torch.float64).view(blocks, -1)
        width, lo = _affine(ranges)
        params = u[:, : n * r].view(blocks, r, n, 1, 1) * width + lo
        amp, phase = params[:, 0], params[:, 1]
        lo_x, hi_x = self.x_range
        x = u[:, n * r:].view(blocks, n, k + q, 1) * (hi_x - lo_x) + lo_x
        y = amp * torch.sin((params[:, 2] * x if self.protocol == "metasgd" else x) - phase)
        x, y = x.float(), y.float()
        return TaskBatch(x[:, :, :k], y[:, :, :k], x[:, :, k:], y[:, :, k:])
