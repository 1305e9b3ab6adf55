"""Per-task references (see reference.py) for Wormhole MAML, PAMELA and CxGrad, and their
contract settings. Each is a plain loop over tasks with ``torch.autograd.grad(create_graph=not
first_order)``, written from algorithms.md §4-6 and sharing nothing with the vmapped learners
but the backbone's forward (and the hyperparameter values)."""

from __future__ import annotations

import math

import torch
from contract_settings import SETTINGS
from reference import reference
from torch import Tensor
from torch.nn import functional as F

from metatune.learners import Learner
from metatune.tasks import TaskBatch
from metatune.testing import task_loss

DIGITS_TINY = {"name": "digits", "ways": 2, "shots": 1, "query": 2}
CONV_TINY = {"name": "conv4", "channels": 4, "blocks": 2}

SETTINGS["wormhole"] = {
    "task": {"name": "sine", "protocol": "metasgd", "shots": 5, "query": 6},
    "model": {"name": "mlp", "hidden": [8, 8]},
    "hparams": {"inner_lr": 0.05, "wormhole_c_form": "tanh", "wormhole_c_steps": 2, "wormhole_c_lr": 0.3},
}
SETTINGS["pamela"] = {
    "task": DIGITS_TINY,
    # No batch norm, so the conv biases (which share their filter's Q) get a real gradient.
    "model": {"name": "digits_conv", "channels": [2, 3], "hidden": 6},
    "hparams": {"inner_lr": 0.1, "skip_width": 2},
}
SETTINGS["cxgrad"] = {
    "task": DIGITS_TINY,
    "model": {**CONV_TINY, "conv_bias": False},
    "hparams": {"inner_lr": 0.1, "context_dim": 6, "context_hidden": 5, "context_lr": 1.0},
}


def _loss(learner: Learner, params: dict, x: Tensor, y: Tensor) -> Tensor:
    return task_loss(learner, learner.backbone.apply(params, x), y)


# ----------------------------------------------------------------------------- Wormhole
@reference("wormhole")
def wormhole_reference(learner: Learner, meta: dict, batch: TaskBatch, noise: dict, steps: int) -> Tensor:
    hp = learner.hparams
    fo = hp["first_order"]
    c_fo = fo or hp["wormhole_c_first_order"]
    form = hp["wormhole_c_form"]
    cells = learner.backbone.cells
    if hp["wormhole_layers"] == "last":
        cells = [c for c in cells if c.kind == "linear"][-1:]
    keys = list(learner.backbone.adapted_keys())
    dtype = meta[keys[0]].dtype
    total = 0.0
    for i in range(batch.num_tasks):
        sx, sy = batch.support_x[i], batch.support_y[i]
        # raw C: one tensor per selected cell key (shared tensors for scalar/tanh/diag_layer).
        if form == "tanh":
            raw = [torch.tensor(math.atanh(hp["wormhole_c_init"]), dtype=dtype, requires_grad=True)]
        elif form == "scalar":
            raw = [torch.tensor(hp["wormhole_c_init"], dtype=dtype, requires_grad=True)]
        elif form == "diag_layer":
            raw = [torch.tensor(hp["wormhole_c_init"], dtype=dtype, requires_grad=True) for _ in cells]
        else:
            raw = [torch.full(meta[k].shape, hp["wormhole_c_init"], dtype=dtype, requires_grad=True)
                   for c in cells for k in c.keys]

        def multiplied(raw: list[Tensor]) -> dict:
            # Fresh nodes for the cells C leaves alone: the w-step gradient is the partial
            # derivative at phi, while the meta leaves also reach the loss through C.
            out = {k: (v.clone() if k in keys else v) for k, v in meta.items()}
            j = 0
            for ci, c in enumerate(cells):
                for k in c.keys:
                    if form in ("scalar", "tanh"):
                        r = raw[0]
                    elif form == "diag_layer":
                        r = raw[ci]
                    else:
                        r = raw[j]
                    cval = torch.tanh(r) if form == "tanh" else r
                    out[k] = cval * meta[k]
                    j += 1
            return out

        for _ in range(hp["wormhole_c_steps"]):
            loss = _loss(learner, multiplied(raw), sx, sy)
            grads = torch.autograd.grad(loss, raw, create_graph=not c_fo)
            raw = [r - hp["wormhole_c_lr"] * g for r, g in zip(raw, grads)]
        fast = multiplied(raw)
        for _ in range(steps):
            loss = _loss(learner, fast, sx, sy)
            grads = torch.autograd.grad(loss, [fast[k] for k in keys], create_graph=not fo)
            fast = {**fast, **{k: fast[k] - hp["inner_lr"] * g for k, g in zip(keys, grads)}}
        total = total + _loss(learner, fast, batch.query_x[i], batch.query_y[i])
    return total / batch.num_tasks


# ----------------------------------------------------------------------------- PAMELA
@reference("pamela")
def pamela_reference(learner: Learner, meta: dict, batch: TaskBatch, noise: dict, steps: int) -> Tensor:
    hp = learner.hparams
    fo = hp["first_order"]
    w = hp["skip_width"]
    cells = learner.backbone.cells
    keys = list(learner.backbone.adapted_keys())

    def q(j: int, cell, key: str) -> Tensor:
        if cell.kind == "conv":  # one value per output filter, weight and bias alike
            v = meta[f"pamela/q{j}/{cell.name}"]
            return v.view(-1, 1, 1, 1) if key.endswith("weight") else v
        return meta[f"pamela/q{j}/{key}"]

    total = 0.0
    for i in range(batch.num_tasks):
        sx, sy = batch.support_x[i], batch.support_y[i]
        history = [dict(meta)]  # theta_0, theta_1, ...
        for t in range(1, steps + 1):
            prev = history[t - 1]
            loss = _loss(learner, prev, sx, sy)
            grads = dict(zip(keys, torch.autograd.grad(loss, [prev[k] for k in keys], create_graph=not fo)))
            new = dict(prev)
            for c in cells:
                for k in c.keys:
                    new[k] = prev[k] - q(t - 1, c, k) * grads[k]
            if t % w == 0:
                old = history[t - w]
                for c in cells:
                    p = meta[f"pamela/p{t - w}/{c.name}"]
                    for k in c.keys:
                        new[k] = (1 - p) * new[k] + p * old[k]
            history.append(new)
        total = total + _loss(learner, history[-1], batch.query_x[i], batch.query_y[i])
    return total / batch.num_tasks


# ----------------------------------------------------------------------------- CxGrad
@reference("cxgrad")
def cxgrad_reference(learner: Learner, meta: dict, batch: TaskBatch, noise: dict, steps: int) -> Tensor:
    hp = learner.hparams
    fo = hp["first_order"]
    keys = list(learner.backbone.adapted_keys())
    conv = [f"{c.name}.weight" for c in learner.backbone.cells if c.kind == "conv"]
    dtype = meta[keys[0]].dtype

    def g_phi(nu: Tensor) -> Tensor:
        h = F.relu(nu @ meta["cxgrad/g0.weight"].T + meta["cxgrad/g0.bias"])
        return F.softplus(h @ meta["cxgrad/g1.weight"].T + meta["cxgrad/g1.bias"])

    def scale(fast: dict, nu: Tensor) -> dict:
        gamma = g_phi(nu)
        # Fresh nodes for the unscaled keys too, so that the gradient w.r.t. them is the partial
        # derivative of the support loss at fixed nu: the meta head leaf itself also reaches the
        # loss through nu when the first context step is differentiated.
        out = {k: (v.clone() if k in keys else v) for k, v in fast.items()}
        for layer, k in enumerate(conv):
            out[k] = gamma[layer] * fast[k] / torch.sqrt((fast[k] ** 2).sum())
        return out

    def first_step(fast: dict, sx: Tensor, sy: Tensor) -> Tensor:
        nu0 = torch.zeros(hp["context_dim"], dtype=dtype, requires_grad=True)
        loss = _loss(learner, scale(fast, nu0), sx, sy)
        (g,) = torch.autograd.grad(
            loss, [nu0], create_graph=not (fo or hp["cxgrad_detach_first_context_step"]), retain_graph=True)
        return nu0 - hp["context_lr"] * g

    total = 0.0
    for i in range(batch.num_tasks):
        sx, sy = batch.support_x[i], batch.support_y[i]
        fast = dict(meta)
        nu = first_step(fast, sx, sy) if hp["context_update"] == "task" else None
        for _ in range(steps):
            if hp["context_update"] == "step":
                nu = first_step(fast, sx, sy)
            scaled = scale(fast, nu)
            loss = _loss(learner, scaled, sx, sy)
            # retain_graph: the path to nu runs through IGS, whose graph the query loss needs again.
            grads = torch.autograd.grad(loss, [scaled[k] for k in keys] + [nu], create_graph=not fo, retain_graph=True)
            nu = nu - hp["context_lr"] * grads[-1]
            fast = {**scaled, **{k: scaled[k] - hp["inner_lr"] * g for k, g in zip(keys, grads[:-1])}}
        total = total + _loss(learner, fast, batch.query_x[i], batch.query_y[i])
    return total / batch.num_tasks
