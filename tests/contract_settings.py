"""Per-learner settings for the contract suite (metatune.testing): a small task/backbone where
the learner makes sense. Learners not listed use metatune.testing's default (the sine MLP);
the reference modules fill SETTINGS beside their references."""

from __future__ import annotations

from typing import Any

from metatune.testing import DEFAULT_HPARAMS, DEFAULT_MODEL, DEFAULT_TASK

SMALL_MLP = dict(DEFAULT_MODEL)
SINE = dict(DEFAULT_TASK)

DEFAULT: dict[str, Any] = {"task": SINE, "model": SMALL_MLP, "hparams": dict(DEFAULT_HPARAMS)}
SETTINGS: dict[str, dict[str, Any]] = {}


def settings_for(name: str) -> dict[str, Any]:
    return SETTINGS.get(name, DEFAULT)
