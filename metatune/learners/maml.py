"""MAML (second order) and FOMAML (algorithms.md §1)."""

from __future__ import annotations

from metatune.learners.base import Learner
from metatune.learners.hparams import FIRST_ORDER, LearnerConfig, setting
from metatune.learners.state import AdaptState

__all__ = ["FOMAML", "FOMAMLConfig", "MAML"]


class FOMAMLConfig(LearnerConfig):
    first_order: bool = setting(True, source="paper", help=FIRST_ORDER.help)


class MAML(Learner[AdaptState]):
    """theta_{j+1} = theta_j - alpha * grad L_support(theta_j); meta-learned: theta. The base
    class's update rule with its default step size P = alpha."""


class FOMAML(MAML):
    """MAML with inner gradients treated as constants (``first_order`` defaults to true)."""

    config_class = FOMAMLConfig
    config: FOMAMLConfig
