"""Polynomial regression (MT-net thesis §6.3, algorithms.md §7.2).

Each task picks an order n uniformly from ``orders`` (default {0, 1, 2}) and coefficients
c_0..c_n ~ U[-1, 1] [paper]; y = sum_i c_i x^i. The authors' code additionally divides c_i by
2^i and samples x ~ U[-2, 2] [code only]: ``code_scaling: true`` (the default) does the
division; x is always drawn from ``x_range``, whose default (-2, 2) is the code's. 10 support
and 10 query points per task; the sine net (1-40-40-1 MLP).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from metatune._fields import positive
from metatune.errors import ConfigError
from metatune.tasks._checks import interval
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution

__all__ = ["Polynomial"]

_MAX_ORDER = 20


@dataclass(frozen=True, kw_only=True)
class Polynomial(TaskDistribution):
    problem: ClassVar[Problem] = "regression"

    orders: tuple[int, ...] = (0, 1, 2)
    shots: int = 10
    query: int = 10
    #: Range of the coefficients c_i before the code's 2^-i scaling.
    coefficients: tuple[float, float] = (-1.0, 1.0)
    #: Divide c_i by 2^i, as the MT-net code does.
    code_scaling: bool = True
    x_range: tuple[float, float] = (-2.0, 2.0)

    def __post_init__(self) -> None:
        if not self.orders:
            raise ConfigError("orders", "expected at least one polynomial order")
        for i, n in enumerate(self.orders):
            if not 0 <= n <= _MAX_ORDER:
                raise ConfigError(f"orders[{i}]", f"expected an order between 0 and {_MAX_ORDER}, got {n!r}")
        positive(self.shots, "shots")
        positive(self.query, "query")
        interval(self.coefficients, "coefficients", strict=False)
        interval(self.x_range, "x_range")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1,)

    @property
    def output_dim(self) -> int:
        return 1

    def sample_coefficients(self, num_tasks: int, *, generator: torch.Generator) -> torch.Tensor:
        """Coefficients ``[B, max(orders) + 1]`` (float64), scaled, with c_i = 0 above each
        task's order."""
        top = max(self.orders)
        choice = torch.randint(len(self.orders), (num_tasks,), generator=generator)
        order = torch.tensor(self.orders, dtype=torch.int64)[choice]
        lo, hi = self.coefficients
        c = torch.rand((num_tasks, top + 1), generator=generator, dtype=torch.float64) * (hi - lo) + lo
        powers = torch.arange(top + 1)
        if self.code_scaling:
            c = c / 2.0 ** powers.to(torch.float64)
        return c * (powers[None, :] <= order[:, None])

    def sample(
        self, num_tasks: int, *, generator: torch.Generator, shots: int | None = None, split: Split = "train"
    ) -> TaskBatch:
        k = self.shots if shots is None else shots
        q = self.query
        c = self.sample_coefficients(num_tasks, generator=generator)
        lo, hi = self.x_range
        x = torch.rand((num_tasks, k + q, 1), generator=generator, dtype=torch.float64) * (hi - lo) + lo
        y = (c[:, None, :] * x ** torch.arange(c.shape[1], dtype=torch.float64)).sum(-1, keepdim=True)
        x, y = x.float(), y.float()
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
