"""The learner contract: a meta-learner is a pure function of (meta-parameters, task batch,
noise). The inner step is ``w <- w - P ⊙ grad_w L_support(w)``; a learner states its step size
or preconditioner P (:meth:`Learner.step_size`: alpha for MAML, alpha_k for Meta-SGD, alpha * M
for MT-net, Q_j for PAMELA) and overrides the whole step only where it is more than that. This
base class batches the steps over every task of a meta-batch with ``torch.func.vmap`` and takes
inner gradients with ``torch.func.grad``.
"""

from __future__ import annotations

import abc
import warnings
from collections.abc import Callable, Mapping
from typing import ClassVar, Generic, TypeVar, cast

import torch
from torch import Tensor
from torch.func import grad, vmap

from metatune.errors import ConfigError
from metatune.learners.hparams import HyperParameter, LearnerConfig, Value, config_from_rows
from metatune.learners.state import AdaptState
from metatune.models.base import Backbone, Params
from metatune.tasks.base import TaskBatch, TaskDistribution

__all__ = ["AdaptState", "HParams", "Learner", "Noise", "State", "StateT", "TaskOutput"]

Noise = dict[str, Tensor]
#: The numeric hyperparameters of one call as 0-d tensors (every float setting, plus the
#: evaluation's ``lr_scale``). They are inputs of the compiled step, never constants, so a
#: sweep over their values reuses one compilation.
HParams = dict[str, Tensor]
#: A learner's per-task adaptation state: the adapted weights ``w``, plus a learner's own fields
#: in a subclass (:mod:`metatune.learners.state`).
State = AdaptState
TaskOutput = dict[str, Tensor]
#: A pytree of tensors differentiated by :meth:`Learner.support_grad` (a weight dict, a tensor, ...).
Tree = TypeVar("Tree")
#: The state class of one learner (``AdaptState`` or a subclass with the learner's own fields).
StateT = TypeVar("StateT", bound=AdaptState)


class Learner(abc.ABC, Generic[StateT]):
    """Base of every meta-learner.

    Per task (unbatched, run under vmap): ``init_state`` -> ``inner_step`` x n -> ``predict``.
    Meta-loss = mean over tasks of the query loss after the last inner step (algorithms.md
    §11.6); a task's loss is :meth:`loss` (its examples' mean or sum, ``loss_reduction``). Randomness (``sample_noise``) is drawn outside vmap from an explicit generator;
    checks of the call (``check_steps``) run outside vmap too. Nothing under vmap mutates the
    learner or raises.
    """

    name: ClassVar[str]
    #: The learner's settings, declared once: a frozen pydantic model (``LearnerConfig``: the
    #: ``inner_lr``, ``inner_steps`` and ``first_order`` of every learner). A learner with
    #: settings of its own subclasses it and narrows ``config`` to it.
    config_class: ClassVar[type[LearnerConfig]] = LearnerConfig
    #: Those settings as rows for search spaces, tables and schemas (derived; never declared).
    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = LearnerConfig.hyperparameters()
    #: Whether the learner needs a backbone with batch norm (CxGrad) or with conv layers.
    requires_batchnorm: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "hyperparameters" in cls.__dict__ and "config_class" not in cls.__dict__:
            # A learner written before config classes declared rows; they still work, as a
            # config class made from them.
            warnings.warn(
                f"{cls.__qualname__}: declare settings as a LearnerConfig subclass (config_class), "
                "not as hyperparameters rows", DeprecationWarning, stacklevel=2,
            )
            cls.config_class = config_from_rows(f"{cls.__name__}Config", cls.__dict__["hyperparameters"])
        cls.hyperparameters = cls.config_class.hyperparameters()

    def __init__(
        self, *, backbone: Backbone, task: TaskDistribution, config: LearnerConfig | None = None,
        **settings: Value,
    ) -> None:
        """``config`` is a validated :attr:`config_class` (``parse_config`` makes one); a learner
        built in Python may give its settings as keywords instead, validated here."""
        if config is None:
            config = self.parse_settings(settings)
        elif settings or not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__} or keyword settings, not both")
        self.backbone = backbone
        self.task = task
        self.config = config
        self.check_backbone(backbone)
        self._adapted = backbone.adapted_keys()

    @property
    def hparams(self) -> dict[str, Value]:
        """The settings by name, a fresh dict (for code that reads them generically; a learner
        reads its own from :attr:`config`, typed)."""
        return self.config.values()

    # ----------------------------------------------------------------- declaration
    @classmethod
    def declared(cls) -> dict[str, HyperParameter]:
        return {h.name: h for h in cls.hyperparameters}

    @classmethod
    def parse_settings(cls, values: Mapping[str, object], *, prefix: str = "") -> LearnerConfig:
        """A learner section (without ``name``) as this learner's config: the one validation."""
        return cls.config_class.parse(values, learner=getattr(cls, "name", cls.__name__), prefix=prefix)

    @classmethod
    def runtime_names(cls) -> tuple[str, ...]:
        """The settings that reach the inner loop as tensors (every float one)."""
        return tuple(h.name for h in cls.hyperparameters if h.kind == "float")

    def runtime_hparams(
        self, *, lr_scale: float = 1.0, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
    ) -> HParams:
        """This learner's numeric settings (and ``lr_scale``) as 0-d tensors for one call."""
        values = {name: float(getattr(self.config, name)) for name in self.runtime_names()}
        values["lr_scale"] = float(lr_scale)
        return {k: torch.tensor(v, dtype=dtype, device=device) for k, v in values.items()}

    def structure_key(self) -> tuple:
        """What a compiled step depends on besides its tensor inputs: the learner class, its
        non-numeric settings (steps, modes, flags), the backbone and the task. Two learners
        with equal keys differ only in values that enter as :data:`HParams`."""
        runtime = set(self.runtime_names())
        settings = tuple(sorted((k, v) for k, v in self.hparams.items() if k not in runtime))
        return (type(self).__module__, type(self).__qualname__, settings, repr(self.backbone), repr(self.task))

    def check_backbone(self, backbone: Backbone) -> None:
        if self.requires_batchnorm and not backbone.has_batchnorm:
            raise ConfigError(
                "model.name",
                f"learner '{self.name}' needs a backbone with batch norm (e.g. conv4); "
                f"'{backbone.name}' has none",
            )

    # ----------------------------------------------------------------- meta-parameters
    def init_meta_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        """Backbone parameters plus any the learner meta-learns (rates, T, logits, ...)."""
        return self.backbone.init_params(generator=generator, dtype=dtype)

    def sample_noise(
        self, num_tasks: int, *, generator: torch.Generator, meta_params: Params, steps: int, training: bool = True,
    ) -> Noise:
        """Random inputs of the inner loop, one row per task (default: none). ``training`` is
        False when the evaluation protocol draws them (MT-net's ``mask_eval`` reads it)."""
        return {}

    @property
    def draws_training_noise(self) -> bool:
        """Whether :meth:`sample_noise` draws from the generator in training (default: whenever a
        subclass overrides it). The trainer draws task batches in blocks only when it does not,
        since a block would reorder the one stream the two share."""
        return type(self).sample_noise is not Learner.sample_noise

    # ----------------------------------------------------------------- per task (under vmap)
    def init_state(self, meta: Params, support_x: Tensor, support_y: Tensor, noise: Noise, *, hp: HParams) -> StateT:
        """The state before the first step: the meta-learned weights. A learner whose state class
        has fields of its own overrides this."""
        return cast(StateT, AdaptState(w={k: meta[k] for k in self._adapted}))

    def step_size(self, meta: Params, state: StateT, noise: Noise, *, step: int, hp: HParams) -> Params:
        """P of ``w <- w - P ⊙ g`` for every adapted key, broadcastable to its weight: by default
        alpha (``inner_lr``) times ``lr_scale``. Numeric settings are read from ``hp`` (tensors),
        never from ``self.hparams``: a constant there would be baked into the compiled step."""
        lr = hp["inner_lr"] * hp["lr_scale"]
        return {k: lr for k in state.w}

    def inner_step(
        self, meta: Params, state: StateT, support_x: Tensor, support_y: Tensor, noise: Noise,
        *, step: int, hp: HParams,
    ) -> StateT:
        """One adaptation step for one task: ``w <- w - P ⊙ grad_w L_support(w)`` with P from
        :meth:`step_size`; the rest of the state is carried over."""
        grads = self.support_grad(lambda w: self.loss_at(meta, w, support_x, support_y), state.w)
        rate = self.step_size(meta, state, noise, step=step, hp=hp)
        return state.with_weights({k: w - rate[k] * grads[k] for k, w in state.w.items()})

    def predict(self, meta: Params, state: StateT, x: Tensor) -> Tensor:
        return self.backbone.apply({**meta, **state.w}, x)

    def task_stats(self, meta: Params, state: StateT, noise: Noise) -> dict[str, Tensor]:
        """Per-task diagnostics logged after adaptation (mask fractions, context norms)."""
        return {}

    # ----------------------------------------------------------------- helpers
    def loss(self, prediction: Tensor, target: Tensor) -> Tensor:
        """One task's loss, the one every loss goes through (inner, outer, reported): the task's
        mean over its examples, or for ``loss_reduction: sum`` that times the number of examples
        (``target``'s first dim, static under vmap), i.e. the sum of Wormhole eq. 8."""
        loss = self.task.loss(prediction, target)
        return loss * target.shape[0] if self.config.loss_reduction == "sum" else loss

    def loss_at(self, meta: Params, weights: Params, x: Tensor, y: Tensor) -> Tensor:
        """The task loss of the backbone with ``weights`` (adapted keys) over ``meta``."""
        return self.loss(self.backbone.apply({**meta, **weights}, x), y)

    def support_grad(self, loss_fn: Callable[[Tree], Tensor], params: Tree, *, constant: bool | None = None) -> Tree:
        """Gradient of a per-task support loss w.r.t. ``params``; a constant for the meta-gradient
        when ``constant`` (default: when ``first_order`` is set)."""
        if constant is None:
            constant = self.config.first_order
        grads = grad(loss_fn)(params)
        if constant:
            grads = torch.utils._pytree.tree_map(lambda g: g.detach(), grads)
        return grads

    def check_steps(self, *, steps: int) -> None:
        """Refuse (raise) a number of inner steps this learner cannot run, before any task is
        adapted: called once per :meth:`batched` call, outside vmap (default: any number)."""

    def check_noise(self, noise: Noise, *, steps: int) -> None:
        """Refuse (raise ValueError naming the learner) noise that does not cover ``steps``
        inner steps, e.g. drawn with ``sample_noise(steps=1)`` for a 10-step run; called with
        :meth:`check_steps`, outside vmap (default: any noise)."""

    # ----------------------------------------------------------------- batched API
    def run_task(
        self, meta: Params, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
        noise: Noise, *, steps: int, hp: HParams, record: bool = False,
    ) -> TaskOutput:
        """Adapt to one task and score the query set: ``loss`` (and ``accuracy``) after the last
        step, or after every step ``0..steps`` when ``record`` is set."""
        state = self.init_state(meta, support_x, support_y, noise, hp=hp)
        losses, accs = [], []

        def score(state: StateT) -> None:
            pred = self.predict(meta, state, query_x)
            losses.append(self.loss(pred, query_y))
            acc = self.task.accuracy(pred, query_y)
            if acc is not None:
                accs.append(acc)

        if record:
            score(state)
        for step in range(steps):
            state = self.inner_step(meta, state, support_x, support_y, noise, step=step, hp=hp)
            if record:
                score(state)
        if not record:
            score(state)
        out: TaskOutput = {"loss": torch.stack(losses) if record else losses[-1]}
        if accs:
            out["accuracy"] = torch.stack(accs) if record else accs[-1]
        for key, value in self.task_stats(meta, state, noise).items():
            out[f"stats/{key}"] = value
        return out

    def batched(
        self, meta: Params, batch: TaskBatch, noise: Noise, *, steps: int | None = None,
        lr_scale: float = 1.0, record: bool = False, hp: HParams | None = None,
    ) -> TaskOutput:
        """``run_task`` over every task of ``batch`` at once (vmap); outputs gain a task dim.
        ``hp`` defaults to :meth:`runtime_hparams` (with ``lr_scale``) in the batch's dtype."""
        steps = self.config.inner_steps if steps is None else steps
        self.check_steps(steps=steps)
        self.check_noise(noise, steps=steps)
        if hp is None:
            hp = self.runtime_hparams(lr_scale=lr_scale, dtype=batch.support_x.dtype, device=batch.support_x.device)

        def one(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, nz: Noise) -> TaskOutput:
            return self.run_task(meta, sx, sy, qx, qy, nz, steps=steps, hp=hp, record=record)

        return vmap(one, randomness="error")(
            batch.support_x, batch.support_y, batch.query_x, batch.query_y, noise
        )

    def meta_loss(
        self, meta: Params, batch: TaskBatch, noise: Noise, hp: HParams | None = None,
    ) -> tuple[Tensor, TaskOutput]:
        """Mean query loss over the batch after ``inner_steps`` steps, and per-task outputs."""
        out = self.batched(meta, batch, noise, hp=hp)
        return out["loss"].mean(), out
