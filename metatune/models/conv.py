"""Convolutional backbones: the 4-block few-shot net and the Wormhole MNIST net."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.nn import functional as F

from metatune._fields import positive
from metatune.errors import ConfigError
from metatune.models.base import Backbone, Cell, Params, apply_cell, batch_norm, xavier_uniform

__all__ = ["Conv4", "DigitsConvNet"]


def _conv_init(cells: tuple[Cell, ...], generator: torch.Generator, dtype: torch.dtype) -> Params:
    params: Params = {}
    for c in cells:
        params[f"{c.name}.weight"] = xavier_uniform(c.weight_shape, generator=generator, dtype=dtype)
        if c.bias:
            params[f"{c.name}.bias"] = torch.zeros(c.out_features, dtype=dtype)
    return params


def _check_image(shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise ConfigError("input_shape", f"expected images shaped [channels, height, width], got {shape}")


@dataclass(frozen=True, kw_only=True)
class Conv4(Backbone):
    """``blocks`` x (3x3 conv -> batch norm (batch statistics) -> ReLU -> 2x2 max-pool), then a
    linear head on the flattened features (algorithms.md §7.6). With ``max_pool: false`` the
    convs have stride 2 and the head mean-pools, as the TF Omniglot net does. CxGrad's code
    uses ``conv_bias: false`` and 48 filters."""

    has_batchnorm: ClassVar[bool] = True
    input_shape: tuple[int, ...] = (1, 28, 28)
    output_dim: int = 5
    channels: int = 64
    blocks: int = 4
    max_pool: bool = True
    conv_bias: bool = True
    head_init: Literal["xavier", "normal"] = "xavier"

    def __post_init__(self) -> None:
        _check_image(self.input_shape)
        positive(self.channels, "channels")
        positive(self.blocks, "blocks")
        if self._feature_hw()[0] < 1:
            raise ConfigError("blocks", f"{self.blocks} down-sampling blocks shrink {self.input_shape[1:]} to nothing")

    def _feature_hw(self) -> tuple[int, int]:
        h, w = self.input_shape[1:]
        for _ in range(self.blocks):
            h, w = (h // 2, w // 2) if self.max_pool else ((h + 1) // 2, (w + 1) // 2)
        return h, w

    @property
    def cells(self) -> tuple[Cell, ...]:
        stride = 1 if self.max_pool else 2
        convs = tuple(
            Cell(f"conv{i}", "conv", self.input_shape[0] if i == 0 else self.channels, self.channels,
                 kernel=3, stride=stride, padding=1, bias=self.conv_bias)
            for i in range(self.blocks)
        )
        h, w = self._feature_hw()
        features = self.channels * (h * w if self.max_pool else 1)
        return (*convs, Cell("head", "linear", features, self.output_dim))

    def init_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        *convs, head = self.cells
        params = _conv_init(tuple(convs), generator, dtype)
        for i in range(self.blocks):
            params[f"bn{i}.weight"] = torch.ones(self.channels, dtype=dtype)
            params[f"bn{i}.bias"] = torch.zeros(self.channels, dtype=dtype)
        if self.head_init == "xavier":
            params["head.weight"] = xavier_uniform(head.weight_shape, generator=generator, dtype=dtype)
        else:
            params["head.weight"] = torch.randn(head.weight_shape, generator=generator, dtype=dtype)
        params["head.bias"] = torch.zeros(self.output_dim, dtype=dtype)
        return params

    def apply(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        *convs, head = self.cells
        for i, c in enumerate(convs):
            x = apply_cell(params, c, x)
            x = torch.relu(batch_norm(x, params.get(f"bn{i}.weight"), params.get(f"bn{i}.bias")))
            if self.max_pool:
                x = F.max_pool2d(x, 2)
        x = x.flatten(1) if self.max_pool else x.mean(dim=(2, 3))
        return apply_cell(params, head, x)


@dataclass(frozen=True, kw_only=True)
class DigitsConvNet(Backbone):
    """Wormhole's MNIST net (§7.5): two 5x5 convs each with ReLU and 2x2 max-pool, then two
    linear layers with a ReLU between. Widths are unspecified in the paper [inferred]."""

    input_shape: tuple[int, ...] = (1, 8, 8)
    output_dim: int = 2
    channels: tuple[int, int] = (16, 32)
    hidden: int = 64

    def __post_init__(self) -> None:
        _check_image(self.input_shape)
        if len(self.channels) != 2:
            raise ConfigError("channels", f"expected two conv widths, got {self.channels}")
        positive(self.hidden, "hidden")

    @property
    def cells(self) -> tuple[Cell, ...]:
        c_in, h, w = self.input_shape
        c1, c2 = self.channels
        feats = c2 * (h // 4) * (w // 4)
        return (
            Cell("conv0", "conv", c_in, c1, kernel=5, padding=2),
            Cell("conv1", "conv", c1, c2, kernel=5, padding=2),
            Cell("fc0", "linear", feats, self.hidden),
            Cell("out", "linear", self.hidden, self.output_dim),
        )

    def init_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        return _conv_init(self.cells, generator, dtype)

    def apply(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        conv0, conv1, fc0, out = self.cells
        x = F.max_pool2d(torch.relu(apply_cell(params, conv0, x)), 2)
        x = F.max_pool2d(torch.relu(apply_cell(params, conv1, x)), 2)
        x = torch.relu(apply_cell(params, fc0, x.flatten(1)))
        return apply_cell(params, out, x)
