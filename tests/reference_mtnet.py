"""Per-task references (see reference.py); registers into REFERENCES and contract SETTINGS.

MT-net family (algorithms.md §3): a plain loop over tasks and inner steps with
``torch.autograd.grad(create_graph=not first_order)``. The masks are built here from the
SAME noise tensors (``gumbel/<zeta key>``: logistic g1 - g2, ``[tasks, S, *zeta.shape]``)
through a hand-written straight-through autograd Function -- forward 1[zeta + g > 0],
backward d sigmoid((zeta + g) / c) / d zeta = s (1 - s) / c; or, for ``mask_forward: soft``,
the plain sigmoid((zeta + g) / c) -- and expanded to rows by
explicit indexing, sharing nothing with the learner but the backbone's forward (which applies
``<cell>.T``).
"""

from __future__ import annotations

import torch
from contract_settings import SETTINGS
from reference import reference
from torch import Tensor

from metatune.testing import inner_grad, task_loss

# Between them the five settings cover every backbone (tnet keeps the default sine MLP), both
# resampling schedules for shared and for -full masks, and a temperature other than 1.
SETTINGS["mtnet"] = {
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "hparams": {"inner_lr": 0.05, "mask_temperature": 0.5},
}
SETTINGS["mnet"] = {
    "task": {"name": "digits", "ways": 3, "shots": 1, "query": 2},
    # no conv bias: a conv bias right before batch norm has an identically zero gradient
    "model": {"name": "conv4", "blocks": 2, "channels": 3, "conv_bias": False},
    "hparams": {"inner_lr": 0.1, "mask_resample": "per_step"},
}
SETTINGS["mnet_full"] = {
    "task": {"name": "avg_threshold", "shots": 6, "query": 5},
    "model": {"name": "linear"},
    "hparams": {"inner_lr": 0.5, "mask_resample": "per_task", "mask_temperature": 2.0},
}
SETTINGS["mtnet_full"] = {
    "task": {"name": "digits", "ways": 3, "shots": 1, "query": 2},
    "model": {"name": "digits_conv", "channels": [2, 3], "hidden": 5},
    "hparams": {"inner_lr": 0.1},
}


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, zeta: Tensor, g: Tensor, c: float) -> Tensor:
        ctx.save_for_backward(zeta, g)
        ctx.c = c
        return torch.where(zeta + g > 0, torch.ones_like(zeta), torch.zeros_like(zeta))

    @staticmethod
    def backward(ctx, out_grad: Tensor):
        zeta, g = ctx.saved_tensors
        s = 1.0 / (1.0 + torch.exp(-(zeta + g) / ctx.c))
        return out_grad * s * (1.0 - s) / ctx.c, None, None


def _mask_for(learner, meta: dict, noise: dict, task: int, step: int, key: str) -> Tensor:
    """Mask of adapted tensor ``key`` (``<cell>.weight`` / ``<cell>.bias``) for one task/step."""
    hp = learner.hparams
    cell, kind = key.rsplit(".", 1)
    zkey = f"zeta/{key}" if learner.full else f"zeta/{cell}.weight"
    g = noise[f"gumbel/{zkey}"][task]
    g = g[step] if hp["mask_resample"] == "per_step" else g[0]
    if hp["mask_forward"] == "soft":  # eq. 3.9's value, differentiated as it is
        m = 1.0 / (1.0 + torch.exp(-(meta[zkey] + g) / hp["mask_temperature"]))
    else:
        m = _StraightThrough.apply(meta[zkey], g, hp["mask_temperature"])
    if not learner.full:
        # one entry per output row j; the weight row j and the bias entry j share it
        target = meta[key]
        if kind == "weight":
            m = torch.stack([m[j] * torch.ones_like(target[j]) for j in range(target.shape[0])])
    return m


@reference("tnet", "mnet", "mtnet", "mnet_full", "mtnet_full")
def mtnet_reference(learner, meta: dict, batch, noise: dict, steps: int) -> Tensor:
    hp = learner.hparams
    keys = [k for c in learner.backbone.cells for k in c.keys]
    masked = learner.name != "tnet"
    out_keys = set(learner.backbone.cells[-1].keys) if masked and not hp["mask_output"] else set()
    assert ("tnet" in learner.name or "mtnet" in learner.name) == all(
        f"{c.name}.T" in meta for c in learner.backbone.cells
    )
    total = 0.0
    for i in range(batch.num_tasks):
        fast = dict(meta)  # T and zeta stay the meta values
        for j in range(steps):
            loss = task_loss(learner, learner.backbone.apply(fast, batch.support_x[i]), batch.support_y[i])
            grads = inner_grad(loss, [fast[k] for k in keys], hp["first_order"])
            new = {}
            for k, g in zip(keys, grads):
                if masked and k not in out_keys:
                    g = _mask_for(learner, meta, noise, i, j, k) * g
                new[k] = fast[k] - hp["inner_lr"] * g
            fast.update(new)
        total = total + task_loss(learner, learner.backbone.apply(fast, batch.query_x[i]), batch.query_y[i])
    return total / batch.num_tasks
