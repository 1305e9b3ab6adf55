"""The trial plan: what a worker needs to turn a sampled trial config into a run config.

The driver resolves the study file once (:func:`metatune.study.resolve.parse_study`) and
ships this frozen, picklable plan with the trainable. A worker never reads or re-validates
the study file: it builds the one run config its trial trains, nothing else.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metatune.errors import ConfigError
from metatune.study.param_names import LEARNER_KEY, SEED_KEY, knob_for

__all__ = ["TrialPlan"]


@dataclass(frozen=True, kw_only=True)
class TrialPlan:
    """Per-learner base run configs, the parameter-name encoding, the objective and paths.

    The base configs are kept as JSON text, so the plan stays immutable and every call gets
    a fresh mapping to fill in."""

    study: str
    #: learner -> its complete run config (JSON) before the sampled values go in.
    base_json: tuple[tuple[str, str], ...]
    #: Knobs that live in the run config's ``training`` section (the rest go to ``learner``).
    training_knobs: frozenset[str]
    metric: str
    mode: str
    #: Finite value reported for the metric when a trial diverges.
    penalty: float
    #: Folder that relative paths (task data) resolve against, as in the driver.
    workdir: str

    @classmethod
    def build(
        cls,
        *,
        study: str,
        base: Mapping[str, Mapping[str, Any]],
        training_knobs: frozenset[str],
        metric: str,
        mode: str,
        penalty: float,
        workdir: str,
    ) -> TrialPlan:
        return cls(
            study=study,
            base_json=tuple((name, json.dumps(cfg)) for name, cfg in base.items()),
            training_knobs=training_knobs,
            metric=metric,
            mode=mode,
            penalty=penalty,
            workdir=workdir,
        )

    @property
    def learners(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.base_json)

    def base(self, learner: str) -> dict[str, Any]:
        """A fresh copy of ``learner``'s base run config."""
        for name, text in self.base_json:
            if name == learner:
                return copy.deepcopy(json.loads(text))
        raise ConfigError(
            LEARNER_KEY, f"trial config names learner {learner!r}; study has {', '.join(self.learners)}"
        )

    def run_config_for(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The exact run config (``metatune train`` input) of a trial's sampled config."""
        learner = config.get(LEARNER_KEY)
        if not isinstance(learner, str):
            raise ConfigError(
                LEARNER_KEY, f"trial config names learner {learner!r}; study has {', '.join(self.learners)}"
            )
        cfg = self.base(learner)
        if SEED_KEY in config:  # a seed replicate (``seeds:``): the training seed
            cfg["seed"] = int(config[SEED_KEY])
        for key, value in config.items():
            knob = knob_for(key, learner)
            if knob is None:
                continue  # the learner key, or another learner's branch
            cfg["training" if knob in self.training_knobs else "learner"][knob] = value
        return cfg
