"""PAMELA (Rajasegaran et al., "Meta-learning the learning trends shared across tasks";
algorithms.md §5).

Meta-parameters besides theta: one preconditioner Q_j per inner step j = 0..n-1, and skip
coefficients P_s, one scalar per cell, at the indices s = t - w of the skip connections.

Q granularity [inferred from PAMELA Table 1, §5.1]: one value per conv *output filter* (the
conv bias shares its filter's value), one per FC weight element and one per FC bias element.
Q_j starts at ``inner_lr``; P starts at ``skip_init`` (0: PAMELA starts as multi-step Meta-SGD
with a per-step rate). P is not constrained to [0, 1] (the paper does not say so).

Inner rule, 1-indexed reading of eq. 5 (§5.2), for t = 1..n::

    theta~_t = theta_{t-1} - Q_{t-1} o grad L_support(theta_{t-1})
    theta_t  = (1 - P_{t-w}) o theta~_t + P_{t-w} o theta_{t-w}     if t mod w == 0
    theta_t  = theta~_t                                              otherwise

so with n = 5, w = 2 the skips are after updates 2 (mixing theta_0, P_0) and 4 (theta_2, P_2):
:func:`skip_indices`. The meta-gradient flows through the skips (second order unless
``first_order``; Q and P get meta-gradients either way).

More steps than trained (e.g. an evaluation with ``inner_steps`` > n): Q exists only for
j < n. ``pamela_extra_steps: reuse_last`` (default) reuses Q_{n-1} for every later step and
adds no skip whose P was never trained (t - w > the last trained index); ``error`` raises a
ValueError instead, before any task is adapted (:meth:`PAMELA.check_steps`, outside vmap).
``lr_scale`` (robustness curve) multiplies Q.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from metatune.learners.base import HParams, Learner, Noise
from metatune.learners.hparams import LearnerConfig, setting
from metatune.learners.state import AdaptState, pytree_state
from metatune.models.base import Cell, Params

__all__ = ["PAMELA", "PamelaConfig", "PamelaState", "skip_indices"]

log = logging.getLogger(__name__)


@pytree_state
@dataclass(frozen=True)
class PamelaState(AdaptState):
    """theta_t being adapted (``w``) and the ``anchor`` theta_{t-w} of the next skip: theta at
    the last multiple of w."""

    anchor: Params


@functools.cache
def _warn_extra_steps(trained: int, steps: int) -> None:
    """Once per process and step counts (a cache, so that no learner keeps a flag)."""
    log.warning("PAMELA: %d-step loop trained, running %d steps; reusing Q_%d", trained, steps, trained - 1)


def skip_indices(n: int, w: int) -> list[tuple[int, int]]:
    """The skip connections of an n-step inner loop with skip width w, as (t, t - w): after
    update t (1-indexed) theta_t mixes in theta_{t-w} with coefficient P_{t-w}."""
    if n < 0 or w < 1:
        raise ValueError(f"need n >= 0 and w >= 1, got n={n}, w={w}")
    return [(t, t - w) for t in range(w, n + 1, w)]


def q_key(step: int, cell: Cell, key: str) -> str:
    """Meta-parameter key of Q_step for adapted key ``key`` of ``cell`` (conv bias and weight
    share one key: the per-filter Q)."""
    if cell.kind == "conv":
        return f"pamela/q{step}/{cell.name}"
    return f"pamela/q{step}/{key}"


def p_key(index: int, cell: Cell) -> str:
    return f"pamela/p{index}/{cell.name}"


class PamelaConfig(LearnerConfig):
    skip_width: int = setting(
        2, symbol="w", ge=1, le=100, search=(1, 4), source="paper",
        help="a skip connection every w inner updates, from theta_{t-w} (paper: 2; search [1, n-1])",
    )
    skip_init: float = setting(
        0.0, symbol="P init", search=(0.0, 0.1), source="inferred",
        help="initial value of every skip coefficient P (0 = per-step Meta-SGD at the start)",
    )
    pamela_extra_steps: Literal["reuse_last", "error"] = setting(
        "reuse_last", source="inferred", help="steps beyond the trained n: reuse Q_{n-1} (no untrained skips), or raise",
    )


class PAMELA(Learner[PamelaState]):
    """Per-step preconditioners Q_j and per-cell skip coefficients P, both meta-learned."""

    config_class = PamelaConfig
    config: PamelaConfig

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._cells = self.backbone.cells

    @property
    def num_q(self) -> int:
        return self.config.inner_steps

    def skips(self) -> list[tuple[int, int]]:
        return skip_indices(self.config.inner_steps, self.config.skip_width)

    def init_meta_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        params = super().init_meta_params(generator=generator, dtype=dtype)
        lr = self.config.inner_lr
        for j in range(self.num_q):
            for cell in self._cells:
                if cell.kind == "conv":
                    params[q_key(j, cell, "")] = torch.full((cell.out_features,), lr, dtype=dtype)
                else:
                    for key in cell.keys:
                        params[q_key(j, cell, key)] = torch.full(params[key].shape, lr, dtype=dtype)
        for _, s in self.skips():
            for cell in self._cells:
                params[p_key(s, cell)] = torch.full((), self.config.skip_init, dtype=dtype)
        return params

    def _q(self, meta: Params, j: int, cell: Cell, key: str, param: Tensor) -> Tensor:
        q = meta[q_key(j, cell, key)]
        if cell.kind == "conv":
            q = q.reshape((-1,) + (1,) * (param.dim() - 1))
        return q

    # ----------------------------------------------------------------- per task
    def check_steps(self, *, steps: int) -> None:
        n = self.num_q
        if steps <= n:
            return
        if self.config.pamela_extra_steps == "error":
            raise ValueError(
                f"PAMELA was meta-trained with inner_steps = {n} (Q_0..Q_{n - 1}); step {n + 1} has no "
                "preconditioner. Evaluate with at most that many steps or set pamela_extra_steps: reuse_last")
        if not torch.compiler.is_compiling():  # logging would break the compiled graph
            _warn_extra_steps(n, steps)

    def init_state(
        self, meta: Params, support_x: Tensor, support_y: Tensor, noise: Noise, *, hp: HParams,
    ) -> PamelaState:
        theta = {k: meta[k] for k in self._adapted}
        return PamelaState(w=theta, anchor=theta)

    def step_size(self, meta: Params, state: PamelaState, noise: Noise, *, step: int, hp: HParams) -> Params:
        """P = Q_j (times ``lr_scale``), j = the step, or the last trained one beyond them."""
        j = min(step, self.num_q - 1)
        return {
            key: hp["lr_scale"] * self._q(meta, j, cell, key, state.w[key])
            for cell in self._cells for key in cell.keys
        }

    def inner_step(
        self, meta: Params, state: PamelaState, support_x: Tensor, support_y: Tensor, noise: Noise,
        *, step: int, hp: HParams,
    ) -> PamelaState:
        """The preconditioned step, then after every w-th update the skip from the anchor."""
        new = super().inner_step(meta, state, support_x, support_y, noise, step=step, hp=hp).w
        t, width = step + 1, self.config.skip_width
        if t % width != 0:
            return PamelaState(w=new, anchor=state.anchor)
        if p_key(t - width, self._cells[0]) in meta:  # no skip whose P was never trained
            mixed = {}
            for cell in self._cells:
                p = meta[p_key(t - width, cell)]
                for key in cell.keys:
                    mixed[key] = (1 - p) * new[key] + p * state.anchor[key]
            new = mixed
        return PamelaState(w=new, anchor=new)
