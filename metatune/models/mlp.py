"""Fully connected backbones: the 1-40-40-1 sine MLP and the single linear layer.

``init``: ``trunc_normal`` (default; cbfinn/maml and MT-net code: W ~ truncated normal with std
``init_std``, b = 0) or ``torch`` (nn.Linear's own: W by kaiming_uniform(a = sqrt 5), i.e.
U(+-1/sqrt(fan_in)), b ~ U(+-1/sqrt(fan_in)); a reading for the Wormhole experiments, whose code
is not public and which a PyTorch re-implementation would get by default [inferred]).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from metatune._fields import positive
from metatune.errors import ConfigError
from metatune.models.base import Backbone, Cell, Params, apply_cell, truncated_normal

__all__ = ["MLP", "Linear"]

_ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh}


FCInit = Literal["trunc_normal", "torch"]


def _fc_init(
    cells: tuple[Cell, ...], std: float, generator: torch.Generator, dtype: torch.dtype, init: FCInit,
) -> Params:
    params: Params = {}
    for c in cells:
        if init == "torch":  # nn.Linear.reset_parameters, in its order (weight, then bias)
            w = torch.empty(c.weight_shape, dtype=dtype)
            params[f"{c.name}.weight"] = torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
            if c.bias:
                bound = 1 / math.sqrt(c.in_features)
                b = torch.empty(c.out_features, dtype=dtype)
                params[f"{c.name}.bias"] = torch.nn.init.uniform_(b, -bound, bound, generator=generator)
            continue
        # cbfinn/maml and MT-net: W ~ truncated normal(std 0.01), b = 0.
        params[f"{c.name}.weight"] = truncated_normal(c.weight_shape, std, generator=generator, dtype=dtype)
        if c.bias:
            params[f"{c.name}.bias"] = torch.zeros(c.out_features, dtype=dtype)
    return params


@dataclass(frozen=True, kw_only=True)
class MLP(Backbone):
    input_shape: tuple[int, ...] = (1,)
    output_dim: int = 1
    hidden: tuple[int, ...] = (40, 40)
    activation: Literal["relu", "tanh"] = "relu"
    init: FCInit = "trunc_normal"
    #: The truncated normal's std (``init: trunc_normal`` only).
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if len(self.input_shape) != 1:
            raise ConfigError("input_shape", f"the MLP takes flat inputs, got shape {self.input_shape}")
        for i, h in enumerate(self.hidden):
            positive(h, f"hidden[{i}]")
        positive(self.init_std, "init_std")

    @property
    def cells(self) -> tuple[Cell, ...]:
        widths = (self.input_shape[0], *self.hidden, self.output_dim)
        names = [f"fc{i}" for i in range(len(self.hidden))] + ["out"]
        return tuple(Cell(n, "linear", a, b) for n, a, b in zip(names, widths[:-1], widths[1:]))

    def init_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        return _fc_init(self.cells, self.init_std, generator, dtype, self.init)

    def apply(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        act = _ACTIVATIONS[self.activation]
        *hidden, out = self.cells
        for c in hidden:
            x = act(apply_cell(params, c, x))
        return apply_cell(params, out, x)


@dataclass(frozen=True, kw_only=True)
class Linear(Backbone):
    """One linear layer producing logits (the Avg-Threshold model, Wormhole §4.1)."""

    input_shape: tuple[int, ...] = (5,)
    output_dim: int = 1
    bias: bool = True
    init: FCInit = "trunc_normal"
    #: The truncated normal's std (``init: trunc_normal`` only).
    init_std: float = 0.01

    def __post_init__(self) -> None:
        positive(self.init_std, "init_std")

    @property
    def cells(self) -> tuple[Cell, ...]:
        return (Cell("out", "linear", self.input_shape[-1], self.output_dim, bias=self.bias),)

    def init_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        return _fc_init(self.cells, self.init_std, generator, dtype, self.init)

    def apply(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        return apply_cell(params, self.cells[0], x)
