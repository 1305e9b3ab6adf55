"""Per-learner settings for the contract suite: a small task/backbone where the learner makes
sense. Learners not listed use the sine MLP."""

from __future__ import annotations

from typing import Any

SMALL_MLP = {"name": "mlp", "hidden": [8, 8]}
SINE = {"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6}

DEFAULT: dict[str, Any] = {"task": SINE, "model": SMALL_MLP, "hparams": {"inner_lr": 0.05}}
SETTINGS: dict[str, dict[str, Any]] = {}


def settings_for(name: str) -> dict[str, Any]:
    return SETTINGS.get(name, DEFAULT)
