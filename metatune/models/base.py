"""The functional backbone contract and the layer ops every backbone is built from.

A backbone is ``apply(params, x) -> output`` on a plain ``dict[str, Tensor]`` for ONE task
(``x`` is ``[N, ...]``); learners vmap it over the task dimension. Its adaptable layers are
*cells* (weight ``[out, in, ...]`` plus optional bias): row ``j`` of a weight is everything
feeding output unit/channel ``j``, the granularity MT-net masks and PAMELA preconditions.

Learner-specific parameters are recognised by key so that no learner has to subclass a
backbone: ``<cell>.T`` (an ``out x out`` matrix) is applied after the cell's affine map,
y = T (W x + b), as in T-net/MT-net (a 1x1 convolution for conv cells).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["Backbone", "Cell", "Params", "apply_cell", "batch_norm", "truncated_normal", "xavier_uniform"]

Params = dict[str, Tensor]


@dataclass(frozen=True)
class Cell:
    """One adaptable layer: ``<name>.weight`` of shape ``[out, in]`` or ``[out, in, k, k]``."""

    name: str
    kind: Literal["linear", "conv"]
    in_features: int
    out_features: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    bias: bool = True

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "linear":
            return (self.out_features, self.in_features)
        return (self.out_features, self.in_features, self.kernel, self.kernel)

    @property
    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}.weight", f"{self.name}.bias") if self.bias else (f"{self.name}.weight",)


def truncated_normal(shape: tuple[int, ...], std: float, *, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """TF's truncated_normal: N(0, std) re-drawn outside two standard deviations."""
    out = torch.empty(shape, dtype=dtype)
    torch.nn.init.trunc_normal_(out, mean=0.0, std=std, a=-2 * std, b=2 * std, generator=generator)
    return out


def xavier_uniform(shape: tuple[int, ...], *, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Glorot uniform, as TF's xavier_initializer (the MAML/MT-net conv init)."""
    out = torch.empty(shape, dtype=dtype)
    torch.nn.init.xavier_uniform_(out, generator=generator)
    return out


def apply_cell(params: Mapping[str, Tensor], cell: Cell, x: Tensor) -> Tensor:
    weight = params[f"{cell.name}.weight"]
    bias = params.get(f"{cell.name}.bias")
    if cell.kind == "linear":
        y = F.linear(x, weight, bias)
    else:
        y = F.conv2d(x, weight, bias, stride=cell.stride, padding=cell.padding)
    transform = params.get(f"{cell.name}.T")
    if transform is not None:
        if cell.kind == "linear":
            y = y @ transform.T
        else:
            y = torch.einsum("oc,nchw->nohw", transform, y)
    return y


def batch_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, *, eps: float = 1e-5) -> Tensor:
    """Batch norm with batch statistics only (the transductive mode every reference uses at
    meta-test, algorithms.md §11.4); written out so it composes with vmap and double backward."""
    dims = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    if weight is not None:
        y = y * weight.view(shape)
    if bias is not None:
        y = y + bias.view(shape)
    return y


class Backbone(abc.ABC):
    """A functional network. Subclasses are keyword-only frozen dataclasses whose fields are
    the YAML settings plus ``input_shape``/``output_dim``, which the task supplies."""

    name: ClassVar[str]
    has_batchnorm: ClassVar[bool] = False
    input_shape: tuple[int, ...]
    output_dim: int

    @property
    @abc.abstractmethod
    def cells(self) -> tuple[Cell, ...]:
        """The adaptable layers in forward order."""

    @abc.abstractmethod
    def init_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        """Fresh parameters, initialised as the authors' code does."""

    @abc.abstractmethod
    def apply(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """Forward pass for one task; pure, so it can be vmapped and differentiated twice."""

    def adapted_keys(self) -> tuple[str, ...]:
        """Keys the inner loop adapts: the cells' weights and biases (not BN affine, not T)."""
        return tuple(k for c in self.cells for k in c.keys)

    def conv_cells(self) -> tuple[Cell, ...]:
        return tuple(c for c in self.cells if c.kind == "conv")

    def num_params(self, params: Mapping[str, Tensor]) -> int:
        return sum(math.prod(t.shape) for t in params.values())


