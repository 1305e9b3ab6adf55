"""The meta-gradient of one outer step, and the batched evaluation forward, compiled with
``torch.compile`` once per structure.

What is compiled is a pure function of tensors: the meta-parameters, the task batch, the
inner-loop noise and :data:`~metatune.learners.HParams` (every numeric setting as a 0-d tensor).
Only the learner's :meth:`~metatune.learners.Learner.structure_key` (class, steps, modes,
backbone, task) and the tensor shapes decide which compiled graph serves a call, so a sweep
over ``inner_lr`` -- or any numeric setting -- compiles once. Compiled steps are kept per
process by structure key; across processes (the trials of a study on one node) Inductor's and
AOTAutograd's persistent caches live in one folder (:func:`compile_cache_dir`), so a later
trial of a structure loads its kernels instead of compiling them.
"""

from __future__ import annotations

import logging
import os
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metatune.learners.base import HParams, Learner, Noise, TaskOutput
from metatune.models.base import Params
from metatune.outer_update import OptimizerState, OuterUpdate
from metatune.tasks.base import TaskBatch

__all__ = [
    "ALL_FINITE", "COMPILE_STATS", "CompileStats", "MetaGradient", "TrainStep", "all_finite", "compile_cache_dir",
    "configure_compile_cache", "evaluation_forward", "meta_gradient", "train_step",
]

log = logging.getLogger(__name__)

#: (meta-params, batch, noise, hp=None) -> (meta-loss, gradients keyed like meta-params, per-task
#: outputs plus ``ALL_FINITE``)
MetaGradient = Callable[..., tuple[Tensor, dict[str, Tensor], TaskOutput]]

#: Key of the outputs holding a 0-d bool: the meta-loss and every meta-gradient are finite.
#: Computed inside the compiled graph, so checking it costs the trainer no kernels of its own.
ALL_FINITE = "all_finite"


def all_finite(loss: Tensor, grads: dict[str, Tensor]) -> Tensor:
    """Whether ``loss`` and every gradient are finite, on the device (amax propagates NaN)."""
    return torch.isfinite(torch.stack([loss.detach().abs(), *(g.detach().abs().amax() for g in grads.values())])).all()

#: Environment variable naming the compile cache folder (default: ~/.cache/metatune/torch_compile).
CACHE_ENV = "METATUNE_COMPILE_CACHE"


@dataclass
class CompileStats:
    """What this process compiled: graphs built by the backend, how many of them came from the
    persistent cache, and the wall seconds spent in calls that compiled."""

    graphs: int = 0
    cache_hits: int = 0
    seconds: float = 0.0

    def snapshot(self) -> CompileStats:
        return CompileStats(self.graphs, self.cache_hits, self.seconds)

    def since(self, before: CompileStats) -> dict[str, float]:
        return {
            "compile_graphs": self.graphs - before.graphs,
            "compile_cache_hits": self.cache_hits - before.cache_hits,
            "compile_seconds": round(self.seconds - before.seconds, 3),
        }


#: Process-wide counter; a trial records its difference over the run.
COMPILE_STATS = CompileStats()


def compile_cache_dir() -> Path:
    """The persistent compile cache of this node: ``$METATUNE_COMPILE_CACHE``, else
    ``$TORCHINDUCTOR_CACHE_DIR`` if the user set it, else ``~/.cache/metatune/torch_compile``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "metatune" / "torch_compile"


def configure_compile_cache() -> Path:
    """Point Inductor's (and so AOTAutograd's) persistent cache at :func:`compile_cache_dir`.
    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` once, at its first compilation, so this runs
    before any compiling; the default under /tmp would not survive a reboot and is per user."""
    path = compile_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # an unwritable cache only costs compile time
        log.warning("compile cache %s is not writable (%s); using torch's default", path, exc)
        return path
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def _cache_hits() -> int:
    # torch exposes cache hits only through its internal counters (no public API in 2.x).
    from torch._dynamo.utils import counters

    return counters["aot_autograd"]["autograd_cache_hit"] + counters["inductor"]["fxgraph_cache_hit"]


def _counting_inductor(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable:
    """Inductor, counting each graph it builds and whether the persistent cache served it."""
    from torch._inductor.compile_fx import compile_fx

    before = _cache_hits()
    on_cpu = all(t.device.type == "cpu" for t in example_inputs if isinstance(t, Tensor))
    # On a CPU the graph's wrapper in C++ instead of Python: the MAML-protocol sine step (meta-
    # batch 25) took 1.01 ms against 1.14 ms, paid once with a longer cold compile.
    compiled = compile_fx(gm, example_inputs, config_patches={"cpp_wrapper": True} if on_cpu else None)
    assert callable(compiled)  # compile_fx's annotation also admits its non-callable AOT modes
    COMPILE_STATS.graphs += 1
    if _cache_hits() > before:
        COMPILE_STATS.cache_hits += 1
    return compiled


def _private_copy(fn: Callable[..., Any]) -> types.FunctionType:
    """``fn`` with its own code object. TorchDynamo keeps compiled graphs (and counts
    recompilations against ``recompile_limit``) per code object; one per structure keeps
    different learners -- e.g. the trials of a study in one worker -- from sharing, and
    exhausting, one cache."""
    assert isinstance(fn, types.FunctionType)
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


def _detached(meta: Params, batch: TaskBatch, noise: Noise, hp: HParams) -> tuple:
    # Gradients come from grad_and_value inside the graph, so nothing outside needs autograd
    # through it (and AOTAutograd builds no backward for it).
    return (
        {k: v.detach() for k, v in meta.items()},
        TaskBatch(*(t.detach() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))),
        {k: v.detach() for k, v in noise.items()},
        {k: v.detach() for k, v in hp.items()},
    )


def _hp_for(learner: Learner, meta: Params, hp: HParams | None, lr_scale: float = 1.0) -> HParams:
    if hp is not None:
        return hp
    ref = next(iter(meta.values()))
    return learner.runtime_hparams(lr_scale=lr_scale, dtype=ref.dtype, device=ref.device)


def _outer_step(
    learner: Learner, meta: Params, batch: TaskBatch, noise: Noise, hp: HParams
) -> tuple[Tensor, dict[str, Tensor], TaskOutput]:
    """Meta-loss, its gradients and the per-task outputs, fully functional (what is compiled)."""
    grads, (loss, out) = torch.func.grad_and_value(
        lambda m: learner.meta_loss(m, batch, noise, hp), has_aux=True
    )(meta)
    return loss, grads, {**out, ALL_FINITE: all_finite(loss, grads)}


def _train_step(
    learner: Learner, update: OuterUpdate, meta: Params, batch: TaskBatch, noise: Noise, hp: HParams,
    state: OptimizerState, lr: Tensor, clip: Tensor,
) -> tuple[Tensor, TaskOutput]:
    """One outer step, meta-gradient and update, in place on ``meta`` and ``state`` (compiled)."""
    loss, grads, out = _outer_step(learner, meta, batch, noise, hp)
    update.apply(meta, grads, state, lr, clip)
    return loss, out


def _eval_forward(
    learner: Learner, meta: Params, batch: TaskBatch, noise: Noise, hp: HParams, steps: int
) -> TaskOutput:
    """Per-task query loss (and accuracy) after every inner step ``0..steps`` (what is compiled)."""
    return learner.batched(meta, batch, noise, steps=steps, record=True, hp=hp)


class _Compiled:
    """One structure's compiled function; on the first failure of a shipped learner it raises
    (a silent eager fallback would hide a regression), for others it warns once and runs eager."""

    def __init__(self, fn: Callable[..., Any], what: str, strict: bool) -> None:
        self.fn = torch.compile(_private_copy(fn), fullgraph=True, dynamic=False, backend=_counting_inductor)
        self.what = what
        self.strict = strict
        self.failed = False

    def __call__(self, eager: Callable[[], Any], *args: Any) -> Any:
        if self.failed:
            return eager()
        graphs, start = COMPILE_STATS.graphs, time.perf_counter()
        try:
            result = self.fn(*args)
        except Exception as exc:  # noqa: BLE001 -- any compiler/runtime failure; see below
            # If the eager path fails too, the inputs are at fault, not compilation: re-raise
            # its error and keep trying the compiled path next time.
            fallback = eager()
            if self.strict:
                raise RuntimeError(f"torch.compile failed for shipped {self.what}: {exc}") from exc
            self.failed = True
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            log.warning("torch.compile failed for %s (%s: %s); using the uncompiled path from now on",
                        self.what, type(exc).__name__, first_line)
            log.debug("torch.compile failure", exc_info=exc)
            return fallback
        if COMPILE_STATS.graphs != graphs:
            COMPILE_STATS.seconds += time.perf_counter() - start
        return result


#: Compiled functions of this process: (kind, structure key, device, dtype) -> _Compiled.
_CACHE: dict[tuple, _Compiled] = {}


def _compiled_for(kind: str, fn: Callable[..., Any], learner: Learner, meta: Params, *extra: Any) -> _Compiled:
    ref = next(iter(meta.values()))
    key = (kind, learner.structure_key(), str(ref.device), str(ref.dtype), *extra)
    if key not in _CACHE:
        if not _CACHE:
            configure_compile_cache()
        from metatune.learners import is_shipped

        what = f"{kind} of learner {getattr(learner, 'name', type(learner).__name__)!r}"
        _CACHE[key] = _Compiled(fn, what, strict=is_shipped(type(learner)))
    return _CACHE[key]


def meta_gradient(learner: Learner, *, compile: bool = False) -> MetaGradient:
    """Return a function computing the meta-loss and its gradient w.r.t. every meta-parameter.

    The inner loop runs for all tasks at once (vmap + grad inside ``learner.meta_loss``); the
    outer gradient is ordinary reverse-mode autograd through it.

    With ``compile=True`` the whole outer step -- ``torch.func.grad_and_value`` of
    ``learner.meta_loss`` w.r.t. the meta-parameter dict, i.e. outer grad(vmap(inner grad)) --
    is one ``torch.compile``'d graph (``fullgraph=True, dynamic=False``): forward, inner
    gradients, query loss and outer backward are traced together, so Inductor fuses across the
    inner and outer passes. A first-order learner's ``detach`` of its inner gradients is traced
    as such and stays a stop-gradient for the outer ``grad``. Numeric settings arrive as ``hp``
    tensors (default: the learner's own values), so new values reuse the graph; another
    structure, meta-batch size or number of shots compiles once more. The results equal the
    plain path's up to floating-point rounding; the returned loss and per-task outputs are
    detached. A shipped learner that fails to compile raises; a user-written one falls back
    to the plain path with one warning.
    """

    def plain(meta: Params, batch: TaskBatch, noise: Noise, hp: HParams | None = None):
        loss, out = learner.meta_loss(meta, batch, noise, _hp_for(learner, meta, hp))
        keys = list(meta)
        raw = torch.autograd.grad(loss, [meta[k] for k in keys], allow_unused=True)
        grads = {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(keys, raw)}
        return loss, grads, {**out, ALL_FINITE: all_finite(loss, grads)}

    if not compile:
        return plain

    steps: dict[tuple, _Compiled] = {}  # per (device, dtype): the structure key is built once

    def compiled(meta: Params, batch: TaskBatch, noise: Noise, hp: HParams | None = None):
        hp = _hp_for(learner, meta, hp)
        ref = next(iter(meta.values()))
        where = (ref.device, ref.dtype)
        step = steps.get(where)
        if step is None:
            step = steps[where] = _compiled_for("meta-gradient", _outer_step, learner, meta)
        return step(lambda: plain(meta, batch, noise, hp), learner, *_detached(meta, batch, noise, hp))

    return compiled


#: (meta-params, batch, noise, hp) -> (meta-loss, per-task outputs plus ``ALL_FINITE``); the
#: meta-parameters (and the optimiser's state) are updated in place.
TrainStep = Callable[[Params, TaskBatch, Noise, HParams], tuple[Tensor, TaskOutput]]


def train_step(
    learner: Learner, optimizer: torch.optim.Optimizer, *, grad_clip: float | None = None, compile: bool = False,
) -> TrainStep:
    """One outer step of training: the meta-gradient, clipped to ``[-grad_clip, grad_clip]``
    elementwise when set, then ``optimizer``'s update of the meta-parameters it holds.

    Uncompiled, that is :func:`meta_gradient` followed by ``optimizer.step()``. Compiled, the
    clip and the update (:class:`~metatune.outer_update.OuterUpdate`, torch's Adam or SGD
    arithmetic on the optimiser's own state tensors) run inside the meta-gradient's graph:
    a CPU step of the MAML sine protocol then has no optimiser call of its own (the fused Adam
    kernel alone took about 0.15 ms of a 1.2-1.4 ms step). The learning rate and the clip bound
    are tensor inputs; an optimiser with settings :class:`OuterUpdate` does not reproduce keeps
    the uncompiled update. The update is applied whether or not the step was finite (the
    trainer rewinds, see ``metatune.trial``).
    """
    update = OuterUpdate.of(optimizer, clips=grad_clip is not None) if compile else None
    # With the update in the graph, the uncompiled path is only the fallback: keep it plain.
    gradient = meta_gradient(learner, compile=compile and update is None)

    def eager(meta: Params, batch: TaskBatch, noise: Noise, hp: HParams) -> tuple[Tensor, TaskOutput]:
        loss, grads, out = gradient(meta, batch, noise, hp)
        if grad_clip is not None:
            for g in grads.values():
                g.clamp_(-grad_clip, grad_clip)
        for key, p in meta.items():
            p.grad = grads[key]
        optimizer.step()
        return loss.detach(), out

    if update is None:
        return eager
    steps: dict[tuple, _Compiled] = {}
    scalars: dict[tuple, tuple[float, Tensor, Tensor]] = {}  # per device: lr, and (lr, clip) as tensors

    def compiled(meta: Params, batch: TaskBatch, noise: Noise, hp: HParams) -> tuple[Tensor, TaskOutput]:
        ref = next(iter(meta.values()))
        where = (ref.device, ref.dtype)
        step = steps.get(where)
        if step is None:
            step = steps[where] = _compiled_for("train step", _train_step, learner, meta, update)
        lr_value = float(optimizer.param_groups[0]["lr"])
        if where not in scalars or scalars[where][0] != lr_value:
            scalars[where] = (lr_value, torch.tensor(lr_value, dtype=torch.float64, device=ref.device),
                              torch.tensor(grad_clip or 0.0, dtype=torch.float64, device=ref.device))
        _, lr, clip = scalars[where]
        # Detached aliases: the graph writes the update into the parameters' storage, and
        # nothing outside differentiates through it.
        return step(lambda: eager(meta, batch, noise, hp), learner, update, *_detached(meta, batch, noise, hp),
                    update.state(optimizer, meta), lr, clip)

    return compiled


def evaluation_forward(
    learner: Learner, meta: Params, batch: TaskBatch, noise: Noise, *, steps: int, lr_scale: float = 1.0,
    compile: bool = False,
) -> TaskOutput:
    """Per-task outputs after every inner step ``0..steps`` for a batch of held-out tasks
    (the evaluation protocol's one call), compiled once per structure when ``compile``."""
    hp = _hp_for(learner, meta, None, lr_scale)

    def eager() -> TaskOutput:
        with torch.no_grad():  # torch.func.grad still differentiates the inner loop
            return learner.batched(meta, batch, noise, steps=steps, record=True, hp=hp)

    if not compile:
        return eager()
    fn = _compiled_for(f"evaluation ({steps} steps)", _eval_forward, learner, meta)
    with torch.no_grad():
        return fn(eager, learner, *_detached(meta, batch, noise, hp), steps)
