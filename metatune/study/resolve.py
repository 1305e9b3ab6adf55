"""Resolving a study file: every rule that ties its sections together, checked before Ray starts.

Every error names the file, the dotted field and what was expected. A study that passes here
has had one run config per learner (and per grid point or range end) built with
:func:`metatune.config.parse_config`, so no trial can fail on a config error.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metatune._fields import as_plain, build
from metatune.config import parse_config, read_yaml
from metatune.errors import ConfigError
from metatune.learners import LEARNERS
from metatune.study.param_names import SEED_KEY
from metatune.study.published import PUBLISHED
from metatune.study.records import TEST_ACCURACY, VAL_ACCURACY
from metatune.study.resolved import Study
from metatune.study.schema import DEFAULT_ROOT, FROZEN_FILE, StudySpec, check_tracking_uri, is_uri
from metatune.study.search_space import SearchSpace, load_search_space_file, parse_search_space
from metatune.study.strategies import SAMPLERS, SCHEDULERS

__all__ = ["load_study", "open_study", "parse_study"]


def _learner_overrides(spec: StudySpec) -> dict[str, dict[str, Any]]:
    """Learner label -> its fixed settings. A label is a registered learner's name, or any name
    with ``learner: <registered name>`` inside (a variant: the same learner with other fixed
    settings, compared side by side, e.g. ``wormhole_tanh: {learner: wormhole, ...}``)."""
    raw = spec.learners
    if isinstance(raw, tuple):
        out: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(raw):
            LEARNERS.get(name, field=f"learners[{i}]")
            if name in out:
                raise ConfigError(f"learners[{i}]", f"learner '{name}' is listed twice")
            out[name] = {}
        items = out
    else:
        items = {}
        for name, fixed in raw.items():
            if fixed is None:
                fixed = {}
            if not isinstance(fixed, Mapping):
                raise ConfigError(
                    f"learners.{name}", f"expected a mapping of fixed hyperparameters, got {fixed!r}"
                )
            if "name" in fixed:
                raise ConfigError(f"learners.{name}.name", "the learner's name is the key; remove 'name'")
            kind = fixed.get("learner", name)
            if not isinstance(kind, str):
                raise ConfigError(f"learners.{name}.learner", f"expected a learner's name, got {kind!r}")
            LEARNERS.get(kind, field=f"learners.{name}" + (".learner" if "learner" in fixed else ""))
            if not _LABEL.fullmatch(name):
                raise ConfigError(f"learners.{name}", "expected a label of letters, digits and '_'")
            items[name] = dict(fixed)
    if not items:
        raise ConfigError("learners", "expected at least one learner")
    return items


_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def learner_kinds(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Learner label -> the registered learner it trains."""
    return {label: str(fixed.get("learner", label)) for label, fixed in overrides.items()}


def _settings(fixed: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fixed.items() if k != "learner"}


#: The checkout metatune runs from: a shipped study copied elsewhere still finds its shipped
#: search space (``search_spaces/...``) there.
_SHIPPED_ROOT = Path(__file__).resolve().parents[2]


def _find_file(ref: str, source_dir: Path, cwd: Path) -> Path | None:
    p = Path(ref).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for base in (source_dir, source_dir.parent, cwd, _SHIPPED_ROOT):
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
        spec = _periods_within_budget(build(StudySpec, data), data)
        if spec.workdir is not None:
            cwd = Path(spec.workdir).expanduser().resolve()
        overrides = _learner_overrides(spec)
        _check_reports(spec)
        space, space_src = _resolve_space(spec, overrides, source=source, cwd=cwd)
        space = _with_seeds(spec, space)
        SAMPLERS[spec.sampler.name].check(spec, space, space_src)
        SCHEDULERS[spec.scheduler.name].check(spec)
        study_dir, tune_root = _resolve_storage(spec, storage, cwd=cwd)
        uri = tracking_uri if tracking_uri is not None else spec.tracking.uri
        if tracking_uri is not None:
            check_tracking_uri(tracking_uri, "tracking.uri")
        study = Study(
            spec=spec,
            source=source,
            space=space,
            overrides=overrides,
            base=_base_configs(spec, overrides),
            dir=study_dir,
            tune_root=tune_root,
            tracking_uri=uri or f"sqlite:///{study_dir / 'mlflow.db'}",
            experiment=spec.tracking.experiment or spec.name,
            cwd=str(cwd),
        )
        _check_table(study)
        # Every grid point (or every range end) must make a valid run config too.
        points = space.grid_points() if study.grid else space.corners()
        for point in points:
            try:
                parse_config(study.plan.run_config_for(point))
            except ConfigError as exc:
                shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
                raise ConfigError("search_space", f"the trial ({shown}) is not a valid run: {exc}") from None
        return study
    except ConfigError as exc:
        raise (exc if exc.source else exc.with_source(source)) from None


#: Training periods a study file may leave unset, and the share of ``training.iterations``
#: each then takes (validation and checkpoint 12 times per trial; a training-loss point every
#: 1/120, at most the run config's default of 100): a short look at a shipped study
#: (``--set training.iterations=2000``) keeps its shape instead of failing on a period.
_PERIOD_SHARES = {"eval_every": 12, "checkpoint_every": 12, "log_every": 120}


def _periods_within_budget(spec: StudySpec, data: Mapping[str, Any]) -> StudySpec:
    """The periods the study file leaves unset, as fractions of ``training.iterations``; a
    period the file sets is checked as given."""
    section = data.get("training")
    given: Mapping[str, Any] = section if isinstance(section, Mapping) else {}
    tr = spec.training
    fill: dict[str, Any] = {}
    for name, share in _PERIOD_SHARES.items():
        if name not in given:
            value = max(1, -(-tr.iterations // share))  # ceil: at most `share` periods per trial
            fill[name] = min(value, getattr(tr, name)) if name == "log_every" else value
    return dataclasses.replace(spec, training=dataclasses.replace(tr, **fill)) if fill else spec


def _check_reports(spec: StudySpec) -> None:
    tr = spec.training
    if tr.eval_every == 0:
        raise ConfigError("training.eval_every", "a study reports to Ray Tune at each validation; expected > 0")
    if tr.eval_every > tr.iterations:
        raise ConfigError(
            "training.eval_every",
            f"expected <= training.iterations ({tr.iterations}), got {tr.eval_every}",
        )


def _resolve_space(
    spec: StudySpec, overrides: Mapping[str, Mapping[str, Any]], *, source: str, cwd: Path
) -> tuple[SearchSpace, str]:
    """The search space (a file or inline) and how to name where it came from."""
    source_dir = Path(source).resolve().parent if source else cwd
    kinds = learner_kinds(overrides)
    if spec.search_space is None:
        space = parse_search_space({}, study_learners=list(overrides), kinds=kinds, prefix="search_space")
    elif isinstance(spec.search_space, str):
        path = _find_file(spec.search_space, source_dir, cwd)
        if path is None:
            raise ConfigError(
                "search_space",
                f"file not found: {spec.search_space!r} (looked beside the study, in its parent "
                f"folder, in {cwd} and among metatune's shipped files in {_SHIPPED_ROOT})",
            )
        space = load_search_space_file(path, study_learners=list(overrides), kinds=kinds)
    else:
        space = parse_search_space(
            spec.search_space, study_learners=list(overrides), kinds=kinds, prefix="search_space"
        )
    space_src = spec.search_space if isinstance(spec.search_space, str) else "the inline search_space"
    for learner, fixed in overrides.items():
        for p in space.for_learner(learner):
            if p.knob in fixed:
                raise ConfigError(
                    f"learners.{learner}.{p.knob}",
                    f"fixed here but also searched in {space_src} ('{p.name}'); remove one",
                )
    return space, space_src


def _with_seeds(spec: StudySpec, space: SearchSpace) -> SearchSpace:
    """Seed replicates are a grid axis: each configuration once per seed. A sampled search
    would treat the seed as a parameter to tune, so replicates need the grid sampler."""
    seeds = spec.replicate_seeds
    if not seeds:
        return space
    field_ = "replicates" if spec.replicates is not None else "seeds"
    if not SAMPLERS[spec.sampler.name].grid:
        raise ConfigError(
            field_,
            f"seed replicates run every configuration once per seed, which needs sampler: grid "
            f"(this study uses {spec.sampler.name}, which would tune the seed as a parameter)",
        )
    if any(p.name == SEED_KEY for p in space.params):
        raise ConfigError("search_space", f"'{SEED_KEY}' is the replicates' axis; set it with {field_}")
    return dataclasses.replace(space, seeds=seeds)


def _resolve_storage(spec: StudySpec, storage: str | None, *, cwd: Path) -> tuple[Path, str]:
    """The local study folder and the root of the Tune experiment (that folder, or a URI)."""
    store = storage if storage is not None else spec.storage
    if store is None:
        return cwd / DEFAULT_ROOT / spec.name, str(cwd / DEFAULT_ROOT / spec.name)
    if is_uri(store):
        return cwd / DEFAULT_ROOT / spec.name, store.rstrip("/")
    p = Path(store.removeprefix("file://")).expanduser()
    study_dir = (p if p.is_absolute() else cwd / p).resolve()
    return study_dir, str(study_dir)


def _base_configs(spec: StudySpec, overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """One complete run config per learner, validated by the same code `metatune train` uses."""
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
            "learner": {"name": str(fixed.get("learner", learner)), **_settings(fixed)},
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
        if spec.metric == VAL_ACCURACY and components.task.problem == "regression":
            raise ConfigError("metric", f"task '{spec.task.get('name')}' is a regression task: use val_loss")
        if spec.table.value == TEST_ACCURACY and components.task.problem == "regression":
            raise ConfigError(
                "table.value", f"task '{spec.task.get('name')}' is a regression task: use test_loss"
            )
        base[learner] = cfg
    return base


def _check_table(study: Study) -> None:
    rows = study.spec.table.rows
    if rows is not None and rows not in ("best", "shots"):
        knobs = {p.knob for p in study.space.params} | {p.name for p in study.space.params}
        if rows not in knobs:
            raise ConfigError(
                "table.rows",
                f"expected 'best', 'shots' or a searched parameter ({', '.join(sorted(knobs)) or 'none'}), "
                f"got {rows!r}",
            )
    pub = study.spec.table.published
    if pub is not None and pub not in PUBLISHED:
        raise ConfigError(
            "table.published", f"unknown table {pub!r}; expected one of: {', '.join(sorted(PUBLISHED))}"
        )


def load_study(
    path: str | Path,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    overrides: Sequence[str] = (),
) -> Study:
    """Read and validate a study YAML file (``metatune run``), with ``--set KEY=VALUE``
    ``overrides`` applied first (an error about one names it)."""
    from metatune.study.overrides import apply_overrides, blame, parse_overrides

    path = Path(path)
    items = parse_overrides(overrides)
    data = apply_overrides(read_yaml(path), items)
    try:
        return parse_study(data, source=str(path), storage=storage, tracking_uri=tracking_uri)
    except ConfigError as exc:
        raise blame(exc, items) from None


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
    data = _relocated(read_yaml(frozen), frozen.parent)
    return parse_study(data, source=str(frozen), tracking_uri=tracking_uri)


def warm_start_source(study: Study) -> Study | None:
    """The study named by ``optuna.warm_start`` (a folder, resolved against the study's
    workdir, or a name under its ./metatune_results), checked to optimise the same metric in
    the same direction; None when unset."""
    ref = study.spec.optuna.warm_start
    if ref is None:
        return None
    path = Path(ref).expanduser()
    if not path.is_absolute():
        here = Path(study.cwd) / path
        path = here if here.exists() else Path(study.cwd) / DEFAULT_ROOT / ref
    try:
        source = open_study(path)
    except ConfigError as exc:
        raise ConfigError("optuna.warm_start", exc.detail, source=study.source) from None
    if (source.metric, source.mode) != (study.metric, study.mode):
        raise ConfigError(
            "optuna.warm_start",
            f"study '{source.name}' optimises {source.metric} ({source.mode}), this one {study.metric} "
            f"({study.mode}): its values would mislead the sampler",
            source=study.source,
        )
    return source


def _relocated(data: Any, here: Path) -> Any:
    """A frozen copy found in another folder than the one it names was moved or copied there
    (``cp -r A B``): it is the study of the folder it is in, with its default MLflow store."""
    if not isinstance(data, dict) or not isinstance(data.get("storage"), str) or is_uri(data["storage"]):
        return data
    old, new = Path(data["storage"]).expanduser().resolve(), here.resolve()
    if old == new:
        return data
    out = {**data, "storage": str(new)}
    tracking = data.get("tracking")
    if isinstance(tracking, dict) and tracking.get("uri") == f"sqlite:///{old / 'mlflow.db'}":
        out["tracking"] = {**tracking, "uri": f"sqlite:///{new / 'mlflow.db'}"}
    return out
