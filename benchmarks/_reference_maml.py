"""A minimal hand-written compiled MAML with torch.func: the ceiling ``benchmarks/throughput.py``
compares metatune's compiled step with (method ``reference``).

Nothing from metatune: a functional ReLU MLP on a dict of parameters (``fc0.weight``,
``fc0.bias``, ..., applied in the dict's order, ``F.linear`` per layer, ReLU between layers),
inner SGD steps with ``torch.func.grad`` (detached for first order), ``vmap`` over the tasks,
the mean query MSE differentiated with ``torch.func.grad_and_value``, and that whole outer step
in one ``torch.compile(fullgraph=True, dynamic=False)`` graph. The inner rate is a Python
constant (a hand-written MAML would bake it in; metatune passes it as a tensor input).
"""

from __future__ import annotations

import types

import torch
from torch.func import grad, grad_and_value, vmap
from torch.nn import functional as F

#: Compiled steps of this process by (layer keys, steps, rate, first order): a later run of the
#: same cell reuses its graph, as metatune's compiled steps are cached per structure.
_STEPS: dict[tuple, object] = {}


def mlp(params: dict, x: torch.Tensor) -> torch.Tensor:
    ws = list(params.values())
    for i in range(0, len(ws), 2):
        x = F.linear(x, ws[i], ws[i + 1])
        if i + 2 < len(ws):
            x = torch.relu(x)
    return x


def compiled_maml_step(keys: tuple[str, ...], steps: int, inner_lr: float, first_order: bool, compile: bool = True):
    """fn(params, support_x, support_y, query_x, query_y) -> (meta-loss, grads keyed like params);
    inputs carry a leading task dimension; ``params`` must be ordered weight, bias per layer."""
    key = (tuple(keys), steps, float(inner_lr), bool(first_order), compile)
    if key in _STEPS:
        return _STEPS[key]

    def task_loss(params, sx, sy, qx, qy):
        fast = params
        for _ in range(steps):
            g = grad(lambda p: F.mse_loss(mlp(p, sx), sy))(fast)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            fast = {k: fast[k] - inner_lr * g[k] for k in fast}
        return F.mse_loss(mlp(fast, qx), qy)

    def meta_loss(params, sx, sy, qx, qy):
        return vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, sx, sy, qx, qy).mean()

    def outer(params, sx, sy, qx, qy):
        grads, loss = grad_and_value(meta_loss)(params, sx, sy, qx, qy)
        return loss, grads

    if compile:
        # A code object of its own per cell: Dynamo caches (and counts recompilations) per code
        # object, and the cells of one process would otherwise share, and exhaust, one cache.
        own = types.FunctionType(outer.__code__.replace(), outer.__globals__, "reference_maml_step",
                                 outer.__defaults__, outer.__closure__)
        fn = torch.compile(own, fullgraph=True, dynamic=False)
    else:
        fn = outer
    _STEPS[key] = fn
    return fn
