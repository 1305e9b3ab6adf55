"""CxGrad, contextual gradient scaling (Lee, Lee, Song, WACV 2022; algorithms.md §6).

Components:

- a context vector nu in R^``context_dim`` (100), reset to 0 for every task (not meta-learned);
- g_phi: Linear(context_dim -> context_hidden) -> ReLU -> Linear(context_hidden -> L) ->
  Softplus, L = number of conv cells, PyTorch's default Linear init; its output is the
  per-layer scale gamma (not a learning rate);
- implicit gradient scaling, IGS: every conv cell weight w <- gamma_l * w / ||w||_F (Frobenius
  norm of the whole tensor) before its batch norm; the head is never scaled, a conv bias (off
  in CxGrad's code) is left as is -- batch norm removes it anyway.

Per task (paper Alg. 1-2): nu = 0; IGS on a copy of theta and one context step
nu <- nu - context_lr * grad_nu L_support; then for each of the ``inner_steps`` steps: IGS on the
*current* fast weights (re-normalised every step), one support loss, and from its single
backward pass nu <- nu - context_lr * grad_nu L and weights <- scaled - alpha * grad_scaled L
(head included). The query loss is taken on the weights after the last step (not re-scaled).

``cxgrad_detach_first_context_step``: the authors' code takes the first context gradient
without a graph (a constant for the meta-gradient), and that is the default (true): the paper's
numbers come from that code. The paper (Alg. 1) does not say so; false differentiates through
that step instead (the g_phi meta-gradient differs by about 88 % between the two). ``first_order``
treats every support gradient (weights and nu) as a constant, as the code does at evaluation.
``context_update``: ``task`` (default; nu carried over all steps) or ``step`` (Table 3
ablation: nu reset to 0 before every step, followed by that step's own first context step
[inferred: without it, step-wise nu would never leave 0]).

By eq. 4 the loss is invariant to gamma except through batch norm's epsilon, so grad_nu is
small (§6.4); :meth:`task_stats` logs the per-layer gamma and ||nu|| after adaptation, and how
far gamma moved from its value at nu = 0 (``gamma_shift``), to make that visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal, TypedDict

import torch
from torch import Tensor
from torch.nn import functional as F

from metatune.errors import ConfigError
from metatune.learners.base import HParams, Learner, Noise
from metatune.learners.hparams import LearnerConfig, setting
from metatune.learners.state import AdaptState, pytree_state
from metatune.models.base import Backbone, Params

__all__ = ["G_KEYS", "CxGrad", "CxGradConfig", "CxGradState"]

#: Meta-parameter keys of g_phi: (first layer weight, bias, second layer weight, bias).
G_KEYS = ("cxgrad/g0.weight", "cxgrad/g0.bias", "cxgrad/g1.weight", "cxgrad/g1.bias")


@pytree_state
@dataclass(frozen=True)
class CxGradState(AdaptState):
    """The fast weights (``w``, after the last step's IGS and update) and the context ``nu``."""

    nu: Tensor


class _ContextAndDelta(TypedDict):
    """What one CxGrad step differentiates: the context and a zero offset of the scaled weights."""

    nu: Tensor
    delta: Params


def _default_linear(out_f: int, in_f: int, generator: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """torch.nn.Linear's default init: kaiming_uniform(a=sqrt(5)) for the weight, i.e.
    U(-1/sqrt(in), 1/sqrt(in)), and the same bound for the bias."""
    bound = 1.0 / math.sqrt(in_f)
    weight = (torch.rand((out_f, in_f), generator=generator, dtype=dtype) * 2 - 1) * bound
    bias = (torch.rand((out_f,), generator=generator, dtype=dtype) * 2 - 1) * bound
    return weight, bias


class CxGradConfig(LearnerConfig):
    context_lr: float = setting(
        1.0, symbol="beta (CxGrad)", ge=0.0, log=True, search=(1e-2, 1.0), source="paper",
        help="step size of the context vector nu (Table 5 grid: 0.01, 0.1, 1)",
    )
    context_dim: int = setting(
        100, symbol="dim(nu)", ge=1, le=4096, search=(32, 128), source="paper", help="dimension of the context vector nu",
    )
    context_hidden: int = setting(
        100, symbol="g_phi hidden", ge=1, le=4096, search=(32, 128), source="paper",
        help="hidden width of the scale generator g_phi",
    )
    context_update: Literal["task", "step"] = setting(
        "task", source="paper", help="nu carried over the inner steps (task-wise) or reset before every step (step-wise, Table 3)",
    )
    cxgrad_detach_first_context_step: bool = setting(
        True, source="code",
        help="take the first context gradient without a graph, as the authors' code does "
        "(false: Alg. 1 as written, not detached [paper])",
    )


class CxGrad(Learner[CxGradState]):
    """MAML whose conv cells are re-normalised to a task-conditioned norm gamma(nu) every step."""

    requires_batchnorm: ClassVar[bool] = True
    config_class = CxGradConfig
    config: CxGradConfig

    def check_backbone(self, backbone: Backbone) -> None:
        if not backbone.has_batchnorm:
            raise ConfigError(
                "model.name",
                f"learner 'cxgrad' needs a backbone with batch norm after every conv layer (e.g. conv4): its "
                f"gradient scaling relies on batch norm's scale invariance, and '{backbone.name}' has no batch norm",
            )
        if not backbone.conv_cells():
            raise ConfigError("model.name", f"learner 'cxgrad' scales conv layers; '{backbone.name}' has none")

    @property
    def conv_keys(self) -> tuple[str, ...]:
        return tuple(f"{c.name}.weight" for c in self.backbone.conv_cells())

    def init_meta_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        params = super().init_meta_params(generator=generator, dtype=dtype)
        d, h, layers = self.config.context_dim, self.config.context_hidden, len(self.conv_keys)
        params[G_KEYS[0]], params[G_KEYS[1]] = _default_linear(h, d, generator, dtype)
        params[G_KEYS[2]], params[G_KEYS[3]] = _default_linear(layers, h, generator, dtype)
        return params

    # ----------------------------------------------------------------- pieces
    def gammas(self, meta: Params, nu: Tensor) -> Tensor:
        """g_phi(nu): one positive scale per conv cell."""
        hidden = torch.relu(F.linear(nu, meta[G_KEYS[0]], meta[G_KEYS[1]]))
        return F.softplus(F.linear(hidden, meta[G_KEYS[2]], meta[G_KEYS[3]]))

    def igs(self, meta: Params, weights: Params, nu: Tensor) -> Params:
        """Implicit gradient scaling: conv weights re-normalised to Frobenius norm gamma_l."""
        gamma = self.gammas(meta, nu)
        out = dict(weights)
        for layer, key in enumerate(self.conv_keys):
            w = weights[key]
            out[key] = gamma[layer] * w / w.norm()
        return out

    def _zero_context(self, like: Tensor) -> Tensor:
        return torch.zeros(self.config.context_dim, dtype=like.dtype, device=like.device)

    def first_context_step(self, meta: Params, weights: Params, x: Tensor, y: Tensor, *, hp: HParams) -> Tensor:
        """nu = 0, then nu <- nu - context_lr * grad_nu L_support(IGS(weights, nu))."""
        nu = self._zero_context(meta[G_KEYS[0]])
        constant = self.config.first_order or self.config.cxgrad_detach_first_context_step
        g = self.support_grad(lambda n: self.loss_at(meta, self.igs(meta, weights, n), x, y), nu, constant=constant)
        return nu - hp["context_lr"] * g

    # ----------------------------------------------------------------- per task
    def init_state(
        self, meta: Params, support_x: Tensor, support_y: Tensor, noise: Noise, *, hp: HParams,
    ) -> CxGradState:
        weights = {k: meta[k] for k in self._adapted}
        if self.config.context_update == "task":
            nu = self.first_context_step(meta, weights, support_x, support_y, hp=hp)
        else:
            nu = self._zero_context(meta[G_KEYS[0]])
        return CxGradState(w=weights, nu=nu)

    def inner_step(
        self, meta: Params, state: CxGradState, support_x: Tensor, support_y: Tensor, noise: Noise,
        *, step: int, hp: HParams,
    ) -> CxGradState:
        """The whole step is CxGrad's own: IGS before the gradient, and one backward pass for
        the weights and the context."""
        weights, nu = state.w, state.nu
        if self.config.context_update == "step":
            nu = self.first_context_step(meta, weights, support_x, support_y, hp=hp)

        # One backward pass for both: d/d(delta) at delta = 0 is the gradient w.r.t. the scaled
        # weights; d/d(nu) is the total derivative through gamma(nu) (as autograd.grad on
        # (scaled weights, nu) in the authors' code).
        def loss(p: _ContextAndDelta) -> Tensor:
            scaled = self.igs(meta, weights, p["nu"])
            return self.loss_at(meta, {k: scaled[k] + p["delta"][k] for k in scaled}, support_x, support_y)

        at_zero: _ContextAndDelta = {"nu": nu, "delta": {k: torch.zeros_like(v) for k, v in weights.items()}}
        g = self.support_grad(loss, at_zero)
        scaled = self.igs(meta, weights, nu)
        lr = hp["inner_lr"] * hp["lr_scale"]
        return CxGradState(
            w={k: scaled[k] - lr * g["delta"][k] for k in scaled},
            nu=nu - hp["context_lr"] * g["nu"],
        )

    def task_stats(self, meta: Params, state: CxGradState, noise: Noise) -> dict[str, Tensor]:
        nu = state.nu
        gamma = self.gammas(meta, nu)
        gamma0 = self.gammas(meta, torch.zeros_like(nu))
        stats = {f"gamma/{key.rsplit('.', 1)[0]}": gamma[i] for i, key in enumerate(self.conv_keys)}
        stats["nu_norm"] = nu.norm()
        stats["gamma_shift"] = (gamma - gamma0).abs().max()
        return stats
