"""MAML (second order) and FOMAML (algorithms.md §1)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from metatune.learners.base import HParams, Learner, Noise, State
from metatune.learners.hparams import COMMON, FIRST_ORDER, HyperParameter
from metatune.models.base import Params

__all__ = ["MAML", "FOMAML"]


class MAML(Learner):
    """theta_{j+1} = theta_j - alpha * grad L_support(theta_j); meta-learned: theta."""

    def inner_step(
        self, meta: Params, state: State, support_x: Tensor, support_y: Tensor, noise: Noise,
        *, step: int, hp: HParams,
    ) -> State:
        grads = self.support_grad(lambda s: self.support_loss(meta, s, support_x, support_y), state)
        lr = hp["inner_lr"] * hp["lr_scale"]
        return {k: v - lr * grads[k] for k, v in state.items()}


class FOMAML(MAML):
    """MAML with inner gradients treated as constants (``first_order`` defaults to true)."""

    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = tuple(
        HyperParameter(FIRST_ORDER.name, "bool", True, help=FIRST_ORDER.help) if h is FIRST_ORDER else h
        for h in COMMON
    )
