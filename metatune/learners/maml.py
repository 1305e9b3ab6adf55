"""MAML (second order) and FOMAML (algorithms.md §1)."""

from __future__ import annotations

from typing import ClassVar

from metatune.learners.base import Learner
from metatune.learners.hparams import COMMON, FIRST_ORDER, HyperParameter
from metatune.learners.state import AdaptState

__all__ = ["FOMAML", "MAML"]


class MAML(Learner[AdaptState]):
    """theta_{j+1} = theta_j - alpha * grad L_support(theta_j); meta-learned: theta. The base
    class's update rule with its default step size P = alpha."""


class FOMAML(MAML):
    """MAML with inner gradients treated as constants (``first_order`` defaults to true)."""

    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = tuple(
        HyperParameter(FIRST_ORDER.name, "bool", True, help=FIRST_ORDER.help) if h is FIRST_ORDER else h
        for h in COMMON
    )
