"""The run configuration that ``metatune train`` reads and ``metatune export`` writes.

```yaml
seed: 0
task: {name: sine, protocol: metasgd, shots: 10}
model: {name: mlp}                     # optional: the task's default backbone
learner: {name: maml, inner_lr: 0.01, inner_steps: 1}
training: {iterations: 60000, meta_batch: 4, outer_lr: 0.001}
evaluation: {tasks: 600, shots: [5, 10, 20], inner_steps: 10}
```
Everything is validated here, before any training (or cluster) work starts; errors name the
file and the dotted field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from metatune._fields import as_plain, build, positive
from metatune.errors import ConfigError
from metatune.learners import LEARNERS, HyperParameter, Learner
from metatune.learners.hparams import Settings, setting
from metatune.models import Backbone, build_backbone
from metatune.tasks import TaskDistribution, build_task
from metatune.yaml_files import read_yaml  # re-exported: callers outside metatune import it from here

__all__ = ["AUTO_COMPILE_MIN_ITERATIONS", "EvaluationConfig", "RunConfig", "TrainingConfig", "TrainingKnobs", "Components", "load_config", "read_yaml"]


class TrainingKnobs(Settings):
    """The training settings a search space may sample: the one declaration of each (symbol,
    valid and default search range). A search space validates its ranges with this model;
    :class:`TrainingConfig` takes its defaults from here."""

    meta_batch: int = setting(4, symbol="B", ge=1, log=True, search=(2, 32), help="tasks per outer step")
    outer_lr: float = setting(
        1e-3, symbol="beta", gt=0.0, log=True, search=(1e-4, 1e-2), help="outer-loop step size (Adam or SGD)",
    )
    #: Off by default; a search space samples a bound (null is not a value to search).
    grad_clip: float = setting(
        None, gt=0.0, log=True, search=(0.1, 100.0), help="meta-gradient clipping bound (null: no clipping)",
    )


def _knob_default(name: str) -> Any:
    return TrainingKnobs.model_fields[name].default


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    iterations: int = 1000
    meta_batch: int = _knob_default("meta_batch")
    #: Step size of the outer loop (beta; CxGrad's eta).
    outer_lr: float = _knob_default("outer_lr")
    #: Outer optimiser: Adam in every paper here except Wormhole's Avg-Threshold (plain SGD).
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    #: Clip every meta-gradient element to [-grad_clip, grad_clip] (TF miniImageNet: 10); null = off.
    grad_clip: float | None = _knob_default("grad_clip")
    #: Validate on held-out tasks every this many iterations (0 = only at the end).
    eval_every: int = 1000
    val_tasks: int = 100
    checkpoint_every: int = 1000
    log_every: int = 100

    def __post_init__(self) -> None:
        positive(self.iterations, "iterations")
        positive(self.meta_batch, "meta_batch")
        positive(self.outer_lr, "outer_lr")
        if self.grad_clip is not None:
            positive(self.grad_clip, "grad_clip")
        for name in ("eval_every", "checkpoint_every"):
            positive(getattr(self, name), name, allow_zero=True)
        positive(self.val_tasks, "val_tasks")
        positive(self.log_every, "log_every")

    @classmethod
    def knobs(cls) -> dict[str, HyperParameter]:
        """The training settings a search space may sample, by name (declared in
        :class:`TrainingKnobs`: search spaces validate and default their ranges from it)."""
        return {h.name: h for h in TrainingKnobs.hyperparameters()}


@dataclass(frozen=True, kw_only=True)
class EvaluationConfig:
    """Post-adaptation evaluation on held-out tasks (algorithms.md §8)."""

    tasks: int = 600
    #: Support sizes to test at; null = the training K only.
    shots: tuple[int, ...] | None = None
    #: Inner steps of the headline numbers; null = the training steps.
    inner_steps: int | None = None
    #: The loss-vs-steps curve runs from step 0 to this (null = ``inner_steps``).
    curve_steps: int | None = None
    #: Multipliers of the inner step size for the robustness curve (at the training K).
    lr_scales: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 10.0)
    #: Seed of the held-out task stream: every learner is scored on the same tasks.
    seed: int = 1
    split: Literal["train", "val", "test"] = "test"
    #: Tasks per vmapped call (memory bound).
    chunk: int = 100

    def __post_init__(self) -> None:
        positive(self.tasks, "tasks")
        if self.tasks < 2:
            raise ConfigError("tasks", "at least 2 tasks are needed for a confidence interval")
        for i, k in enumerate(self.shots or ()):
            positive(k, f"shots[{i}]")
        if self.inner_steps is not None:
            positive(self.inner_steps, "inner_steps", allow_zero=True)
        if self.curve_steps is not None:
            positive(self.curve_steps, "curve_steps", allow_zero=True)
            if self.inner_steps is not None and self.curve_steps < self.inner_steps:
                raise ConfigError("curve_steps", f"expected >= inner_steps ({self.inner_steps}), got {self.curve_steps}")
        for i, s in enumerate(self.lr_scales):
            positive(s, f"lr_scales[{i}]")
        positive(self.chunk, "chunk")


#: ``compile: auto`` compiles runs of at least this many training iterations.
AUTO_COMPILE_MIN_ITERATIONS = 5000


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    seed: int = 0
    task: dict[str, Any]
    model: dict[str, Any] | None = None
    learner: dict[str, Any]
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    dtype: Literal["float32", "float64"] = "float32"
    #: torch.compile the meta-gradient and the evaluation: true, false, or auto (see
    #: :meth:`compiles`: compile unless the run is too short to repay the compilation).
    compile: bool | Literal["auto"] = "auto"
    #: torch intra-op threads; null = torch's default.
    threads: int | None = None
    #: Cap this process's share of GPU memory (set by studies that pack trials on one GPU).
    gpu_memory_fraction: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return as_plain(self)

    def compiles(self) -> bool:
        """Whether this run compiles. ``auto``: when it trains at least
        :data:`AUTO_COMPILE_MIN_ITERATIONS` iterations. A cold compilation takes 10-60 s on a
        2-core machine (seconds from the persistent cache) and the compiled step is 5-15x faster
        than eager, so shorter runs (smoke tests, tiny studies) finish sooner uncompiled."""
        if self.compile == "auto":
            return self.training.iterations >= AUTO_COMPILE_MIN_ITERATIONS
        return bool(self.compile)

    def compiles_evaluation(self, device_type: str) -> bool:
        """Whether validation and the test protocol compile. ``auto``: on CUDA, when training
        compiles. On a CPU the whole protocol runs eager in about a second (a few large
        vmapped calls), less than compiling its 3-5 graphs would take; on a GPU eager pays a
        kernel launch per op, per step. ``true`` compiles it everywhere."""
        if self.compile == "auto":
            return self.compiles() and device_type == "cuda"
        return bool(self.compile)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Components:
    """The live objects a config describes."""

    config: RunConfig
    task: TaskDistribution
    backbone: Backbone
    learner: Learner


def _section(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"expected a mapping with a 'name', got {value!r}")
    return dict(value)


def parse_config(data: Any, *, source: str | None = None) -> Components:
    """Validate a config mapping fully and build its task, backbone and learner."""
    try:
        if not isinstance(data, Mapping):
            raise ConfigError("<root>", f"expected a mapping at the top level, got {type(data).__name__}")
        for key in ("task", "learner"):
            if key not in data:
                raise ConfigError(key, "missing; expected a mapping with a 'name'")
            _section(data, key)
        if data.get("model") is not None:
            _section(data, "model")
        config = build(RunConfig, data)
        task = build_task(config.task)
        model_section = config.model if config.model is not None else task.default_backbone()
        backbone = build_backbone(model_section, input_shape=task.input_shape, output_dim=task.output_dim)
        learner_section = dict(config.learner)
        cls = LEARNERS.get(learner_section.pop("name", None), field="learner.name")
        settings = cls.parse_settings(learner_section, prefix="learner.")  # validated here, once
        learner = cls(backbone=backbone, task=task, config=settings)
        if config.threads is not None:
            positive(config.threads, "threads")
        if config.gpu_memory_fraction is not None and not 0 < config.gpu_memory_fraction <= 1:
            raise ConfigError("gpu_memory_fraction", f"expected a value in (0, 1], got {config.gpu_memory_fraction}")
    except ConfigError as exc:
        raise (exc.with_source(source) if source else exc) from None
    return Components(config=config, task=task, backbone=backbone, learner=learner)


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> Components:
    """Read, validate and build a run config from a YAML file."""
    data = read_yaml(path)
    if overrides and isinstance(data, dict):
        data = {**data, **overrides}
    return parse_config(data, source=str(path))
