"""The study file's schema (``studies/*.yaml``): typed sections, each checked on its own.

```yaml
name: quickstart
task: {name: sine, protocol: metasgd, shots: 10}
learners: {maml: {}, metasgd: {alpha_init: constant}}   # or a list of names
search_space: search_spaces/sine_rates.yaml             # or an inline mapping
sampler: {name: tpe, seed: 0}                           # tpe | cmaes | gp | random | grid
scheduler: {name: none}                                 # or {name: asha, grace_period: 200}
trials: 6
max_concurrent_trials: 2
resources: {cpus: 1, gpus: 0}                           # gpus may be a fraction (0.25, 0.5)
training: {iterations: 600, meta_batch: 4, eval_every: 200}
evaluation: {tasks: 200, shots: [5, 10, 20], inner_steps: 10}
tracking: {uri: null, experiment: null}                 # default sqlite in the study folder
optuna: {storage: null, warm_start: null}               # default <study>/optuna.db; seed from a study
                                                        # divergence: prune | constraint | fail
storage: null                                           # default ./metatune_results/<name>
table: {rows: inner_lr}                                 # the study table's row axis
seed: 0
seeds: [0, 1, 2]                                        # seed replicates (or replicates: 3)
```
Rules that tie sections together (a sampler and the search space, paths, run configs) are
checked when the study is resolved (:mod:`metatune.study.resolve`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from metatune._fields import positive
from metatune.config import EvaluationConfig, TrainingConfig
from metatune.errors import ConfigError
from metatune.study.divergence import DEFAULT_ENCODING, Encoding
from metatune.study.records import TEST_LOSS, VAL_LOSS
from metatune.study.strategies import SAMPLERS, SCHEDULERS

__all__ = [
    "DEFAULT_ROOT",
    "FROZEN_FILE",
    "OPTUNA_SCHEMES",
    "TUNE_NAME",
    "OptunaSpec",
    "ResourcesSpec",
    "RunExtras",
    "SamplerSpec",
    "SchedulerSpec",
    "StudySpec",
    "TableSpec",
    "TrackingSpec",
    "check_tracking_uri",
    "is_uri",
]

#: The resolved study (inline search space, absolute storage, tracking URI) in the study folder.
FROZEN_FILE = "study.yaml"
#: Name of the Ray Tune experiment inside the study's storage.
TUNE_NAME = "tune"
DEFAULT_ROOT = "metatune_results"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

# The names the study file accepts are the registry's keys (one entry adds one). A type
# checker sees a str: it cannot read a Literal built at run time.
if TYPE_CHECKING:
    SamplerName = str
    SchedulerName = str
else:
    SamplerName = Literal[tuple(SAMPLERS)]
    SchedulerName = Literal[tuple(SCHEDULERS)]


@dataclass(frozen=True, kw_only=True)
class SamplerSpec:
    name: SamplerName = "tpe"
    #: Seed of the sampler; null = the study seed.
    seed: int | None = None
    #: Random trials before the model-based samplers start (tpe, gp, cmaes); null = Optuna's default.
    startup_trials: int | None = None
    #: Start with one trial per learner (its other parameters sampled), so every learner is
    #: tried even in a short study. Ignored by the grid sampler.
    learners_first: bool = True

    def __post_init__(self) -> None:
        if self.startup_trials is not None:
            positive(self.startup_trials, "startup_trials", allow_zero=True)


@dataclass(frozen=True, kw_only=True)
class SchedulerSpec:
    name: SchedulerName = "none"
    #: Iterations before ASHA may stop a trial; null = training.eval_every.
    grace_period: int | None = None
    #: Iterations at which ASHA's last rung sits; null = training.iterations.
    max_t: int | None = None
    reduction_factor: float = 3.0

    def __post_init__(self) -> None:
        for name in ("grace_period", "max_t"):
            if getattr(self, name) is not None:
                positive(getattr(self, name), name)
        if not self.reduction_factor > 1:
            raise ConfigError("reduction_factor", f"expected a number > 1, got {self.reduction_factor:g}")


@dataclass(frozen=True, kw_only=True)
class ResourcesSpec:
    cpus: float = 1.0
    #: GPUs per trial; a fraction (0.5, 0.25) packs several trials on one GPU.
    gpus: float = 0.0
    #: Cap on each trial's share of GPU memory; null = ``gpus`` when it is a fraction.
    gpu_memory_fraction: float | None = None

    def __post_init__(self) -> None:
        positive(self.cpus, "cpus")
        positive(self.gpus, "gpus", allow_zero=True)
        if self.gpus > 1 and not float(self.gpus).is_integer():
            raise ConfigError(
                "gpus", f"expected a fraction <= 1 or a whole number of GPUs, got {self.gpus:g}"
            )
        if self.gpu_memory_fraction is not None and not 0 < self.gpu_memory_fraction <= 1:
            raise ConfigError(
                "gpu_memory_fraction", f"expected a value in (0, 1], got {self.gpu_memory_fraction:g}"
            )


@dataclass(frozen=True, kw_only=True)
class TrackingSpec:
    #: MLflow tracking URI; null = sqlite:///<study folder>/mlflow.db.
    uri: str | None = None
    #: MLflow experiment; null = the study name.
    experiment: str | None = None

    def __post_init__(self) -> None:
        if self.uri is not None:
            check_tracking_uri(self.uri, "uri")


#: Databases Optuna's RDB storage runs on.
OPTUNA_SCHEMES = frozenset({"sqlite", "postgresql", "mysql"})


@dataclass(frozen=True, kw_only=True)
class OptunaSpec:
    #: Optuna's RDB storage, for a cluster's shared database (postgresql://user@host/db,
    #: mysql://..., sqlite:////abs/path.db); null = sqlite in the study folder (<study>/optuna.db).
    storage: str | None = None
    #: Another study (its folder, or a study name under ./metatune_results) whose finished
    #: trials are copied, with their values, into this study's Optuna record before the first
    #: trial: the sampler starts from what that study learnt. Same metric and direction.
    warm_start: str | None = None
    #: How a diverged trial reaches Optuna (metatune.study.divergence): prune (PRUNED at its last
    #: finite validation), constraint (COMPLETE at the penalty, infeasible) or fail (FAIL).
    divergence: Encoding = DEFAULT_ENCODING

    def __post_init__(self) -> None:
        if self.storage is not None:
            scheme = self.storage.split("://", 1)[0].lower().split("+")[0] if "://" in self.storage else ""
            if scheme not in OPTUNA_SCHEMES:
                raise ConfigError(
                    "storage",
                    f"expected a database URL with scheme {', '.join(sorted(OPTUNA_SCHEMES))}; got {self.storage!r}",
                )


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    #: Row axis: a searched knob (inner_lr), 'shots' (test support size K, one row per
    #: evaluation.shots) or 'best' (the best configuration per learner); null = the first
    #: grid axis, else 'best'. Columns are always the learners.
    rows: str | None = None
    value: Literal["test_loss", "test_accuracy"] = TEST_LOSS
    #: Published numbers shown beside ours (a key of metatune.study.published.PUBLISHED).
    published: str | None = None
    #: Our values (and the baseline) times this, to read in the published table's units: 10
    #: shows a mean over 10 query points as their sum (Wormhole's Avg-Threshold error).
    scale: float = 1.0

    def __post_init__(self) -> None:
        positive(self.scale, "scale")


@dataclass(frozen=True, kw_only=True)
class RunExtras:
    """Run-config fields outside training/evaluation that every trial shares."""

    device: Literal["cpu", "cuda", "auto"] | None = None
    dtype: Literal["float32", "float64"] = "float32"
    #: torch.compile each trial: true, false, or auto (the run config's rule, see RunConfig.compiles).
    compile: bool | Literal["auto"] = "auto"
    #: torch threads per trial; null = resources.cpus (rounded down, at least 1).
    threads: int | None = None


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    name: str
    description: str = ""
    seed: int = 0
    #: Seed replicates: every configuration trains once per seed (a grid axis), and the
    #: views show the mean over seeds with the across-seed sd. null = one run at ``seed``.
    seeds: tuple[int, ...] | None = None
    #: Shorthand for ``seeds``: this many seeds from ``seed`` on (seed, seed + 1, ...).
    replicates: int | None = None
    task: dict[str, Any]
    model: dict[str, Any] | None = None
    learners: dict[str, Any] | tuple[str, ...]
    search_space: str | dict[str, Any] | None = None
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    #: Number of trials; null = the grid size (grid sampler) or 10.
    trials: int | None = None
    max_concurrent_trials: int | None = None
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    run: RunExtras = field(default_factory=RunExtras)
    #: What Optuna optimises (and ASHA compares): measured on validation tasks at each report.
    metric: Literal["val_loss", "val_accuracy"] = VAL_LOSS
    mode: Literal["min", "max"] | None = None
    #: Finite value reported for the metric when a trial diverges; null = 1e6 (min) or -1 (max).
    divergence_penalty: float | None = None
    #: Retries of a trial whose worker died (it resumes from its last checkpoint).
    max_failures: int = 1
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    optuna: OptunaSpec = field(default_factory=OptunaSpec)
    #: Study folder (Tune experiment, MLflow store, Parquet, exported configs), or a URI
    #: (s3://, gs://) for the Tune experiment; null = ./metatune_results/<name>.
    storage: str | None = None
    table: TableSpec = field(default_factory=TableSpec)
    #: Folder that relative paths (task data, storage) resolve against; null = where
    #: ``metatune run`` starts. The frozen copy records it so resumed trials see the same files.
    workdir: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):  # fullmatch: '$' would let a trailing newline through
            raise ConfigError("name", f"expected letters, digits, '_', '-', '.', got {self.name!r}")
        if self.trials is not None:
            positive(self.trials, "trials")
        if self.max_concurrent_trials is not None:
            positive(self.max_concurrent_trials, "max_concurrent_trials")
        positive(self.max_failures, "max_failures", allow_zero=True)
        if self.seeds is not None and self.replicates is not None:
            raise ConfigError("replicates", "give either seeds (a list) or replicates (a count), not both")
        if self.replicates is not None:
            positive(self.replicates, "replicates")
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("seeds", "expected at least one seed")
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError("seeds", f"expected distinct seeds, got {list(self.seeds)}")

    @property
    def replicate_seeds(self) -> tuple[int, ...]:
        """The seeds of the replicates; () when the study trains each configuration once."""
        if self.replicates is not None:
            return tuple(range(self.seed, self.seed + self.replicates))
        return self.seeds or ()


#: MLflow tracking schemes metatune can log to (http(s) servers, SQL stores, Databricks).
TRACKING_SCHEMES = frozenset({"http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks"})


def check_tracking_uri(uri: str, field_: str) -> None:
    if "://" not in uri or uri.startswith("file:"):
        raise ConfigError(
            field_,
            f"MLflow >= 3.13 refuses file stores ({uri!r}); expected sqlite:////abs/path/mlflow.db "
            "or http://host:port",
        )
    # A typo such as htp:// would otherwise be accepted and every run silently lost.
    scheme = uri.split("://", 1)[0].lower().split("+")[0]  # postgresql+psycopg2 -> postgresql
    if scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            field_, f"expected a tracking URI with scheme {', '.join(sorted(TRACKING_SCHEMES))}; got {uri!r}"
        )


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")
