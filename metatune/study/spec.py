"""The study file (``studies/*.yaml``): typed, validated fully before Ray starts.

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
storage: null                                           # default ./metatune_results/<name>
table: {rows: inner_lr}                                 # the study table's row axis
seed: 0
```
Every error names the file, the dotted field and what was expected. A study that passes
here has had one run config per learner (and per grid point or range end) built with
:func:`metatune.config.parse_config`, so no trial can fail on a config error.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from metatune._fields import as_plain, build, positive
from metatune.config import EvaluationConfig, TrainingConfig, parse_config, read_yaml
from metatune.errors import ConfigError
from metatune.learners import LEARNERS
from metatune.study.published import PUBLISHED
from metatune.study.search_space import (
    TRAINING_KNOBS,
    SearchSpace,
    load_search_space_file,
    parse_search_space,
    split_trial_name,
)

__all__ = [
    "FROZEN_FILE",
    "ResourcesSpec",
    "SamplerSpec",
    "SchedulerSpec",
    "Study",
    "StudySpec",
    "TableSpec",
    "TrackingSpec",
    "load_study",
    "open_study",
    "parse_study",
]

#: The resolved study (inline search space, absolute storage, tracking URI) in the study folder.
FROZEN_FILE = "study.yaml"
#: Name of the Ray Tune experiment inside the study's storage.
TUNE_NAME = "tune"
DEFAULT_ROOT = "metatune_results"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True, kw_only=True)
class SamplerSpec:
    name: Literal["tpe", "cmaes", "gp", "random", "grid"] = "tpe"
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
    name: Literal["none", "asha"] = "none"
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


@dataclass(frozen=True, kw_only=True)
class TableSpec:
    #: Row axis: a searched knob (inner_lr) or 'best' (the best trial per learner); null = the
    #: first grid axis, else 'best'. Columns are always the learners.
    rows: str | None = None
    value: Literal["test_loss", "test_accuracy"] = "test_loss"
    #: Published numbers shown beside ours (a key of metatune.study.published.PUBLISHED).
    published: str | None = None


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
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    mode: Literal["min", "max"] | None = None
    #: Finite value reported for the metric when a trial diverges; null = 1e6 (min) or -1 (max).
    divergence_penalty: float | None = None
    #: Retries of a trial whose worker died (it resumes from its last checkpoint).
    max_failures: int = 1
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
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


def check_tracking_uri(uri: str, field_: str) -> None:
    if "://" not in uri or uri.startswith("file:"):
        raise ConfigError(
            field_,
            f"MLflow >= 3.13 refuses file stores ({uri!r}); expected sqlite:////abs/path/mlflow.db "
            "or http://host:port",
        )


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


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
        return "max" if self.spec.metric == "val_accuracy" else "min"

    @property
    def penalty(self) -> float:
        if self.spec.divergence_penalty is not None:
            return self.spec.divergence_penalty
        return 1e6 if self.mode == "min" else -1.0

    @property
    def num_trials(self) -> int:
        if self.spec.trials is not None:
            return self.spec.trials
        return self.space.grid_size() if self.spec.sampler.name == "grid" else 10

    @property
    def sampler_seed(self) -> int:
        return self.spec.sampler.seed if self.spec.sampler.seed is not None else self.spec.seed

    @property
    def initial_points(self) -> list[dict[str, Any]]:
        """Trials enqueued before the sampler's own (one per learner; see SamplerSpec)."""
        s = self.spec
        if s.sampler.name == "grid" or not s.sampler.learners_first or len(self.learners) < 2:
            return []
        return [{"learner": name} for name in self.learners][: self.num_trials]

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
        if self.spec.sampler.name == "grid":
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
    def run_config_for(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The exact run config (``metatune train`` input) of a trial's sampled config."""
        learner = config.get("learner")
        if learner not in self.base:
            raise ConfigError(
                "learner", f"trial config names learner {learner!r}; study has {', '.join(self.base)}"
            )
        cfg = copy.deepcopy(self.base[learner])
        for key, value in config.items():
            if key == "learner":
                continue
            if "." in key and not key.startswith(f"{learner}."):
                continue  # another learner's branch
            knob = split_trial_name(key, learner)
            if knob in TRAINING_KNOBS:
                cfg["training"][knob] = value
            else:
                cfg["learner"][knob] = value
        return cfg

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
        tmp = path.with_suffix(".tmp")
        tmp.write_text(header + yaml.safe_dump(self.frozen(), sort_keys=False, allow_unicode=True))
        os.replace(tmp, path)
        return path


def _learner_overrides(spec: StudySpec) -> dict[str, dict[str, Any]]:
    raw = spec.learners
    if isinstance(raw, tuple):
        out = {}
        for i, name in enumerate(raw):
            LEARNERS.get(name, field=f"learners[{i}]")
            if name in out:
                raise ConfigError(f"learners[{i}]", f"learner '{name}' is listed twice")
            out[name] = {}
        items = out
    else:
        items = {}
        for name, fixed in raw.items():
            LEARNERS.get(name, field=f"learners.{name}")
            if fixed is None:
                fixed = {}
            if not isinstance(fixed, Mapping):
                raise ConfigError(
                    f"learners.{name}", f"expected a mapping of fixed hyperparameters, got {fixed!r}"
                )
            if "name" in fixed:
                raise ConfigError(f"learners.{name}.name", "the learner's name is the key; remove 'name'")
            items[name] = dict(fixed)
    if not items:
        raise ConfigError("learners", "expected at least one learner")
    return items


def _find_file(ref: str, source_dir: Path, cwd: Path) -> Path | None:
    p = Path(ref).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (source_dir, source_dir.parent, cwd):
        if (base / p).is_file():
            return (base / p).resolve()
    return None


def _translate(exc: ConfigError, learner: str) -> ConfigError:
    """Field names of a per-learner run config, as fields of the study file."""
    f = exc.field
    if f == "learner.name":
        return ConfigError(f"learners.{learner}", exc.detail)
    if f.startswith("learner."):
        return ConfigError(f"learners.{learner}.{f[len('learner.') :]}", exc.detail)
    if f == "gpu_memory_fraction":
        return ConfigError("resources.gpu_memory_fraction", exc.detail)
    if f in ("threads", "device", "dtype", "compile"):
        return ConfigError(f"run.{f}", exc.detail)
    return exc


def parse_study(
    data: Any,
    *,
    source: str,
    storage: str | None = None,
    tracking_uri: str | None = None,
    cwd: str | Path | None = None,
) -> Study:
    """Validate a study mapping completely (no Ray, no MLflow) and resolve it."""
    cwd = Path(cwd or os.getcwd()).resolve()
    try:
        if not isinstance(data, Mapping):
            raise ConfigError("<root>", f"expected a mapping at the top level, got {type(data).__name__}")
        spec = build(StudySpec, data)
        if spec.workdir is not None:
            cwd = Path(spec.workdir).expanduser().resolve()
        overrides = _learner_overrides(spec)
        tr = spec.training
        if tr.eval_every == 0:
            raise ConfigError(
                "training.eval_every", "a study reports to Ray Tune at each validation; expected > 0"
            )
        if tr.eval_every > tr.iterations:
            raise ConfigError(
                "training.eval_every",
                f"expected <= training.iterations ({tr.iterations}), got {tr.eval_every}",
            )
        # Search space: a file or inline.
        source_dir = Path(source).resolve().parent if source else cwd
        if spec.search_space is None:
            space = parse_search_space({}, study_learners=list(overrides), prefix="search_space")
        elif isinstance(spec.search_space, str):
            path = _find_file(spec.search_space, source_dir, cwd)
            if path is None:
                raise ConfigError(
                    "search_space",
                    f"file not found: {spec.search_space!r} (looked beside the study, in its parent "
                    f"folder and in {cwd})",
                )
            space = load_search_space_file(path, study_learners=list(overrides))
        else:
            space = parse_search_space(
                spec.search_space, study_learners=list(overrides), prefix="search_space"
            )
        space_src = spec.search_space if isinstance(spec.search_space, str) else "the inline search_space"
        for learner, fixed in overrides.items():
            for p in space.for_learner(learner):
                if p.knob in fixed:
                    raise ConfigError(
                        f"learners.{learner}.{p.knob}",
                        f"fixed here but also searched in {space_src} ('{p.name}'); remove one",
                    )
        _check_sampler(spec, space, space_src)
        _check_scheduler(spec)
        # Paths and tracking.
        store = storage if storage is not None else spec.storage
        if store is None:
            study_dir, tune_root = cwd / DEFAULT_ROOT / spec.name, None
        elif is_uri(store):
            study_dir, tune_root = cwd / DEFAULT_ROOT / spec.name, store.rstrip("/")
        else:
            p = Path(store.removeprefix("file://")).expanduser()
            study_dir, tune_root = (p if p.is_absolute() else cwd / p).resolve(), None
        tune_root = tune_root or str(study_dir)
        uri = tracking_uri if tracking_uri is not None else spec.tracking.uri
        if tracking_uri is not None:
            check_tracking_uri(tracking_uri, "tracking.uri")
        uri = uri or f"sqlite:///{study_dir / 'mlflow.db'}"
        experiment = spec.tracking.experiment or spec.name
        # One complete run config per learner, validated by the same code `metatune train` uses.
        res = spec.resources
        device = spec.run.device or ("cuda" if res.gpus > 0 else "cpu")
        if res.gpus > 0 and device == "cpu":
            raise ConfigError("run.device", "resources.gpus > 0 but run.device is 'cpu'")
        gpu_fraction = res.gpu_memory_fraction
        if gpu_fraction is None and 0 < res.gpus < 1:
            gpu_fraction = res.gpus
        base: dict[str, dict[str, Any]] = {}
        for learner, fixed in overrides.items():
            cfg: dict[str, Any] = {
                "seed": spec.seed,
                "task": dict(spec.task),
                "learner": {"name": learner, **fixed},
                "training": as_plain(spec.training),
                "evaluation": as_plain(spec.evaluation),
                "device": device,
                "dtype": spec.run.dtype,
                "compile": spec.run.compile,
                "threads": spec.run.threads if spec.run.threads is not None else max(1, int(res.cpus)),
            }
            if spec.model is not None:
                cfg["model"] = dict(spec.model)
            if gpu_fraction is not None and device != "cpu":
                cfg["gpu_memory_fraction"] = gpu_fraction
            try:
                components = parse_config(cfg)
            except ConfigError as exc:
                raise _translate(exc, learner) from None
            if spec.metric == "val_accuracy" and components.task.problem == "regression":
                raise ConfigError(
                    "metric", f"task '{spec.task.get('name')}' is a regression task: use val_loss"
                )
            if spec.table.value == "test_accuracy" and components.task.problem == "regression":
                raise ConfigError(
                    "table.value", f"task '{spec.task.get('name')}' is a regression task: use test_loss"
                )
            base[learner] = cfg
        study = Study(
            spec=spec,
            source=source,
            space=space,
            overrides=overrides,
            base=base,
            dir=study_dir,
            tune_root=tune_root,
            tracking_uri=uri,
            experiment=experiment,
            cwd=str(cwd),
        )
        _check_table(study)
        # Every grid point (or every range end) must make a valid run config too.
        points = space.grid_points() if spec.sampler.name == "grid" else space.corners()
        for point in points:
            try:
                parse_config(study.run_config_for(point))
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
                raise ConfigError("search_space", f"the trial ({shown}) is not a valid run: {exc}") from None
        return study
    except ConfigError as exc:
        raise (exc if exc.source else exc.with_source(source)) from None


def _check_sampler(spec: StudySpec, space: SearchSpace, space_src: str) -> None:
    name = spec.sampler.name
    if name == "grid":
        for p in space.params:
            if p.kind != "categorical":
                raise ConfigError(
                    "sampler.name",
                    f"'grid' needs a list of values for every parameter, but {space_src} gives "
                    f"'{p.name}' a range; write it as {{grid: [...]}} or use tpe/random",
                )
        if space.conditional:
            cond = next(p for p in space.params if set(p.learners) != set(space.learners))
            raise ConfigError(
                "sampler.name",
                f"'grid' needs every parameter in every learner's branch, but '{cond.name}' in "
                f"{space_src} applies only to {', '.join(cond.learners)}",
            )
        size = space.grid_size()
        if spec.trials is not None and spec.trials > size:
            raise ConfigError(
                "trials", f"the grid has {size} points; expected trials <= {size}, got {spec.trials}"
            )
    elif name == "cmaes":
        cats = [p.name for p in space.params if p.kind == "categorical"]
        if len(space.learners) > 1:
            cats.insert(0, "learner")
        if cats:
            raise ConfigError(
                "sampler.name",
                f"'cmaes' samples continuous spaces only (CMA-ES falls back to random search for "
                f"{', '.join(cats)}); use one learner and ranges only, or tpe/gp",
            )
        if not space.params:
            raise ConfigError("sampler.name", f"'cmaes' needs at least one range in {space_src}")
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError(
                "sampler.name", "'cmaes' needs the cmaes package (pip install 'cmaes>=0.12')"
            ) from None
    elif not space.params and len(space.learners) == 1:
        raise ConfigError(
            "search_space", f"nothing to search: {space_src} has no parameters and there is one learner"
        )


def _check_scheduler(spec: StudySpec) -> None:
    sch = spec.scheduler
    if sch.name == "none":
        for name in ("grace_period", "max_t"):
            if getattr(sch, name) is not None:
                raise ConfigError(f"scheduler.{name}", "only used with scheduler 'asha'")
        return
    if spec.sampler.name == "grid":
        raise ConfigError(
            "scheduler.name", "'asha' stops grid trials early and leaves holes in the grid table; use none"
        )
    its = spec.training.iterations
    max_t = sch.max_t or its
    grace = sch.grace_period or spec.training.eval_every
    if max_t > its:
        raise ConfigError("scheduler.max_t", f"expected <= training.iterations ({its}), got {max_t}")
    if grace >= max_t:
        raise ConfigError("scheduler.grace_period", f"expected < max_t ({max_t}), got {grace}")
    if grace < spec.training.eval_every:
        raise ConfigError(
            "scheduler.grace_period",
            f"trials report every training.eval_every = {spec.training.eval_every} "
            f"iterations; expected grace_period >= that, got {grace}",
        )


def _check_table(study: Study) -> None:
    rows = study.spec.table.rows
    if rows is not None and rows != "best":
        knobs = {p.knob for p in study.space.params} | {p.name for p in study.space.params}
        if rows not in knobs:
            raise ConfigError(
                "table.rows",
                f"expected 'best' or a searched parameter ({', '.join(sorted(knobs)) or 'none'}), "
                f"got {rows!r}",
            )
    pub = study.spec.table.published
    if pub is not None and pub not in PUBLISHED:
        raise ConfigError(
            "table.published", f"unknown table {pub!r}; expected one of: {', '.join(sorted(PUBLISHED))}"
        )


def load_study(path: str | Path, *, storage: str | None = None, tracking_uri: str | None = None) -> Study:
    """Read and validate a study YAML file (``metatune run``)."""
    path = Path(path)
    return parse_study(read_yaml(path), source=str(path), storage=storage, tracking_uri=tracking_uri)


def open_study(ref: str | Path, *, tracking_uri: str | None = None) -> Study:
    """The study of an earlier ``metatune run``: a study folder, a study YAML, or a name under
    ./metatune_results. Reads the frozen copy in the study folder."""
    ref_p = Path(ref)
    candidates: list[Path] = []
    if ref_p.is_dir():
        candidates.append(ref_p / FROZEN_FILE)
    elif ref_p.is_file():
        if ref_p.name == FROZEN_FILE:
            candidates.append(ref_p)
        else:
            original = load_study(ref_p)
            candidates.append(original.dir / FROZEN_FILE)
    else:
        candidates.append(Path.cwd() / DEFAULT_ROOT / str(ref) / FROZEN_FILE)
    frozen = candidates[0]
    if not frozen.is_file():
        raise ConfigError(
            "<study>",
            f"no study found at {frozen.parent} (expected {FROZEN_FILE} written by `metatune run`)",
            source=str(ref),
        )
    data = read_yaml(frozen)
    return parse_study(data, source=str(frozen), tracking_uri=tracking_uri)
