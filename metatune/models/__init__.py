"""Functional backbones: parameters are plain dicts of tensors."""

from __future__ import annotations

from typing import Any

from metatune._fields import build
from metatune.errors import ConfigError
from metatune.models.base import Backbone, Cell, Params, apply_cell, batch_norm
from metatune.models.conv import Conv4, DigitsConvNet
from metatune.models.mlp import MLP, Linear
from metatune.registry import Registry

__all__ = [
    "BACKBONES", "MLP", "Backbone", "Cell", "Conv4", "DigitsConvNet", "Linear", "Params",
    "apply_cell", "batch_norm", "build_backbone",
]

BACKBONES: Registry[Backbone] = Registry("backbone")
_SHIPPED: dict[str, type[Backbone]] = {"mlp": MLP, "linear": Linear, "conv4": Conv4, "digits_conv": DigitsConvNet}
for _name, _cls in _SHIPPED.items():
    BACKBONES.register(_name)(_cls)


def build_backbone(section: dict[str, Any], *, input_shape: tuple[int, ...], output_dim: int,
                   prefix: str = "model") -> Backbone:
    """Make a backbone from a config section ``{name: ..., <settings>}`` for a task's shapes."""
    settings = dict(section)
    cls = BACKBONES.get(settings.pop("name", None), field=f"{prefix}.name")
    for key in ("input_shape", "output_dim"):
        if key in settings:
            raise ConfigError(f"{prefix}.{key}", "is set by the task; remove it")
    settings.update(input_shape=list(input_shape), output_dim=output_dim)
    return build(cls, settings, prefix=prefix)
