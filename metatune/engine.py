"""The meta-gradient of one outer step, optionally compiled with ``torch.compile``."""

from __future__ import annotations

import logging
import types
from collections.abc import Callable

import torch
from torch import Tensor

from metatune.learners.base import Learner, Noise, TaskOutput
from metatune.models.base import Params
from metatune.tasks.base import TaskBatch

__all__ = ["MetaGradient", "meta_gradient"]

log = logging.getLogger(__name__)

#: (meta-params, batch, noise) -> (meta-loss, gradients keyed like meta-params, per-task outputs)
MetaGradient = Callable[[Params, TaskBatch, Noise], tuple[Tensor, dict[str, Tensor], TaskOutput]]


def meta_gradient(learner: Learner, *, compile: bool = False) -> MetaGradient:
    """Return a function computing the meta-loss and its gradient w.r.t. every meta-parameter.

    The inner loop runs for all tasks at once (vmap + grad inside ``learner.meta_loss``); the
    outer gradient is ordinary reverse-mode autograd through it.

    With ``compile=True`` the whole outer step -- ``torch.func.grad_and_value`` of
    ``learner.meta_loss`` w.r.t. the meta-parameter dict, i.e. outer grad(vmap(inner grad)) --
    is one ``torch.compile``'d graph (``fullgraph=True, dynamic=False``): forward, inner
    gradients, query loss and outer backward are traced together, so Inductor fuses across the
    inner and outer passes. A first-order learner's ``detach`` of its inner gradients is traced
    as such and stays a stop-gradient for the outer ``grad``. The learner's hyperparameters and
    the tensor shapes are compile-time constants: another meta-batch size or number of shots
    compiles once more (each ``meta_gradient`` call has its own compilation cache), new values
    of the same shapes do not. CPU kernels keep the thread count (``torch.get_num_threads()``)
    of their compilation. The results equal the plain path's up to floating-point rounding;
    the returned loss and per-task outputs are detached (the gradients are already computed).
    If compiling or running the compiled function raises while the plain path succeeds on the
    same inputs, one warning is logged and the plain path is used from then on.
    """

    def plain(meta: Params, batch: TaskBatch, noise: Noise) -> tuple[Tensor, dict[str, Tensor], TaskOutput]:
        loss, out = learner.meta_loss(meta, batch, noise)
        keys = list(meta)
        grads = torch.autograd.grad(loss, [meta[k] for k in keys], allow_unused=True)
        return loss, {k: torch.zeros_like(meta[k]) if g is None else g for k, g in zip(keys, grads)}, out

    if not compile:
        return plain
    return _Compiled(learner, plain)


def _outer_step(
    learner: Learner, meta: Params, batch: TaskBatch, noise: Noise
) -> tuple[Tensor, dict[str, Tensor], TaskOutput]:
    """Meta-loss, its gradients and the per-task outputs, fully functional (what is compiled)."""
    grads, (loss, out) = torch.func.grad_and_value(
        lambda m: learner.meta_loss(m, batch, noise), has_aux=True
    )(meta)
    return loss, grads, out


def _private_copy(fn: types.FunctionType) -> types.FunctionType:
    """``fn`` with its own code object. TorchDynamo keeps compiled graphs (and counts
    recompilations against ``recompile_limit``) per code object; a private one keeps the graphs
    of different learners -- e.g. the trials of a study run in one worker -- from sharing, and
    exhausting, one cache, and frees them with the ``meta_gradient`` that made them."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class _Compiled:
    """The compiled meta-gradient, falling back to ``plain`` for good on the first failure."""

    def __init__(self, learner: Learner, plain: MetaGradient) -> None:
        self.learner = learner
        self.plain = plain
        self.compiled: Callable | None = None
        self.failed = False

    def __call__(self, meta: Params, batch: TaskBatch, noise: Noise) -> tuple[Tensor, dict[str, Tensor], TaskOutput]:
        if self.failed:
            return self.plain(meta, batch, noise)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(_private_copy(_outer_step), fullgraph=True, dynamic=False)
            # Detached inputs: gradients come from grad_and_value inside the graph, so nothing
            # outside needs autograd through it (and AOTAutograd builds no backward for it).
            return self.compiled(
                self.learner,
                {k: v.detach() for k, v in meta.items()},
                TaskBatch(*(t.detach() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))),
                {k: v.detach() for k, v in noise.items()},
            )
        except Exception as exc:  # noqa: BLE001 -- any compiler/runtime failure; see below
            # If the plain path fails too, the inputs are at fault, not compilation: re-raise
            # its error and keep trying the compiled path next time.
            result = self.plain(meta, batch, noise)
            self.failed = True
            self.compiled = None
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            log.warning(
                "torch.compile of the meta-gradient failed for learner %r (%s: %s); "
                "using the uncompiled path from now on",
                getattr(self.learner, "name", type(self.learner).__name__), type(exc).__name__, first_line,
            )
            log.debug("torch.compile failure", exc_info=exc)
            return result
