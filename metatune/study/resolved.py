"""The resolved study: a validated study file with its search space, paths and tracking
settled, and the trial plan the workers receive. Made by :mod:`metatune.study.resolve`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from metatune._fields import as_plain
from metatune.atomic_files import write_atomic
from metatune.config import TrainingConfig
from metatune.study.param_names import LEARNER_KEY
from metatune.study.plan import TrialPlan
from metatune.study.records import VAL_ACCURACY
from metatune.study.schema import FROZEN_FILE, TUNE_NAME, StudySpec, is_uri
from metatune.study.search_space import SearchSpace
from metatune.study.strategies import SAMPLERS

__all__ = ["Study"]


@dataclass
class Study:
    """A validated study with everything resolved: search space, paths, tracking."""

    spec: StudySpec
    source: str
    space: SearchSpace
    #: Fixed hyperparameters per learner (the study's ``learners`` mapping).
    overrides: dict[str, dict[str, Any]]
    #: One complete run-config mapping per learner, before the sampled values go in.
    base: dict[str, dict[str, Any]]
    dir: Path
    tune_root: str
    tracking_uri: str
    experiment: str
    cwd: str

    # ------------------------------------------------------------------ derived settings
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def learners(self) -> tuple[str, ...]:
        return self.space.learners

    @property
    def metric(self) -> str:
        return self.spec.metric

    @property
    def mode(self) -> str:
        if self.spec.mode:
            return self.spec.mode
        return "max" if self.spec.metric == VAL_ACCURACY else "min"

    @property
    def penalty(self) -> float:
        if self.spec.divergence_penalty is not None:
            return self.spec.divergence_penalty
        return 1e6 if self.mode == "min" else -1.0

    @property
    def grid(self) -> bool:
        """Whether the sampler walks a fixed grid (see strategies.SamplerEntry.grid)."""
        return SAMPLERS[self.spec.sampler.name].grid

    @property
    def num_trials(self) -> int:
        if self.spec.trials is not None:
            return self.spec.trials
        return self.space.grid_size() if self.grid else 10

    @property
    def sampler_seed(self) -> int:
        return self.spec.sampler.seed if self.spec.sampler.seed is not None else self.spec.seed

    @property
    def initial_points(self) -> list[dict[str, Any]]:
        """Trials enqueued before the sampler's own (one per learner; see SamplerSpec)."""
        if self.grid or not self.spec.sampler.learners_first or len(self.learners) < 2:
            return []
        return [{LEARNER_KEY: name} for name in self.learners][: self.num_trials]

    @property
    def tune_path(self) -> str:
        """Where Ray Tune keeps the experiment: the source of truth of the study."""
        return f"{self.tune_root.rstrip('/')}/{TUNE_NAME}"

    @property
    def artifact_location(self) -> str | None:
        """MLflow artifact folder for a local (sqlite) store; a server picks its own."""
        return str(self.dir / "mlartifacts") if self.tracking_uri.startswith("sqlite:") else None

    @property
    def table_rows(self) -> str:
        if self.spec.table.rows:
            return self.spec.table.rows
        if self.grid:
            for p in self.space.params:
                if p.name == p.knob:
                    return p.knob
        return "best"

    @property
    def parquet_path(self) -> Path:
        return self.dir / "trials.parquet"

    @property
    def best_dir(self) -> Path:
        return self.dir / "best"

    # ------------------------------------------------------------------ trial configs
    @cached_property
    def plan(self) -> TrialPlan:
        """What the workers receive instead of the study file."""
        return TrialPlan.build(
            study=self.name,
            base=self.base,
            training_knobs=frozenset(TrainingConfig.knobs()),
            metric=self.metric,
            mode=self.mode,
            penalty=self.penalty,
            workdir=self.cwd,
        )

    def run_config_for(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The exact run config (``metatune train`` input) of a trial's sampled config."""
        return self.plan.run_config_for(config)

    # ------------------------------------------------------------------ the frozen copy
    def frozen(self) -> dict[str, Any]:
        """The study as a self-contained mapping: re-parsing it gives the same study."""
        data = as_plain(self.spec)
        data["learners"] = {k: dict(v) for k, v in self.overrides.items()}
        data["search_space"] = self.space.to_dict()
        data["storage"] = str(self.dir) if not is_uri(self.tune_root) else self.tune_root
        data["tracking"] = {"uri": self.tracking_uri, "experiment": self.experiment}
        data["trials"] = self.num_trials
        data["workdir"] = self.cwd
        return data

    def write_frozen(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / FROZEN_FILE
        header = (
            f"# Frozen copy of study '{self.name}' (from {self.source}), written by metatune run.\n"
            "# `metatune resume/status/report/export` read this file; edit the original instead.\n"
        )
        return write_atomic(path, header + yaml.safe_dump(self.frozen(), sort_keys=False, allow_unicode=True))
