"""One task's adaptation state as a typed pytree: the adapted weights ``w`` (the w of the
update ``w <- w - P ⊙ g``) plus whatever else a learner carries from step to step, one frozen
dataclass per learner that needs more (Wormhole's C, PAMELA's skip anchor, CxGrad's context).

A state is built and replaced inside ``vmap`` and ``torch.compile``, never mutated. Each class
is registered with ``torch.utils._pytree`` so ``tree_map`` and friends see its tensors. This
module registers no learner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Self, TypeVar

import torch.utils._pytree as pytree
from torch import Tensor

from metatune.models.base import Params

__all__ = ["AdaptState", "pytree_state"]

C = TypeVar("C", bound=type)


def pytree_state(cls: C) -> C:
    """Register a state dataclass as a pytree node (once: a second import is a no-op)."""
    if cls not in pytree.SUPPORTED_NODES:
        pytree.register_dataclass(cls)
    return cls


@pytree_state
@dataclass(frozen=True)
class AdaptState:
    """The adapted cell weights and biases of one task, keyed as in the meta-parameters."""

    w: Params

    def with_weights(self, w: Params) -> Self:
        """The same state with new adapted weights (the other fields carried over)."""
        return dataclasses.replace(self, w=w)

    # Read access in the untyped form these states replace (callers written against it index
    # and iterate them): the weight dict for a weights-only state, {field: value} otherwise.
    def _untyped(self) -> Mapping[str, Params | Tensor]:
        fields = dataclasses.fields(self)
        if len(fields) == 1:
            return self.w
        return {f.name: getattr(self, f.name) for f in fields}

    def __getitem__(self, key: str) -> Params | Tensor:
        return self._untyped()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._untyped())
