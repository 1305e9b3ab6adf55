"""How a searched knob is named in a trial config: the one owner of the ``learner.knob`` rule.

A parameter shared by the learners keeps the knob's name (``inner_lr``); one searched for a
single learner's branch is ``learner.knob`` (``mtnet.inner_lr``), so a branch whose range
differs never shares an Optuna distribution with another. The key ``learner`` names the
trial's learner itself.
"""

from __future__ import annotations

__all__ = ["LEARNER_KEY", "SEED_KEY", "branch_learner", "branch_name", "knob_for", "short_name", "split_trial_name"]

#: Key of a trial config that holds the learner's name.
LEARNER_KEY = "learner"
#: Key of a trial config that holds the training seed of a seed replicate (``seeds:``).
SEED_KEY = "seed"
_SEP = "."


def branch_name(learner: str, knob: str) -> str:
    """The trial-config name of ``knob`` searched for ``learner`` alone."""
    return f"{learner}{_SEP}{knob}"


def branch_learner(name: str) -> str | None:
    """The learner whose branch ``name`` belongs to; None for a shared (plain) name."""
    return name.split(_SEP, 1)[0] if _SEP in name else None


def split_trial_name(name: str, learner: str) -> str:
    """``mtnet.inner_lr`` -> ``inner_lr`` for the mtnet branch; other names unchanged."""
    prefix = branch_name(learner, "")
    return name.removeprefix(prefix)


def knob_for(name: str, learner: str) -> str | None:
    """The knob that trial-config entry ``name`` sets in ``learner``'s run config, or None
    when it is the learner key, the replicate's seed (the run config's top-level ``seed``) or
    belongs to another learner's branch."""
    if name in (LEARNER_KEY, SEED_KEY):
        return None
    owner = branch_learner(name)
    if owner is not None and owner != learner:
        return None
    return split_trial_name(name, learner)


def short_name(name: str, learner: str) -> str:
    """``name`` as shown beside a trial of ``learner`` (its own branch prefix dropped)."""
    return split_trial_name(name, learner)
