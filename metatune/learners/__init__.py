"""Meta-learners: each a pure function of (meta-parameters, task batch, noise) -> loss.

Add a learner with one file in this folder: subclass :class:`Learner`, declare its settings
as a :class:`LearnerConfig` subclass (``config_class``) and decorate it with ``@register_learner("name")``. The package imports
every module here itself, so nothing else needs editing; the contract tests, search spaces and
CLI pick it up from the registry. A separate package registers learners through the
``metatune.learners`` entry-point group instead (README, "Extending metatune").
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from metatune.learners.base import HParams, Learner, Noise, State, TaskOutput
from metatune.registry import Registry

# The registry exists before any learner module is imported, so a module here can import
# ``register_learner`` from this package while the package is still initialising.
LEARNERS: Registry[Learner[Any]] = Registry("learner", base=Learner, entry_point_group="metatune.learners")
register_learner = LEARNERS.register

from metatune.learners.cxgrad import CxGrad  # noqa: E402
from metatune.learners.hparams import (  # noqa: E402
    COMMON,
    FIRST_ORDER,
    INNER_LR,
    INNER_STEPS,
    HyperParameter,
    LearnerConfig,
    Setting,
    setting,
)
from metatune.learners.maml import FOMAML, MAML  # noqa: E402
from metatune.learners.metasgd import MetaSGD  # noqa: E402
from metatune.learners.mtnet import MNet, MNetFull, MTNet, MTNetFull, TNet  # noqa: E402
from metatune.learners.pamela import PAMELA  # noqa: E402
from metatune.learners.state import AdaptState  # noqa: E402
from metatune.learners.wormhole import Wormhole  # noqa: E402

__all__ = [
    "COMMON", "FIRST_ORDER", "FOMAML", "INNER_LR", "INNER_STEPS", "LEARNERS", "MAML", "AdaptState",
    "HParams", "HyperParameter", "Learner", "LearnerConfig", "Setting", "is_shipped", "setting", "MetaSGD", "Noise", "State", "TaskOutput", "register_learner",
    "MNet", "MNetFull", "MTNet", "MTNetFull", "TNet",
    "CxGrad", "PAMELA", "Wormhole",
]

# The modules above predate self-registration; registering the same class again is a no-op,
# so these lines stay harmless once a module decorates its own classes.
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

# Every other module of this folder registers itself on import (``_private`` ones are helpers).
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
del _module

# Taken before any plugin loads (plugins load lazily, on a lookup): metatune's own learners.
_SHIPPED: frozenset[type] = frozenset(LEARNERS.registered().values())


def is_shipped(cls: type) -> bool:
    """Whether ``cls`` is one of metatune's own learners (these must compile: see engine)."""
    return cls in _SHIPPED
