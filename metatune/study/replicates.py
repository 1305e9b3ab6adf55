"""Seed replicates: a configuration trained once per training seed (``seeds: [0, 1, 2]``).

Every view that ranks or tabulates trials goes through here, so a configuration is judged by
its mean over seeds, never by its luckiest seed: the table cell, the best configuration per
learner, the exported config. One trial is one (configuration, seed); the seed is the trial
config's ``seed`` entry (a grid axis).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from metatune.study.param_names import SEED_KEY
from metatune.study.records import TrialRecord, TrialStatus

__all__ = ["Replicates", "SeedSpread", "config_key", "group_replicates", "seed_of", "spread"]


def seed_of(record: TrialRecord) -> int | None:
    """The training seed the trial ran with."""
    seed = record.params.get(SEED_KEY, record.run_config.get("seed"))
    return int(seed) if isinstance(seed, (int, float)) and not isinstance(seed, bool) else None


def config_key(record: TrialRecord) -> str:
    """What identifies a configuration across its seeds: the learner and the sampled
    parameters other than the seed."""
    params = {k: v for k, v in record.params.items() if k != SEED_KEY}
    return json.dumps([record.learner, params], sort_keys=True, default=str)


@dataclass(frozen=True)
class SeedSpread:
    """One value over seeds: the mean, the across-seed standard deviation (n - 1; None for
    one seed) and the mean of the per-seed 95 % CIs over test tasks."""

    mean: float
    sd: float | None
    ci95: float | None
    seeds: int

    def text(self, digits: int = 3) -> str:
        if self.seeds < 2 or self.sd is None:
            return f"{self.mean:.{digits}f}" + (f" ± {self.ci95:.{digits}f}" if self.ci95 is not None else "")
        return f"{self.mean:.{digits}f} ± {self.sd:.{digits}f} ({self.seeds} seeds)"


def spread(pairs: Iterable[tuple[float | None, float | None]]) -> SeedSpread | None:
    """(value, its 95 % CI over tasks) per seed -> the spread; None when no value is finite."""
    vals = [(v, c) for v, c in pairs if v is not None and math.isfinite(v)]
    if not vals:
        return None
    means = [float(v) for v, _ in vals if v is not None]
    cis = [c for _, c in vals if c is not None and math.isfinite(c)]
    return SeedSpread(
        mean=statistics.fmean(means),
        sd=statistics.stdev(means) if len(means) > 1 else None,
        ci95=statistics.fmean(cis) if cis else None,
        seeds=len(means),
    )


@dataclass(frozen=True)
class Replicates:
    """The trials of one configuration, one per seed."""

    key: str
    learner: str
    trials: tuple[TrialRecord, ...]

    @property
    def completed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == TrialStatus.COMPLETED]

    def objective(self) -> float | None:
        """Mean objective over the completed seeds (what ranks configurations)."""
        vals = [t.objective for t in self.completed if t.objective is not None and math.isfinite(t.objective)]
        return statistics.fmean(vals) if vals else None

    @property
    def representative(self) -> TrialRecord:
        """The trial that stands for the configuration: its lowest completed seed (the run
        config exported for it; the seed inside is one of its replicates)."""
        return min(self.completed, key=lambda t: (seed_of(t) or 0, t.trial_id))

    @property
    def seeds(self) -> list[int]:
        return sorted(s for s in (seed_of(t) for t in self.trials) if s is not None)


def group_replicates(records: Sequence[TrialRecord]) -> list[Replicates]:
    """Trials grouped by configuration, in first-seen order."""
    groups: dict[str, list[TrialRecord]] = {}
    for r in records:
        groups.setdefault(config_key(r), []).append(r)
    return [Replicates(key=k, learner=v[0].learner, trials=tuple(v)) for k, v in groups.items()]
