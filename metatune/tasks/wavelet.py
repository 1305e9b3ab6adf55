"""Mexican-hat wavelet regression (Wormhole MAML §4.2, algorithms.md §7.4).

Per task: a sign ~ U{-1, +1} and a Mexican-hat wavelet m drawn uniformly from a set of
translations, both on n discrete points; the filter is f = sign * m. Each example is
x ~ U(0, 1)^n with label y = x . f (shape ``[B, N, 1]``). The model is a single vector
w in R^n (``{"name": "linear", "bias": false}``), which Wormhole scales by a task multiplier C.

The paper leaves n, the grid and the translation set unspecified; metatune's choices
[inferred], all configurable:

- ``dim`` n = 20 points, evenly spaced on ``grid`` = [-5, 5];
- the wavelet is the unit-width normalised Ricker wavelet
  m(t) = A (1 - u^2) exp(-u^2 / 2), u = (t - centre) / ``width``, A = 2 / (sqrt(3) pi^(1/4))
  ~ 0.867, whose range [-0.39, 0.87] matches the paper's "ideal meta w in [-0.4, 0.8]";
- ``num_translations`` = 5 centres evenly spaced over the middle half of the grid
  ([-2.5, 2.5] by default), so every wavelet's main lobe lies inside the grid;
  ``translations`` lists explicit centres instead.
- 10 support points [paper] and 10 query points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from metatune._fields import positive
from metatune.errors import ConfigError
from metatune.tasks._checks import interval
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution

__all__ = ["Wavelet", "ricker"]

RICKER_AMPLITUDE = 2.0 / (math.sqrt(3.0) * math.pi ** 0.25)


def ricker(t: torch.Tensor, centre: float | torch.Tensor = 0.0, width: float = 1.0) -> torch.Tensor:
    """The normalised Mexican-hat (Ricker) wavelet A (1 - u^2) exp(-u^2/2), u = (t - centre)/width."""
    u = (t - centre) / width
    return RICKER_AMPLITUDE * (1 - u ** 2) * torch.exp(-(u ** 2) / 2)


@dataclass(frozen=True, kw_only=True)
class Wavelet(TaskDistribution):
    problem: ClassVar[Problem] = "regression"

    dim: int = 20
    shots: int = 10
    query: int = 10
    grid: tuple[float, float] = (-5.0, 5.0)
    width: float = 1.0
    num_translations: int = 5
    #: Explicit wavelet centres (grid coordinates); null means ``num_translations`` centres
    #: evenly spaced over the middle half of the grid.
    translations: tuple[float, ...] | None = None
    x_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        positive(self.dim, "dim")
        positive(self.shots, "shots")
        positive(self.query, "query")
        interval(self.grid, "grid")
        positive(self.width, "width")
        positive(self.num_translations, "num_translations")
        if self.translations is not None and not self.translations:
            raise ConfigError("translations", "expected at least one centre (or null for the default set)")
        interval(self.x_range, "x_range")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.dim,)

    @property
    def output_dim(self) -> int:
        return 1

    def default_backbone(self) -> dict:
        return {"name": "linear", "bias": False}

    @property
    def centres(self) -> torch.Tensor:
        if self.translations is not None:
            return torch.tensor(self.translations, dtype=torch.float64)
        lo, hi = self.grid
        quarter = (hi - lo) / 4
        if self.num_translations == 1:
            return torch.tensor([(lo + hi) / 2], dtype=torch.float64)
        return torch.linspace(lo + quarter, hi - quarter, self.num_translations, dtype=torch.float64)

    @property
    def points(self) -> torch.Tensor:
        """The n grid coordinates the wavelets are sampled at."""
        return torch.linspace(*self.grid, self.dim, dtype=torch.float64)

    @property
    def wavelets(self) -> torch.Tensor:
        """The translation set as a ``[T, n]`` float64 tensor (before the per-task sign)."""
        return ricker(self.points[None, :], self.centres[:, None], self.width)

    def sample_filters(self, num_tasks: int, *, generator: torch.Generator) -> torch.Tensor:
        """Per-task filters f = sign * m, ``[B, n]`` float64."""
        bank = self.wavelets
        which = torch.randint(bank.shape[0], (num_tasks,), generator=generator)
        sign = torch.randint(2, (num_tasks, 1), generator=generator).to(torch.float64) * 2 - 1
        return sign * bank[which]

    def sample(
        self, num_tasks: int, *, generator: torch.Generator, shots: int | None = None, split: Split = "train"
    ) -> TaskBatch:
        k = self.shots if shots is None else shots
        q = self.query
        f = self.sample_filters(num_tasks, generator=generator)
        lo, hi = self.x_range
        x = torch.rand((num_tasks, k + q, self.dim), generator=generator, dtype=torch.float32)
        x = x * (hi - lo) + lo
        # y from the float32 inputs the model sees, so y = x . f holds for them exactly (in float64).
        y = torch.einsum("bnd,bd->bn", x.to(torch.float64), f).unsqueeze(-1).float()
        return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
