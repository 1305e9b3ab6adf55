"""Meta-learners: each a pure function of (meta-parameters, task batch, noise) -> loss.

Add a learner by subclassing :class:`Learner`, declaring its ``hyperparameters`` and
registering it with ``@LEARNERS.register("name")``; the contract tests, search spaces and
CLI pick it up from the registry.
"""

from __future__ import annotations

from metatune.learners.base import HParams, Learner, Noise, State, TaskOutput
from metatune.learners.hparams import COMMON, FIRST_ORDER, INNER_LR, INNER_STEPS, HyperParameter
from metatune.learners.maml import FOMAML, MAML
from metatune.learners.metasgd import MetaSGD
from metatune.learners.cxgrad import CxGrad
from metatune.learners.pamela import PAMELA
from metatune.learners.wormhole import Wormhole
from metatune.learners.mtnet import MNet, MNetFull, MTNet, MTNetFull, TNet
from metatune.registry import Registry

__all__ = [
    "COMMON", "FIRST_ORDER", "FOMAML", "INNER_LR", "INNER_STEPS", "LEARNERS", "MAML",
    "HParams", "HyperParameter", "Learner", "is_shipped", "MetaSGD", "Noise", "State", "TaskOutput", "register_learner",
    "MNet", "MNetFull", "MTNet", "MTNetFull", "TNet",
    "CxGrad", "PAMELA", "Wormhole",
]

LEARNERS: Registry[Learner] = Registry("learner")
register_learner = LEARNERS.register

register_learner("maml")(MAML)
register_learner("fomaml")(FOMAML)
register_learner("metasgd")(MetaSGD)

# --- MT-net family
register_learner("tnet")(TNet)
register_learner("mnet")(MNet)
register_learner("mtnet")(MTNet)
register_learner("mnet_full")(MNetFull)
register_learner("mtnet_full")(MTNetFull)

# --- Wormhole, PAMELA, CxGrad
register_learner("wormhole")(Wormhole)
register_learner("pamela")(PAMELA)
register_learner("cxgrad")(CxGrad)

_SHIPPED: frozenset[type] = frozenset(LEARNERS.get(name) for name in LEARNERS.names())


def is_shipped(cls: type) -> bool:
    """Whether ``cls`` is one of metatune's own learners (these must compile: see engine)."""
    return cls in _SHIPPED
