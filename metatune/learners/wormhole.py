"""Wormhole MAML (Chang, Gao, Lou; algorithms.md §4).

Per task: a task-specific multiplier C (not meta-learned, re-initialised for every task) is
first fitted by ``wormhole_c_steps`` gradient steps on the support loss of C o theta (step size
``wormhole_c_lr``, the paper's gamma), then phi = C o theta is adapted by ``inner_steps``
ordinary MAML steps (``inner_lr``, alpha). Only theta is meta-learned.

C parameterisations (``wormhole_c_form``, paper eqs. 3-6):

- ``scalar``      C = c, one number for every selected parameter;
- ``tanh``        C = tanh(t), one number; the steps act on t (Wormhole 1 in Table 1);
- ``diag_layer``  one c per selected cell (its weight and bias share it);
- ``diag_weight`` one c per selected parameter element (Wormhole d in Table 1).

``wormhole_layers``: ``all`` cells, or ``last`` = only the last linear cell (the MNIST
experiment). C multiplies a cell's weight *and* bias (the Avg-Threshold analysis writes
y = sigma(c W^T x) with the bias folded into W) [inferred].

Readings [paper]: one C-step (Alg. 1 line 7 updates C once; the Wavelet set-up says "5 inner
loops for C_i", so its configs set ``wormhole_c_steps: 5``); C_0 "typically around 1"
(``wormhole_c_init``, 1.0). Choices where the paper is silent [inferred, algorithms.md
§4.1-4.2]: C-steps run before the w-steps (so they happen in :meth:`init_state`, and "0 steps"
in an evaluation curve means "after the C-steps"); gradient *descent* with alpha (Alg. 1 line 8
has a sign typo); the meta-gradient flows through the C-steps (second order) unless
``wormhole_c_first_order``; the tanh form's initial value, C_0 = tanh(t_0) < 1, given either
as C_0 (``wormhole_c_init``) or as t_0 (``wormhole_t_init``), 0.9 (t_0 ~ 1.47) when neither is
given. ``lr_scale`` (evaluation robustness curve) multiplies alpha only, not the C step size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from metatune.errors import ConfigError
from metatune.learners.base import HParams, Learner, Noise
from metatune.learners.hparams import LearnerConfig, setting
from metatune.learners.state import AdaptState, pytree_state
from metatune.models.base import Backbone, Cell, Params
from metatune.tasks.base import TaskDistribution

__all__ = ["C_FORMS", "Wormhole", "WormholeConfig", "WormholeState"]

CForm = Literal["scalar", "tanh", "diag_layer", "diag_weight"]
C_FORMS: tuple[str, ...] = get_args(CForm)


_TANH_C0 = 0.9  # C_0 of the tanh form when a section gives neither C_0 nor t_0 [inferred]


class WormholeConfig(LearnerConfig):
    wormhole_c_form: CForm = setting(
        "tanh", symbol="C_i", source="paper",
        help="parameterisation of the task multiplier: c, tanh(t), one per cell, one per parameter element",
    )
    wormhole_layers: Literal["all", "last"] = setting(
        "all", source="paper", help="cells C multiplies: every cell, or only the last linear cell (MNIST experiment)",
    )
    wormhole_c_steps: int = setting(
        1, symbol="S_C", ge=0, le=1000, search=(1, 10), source="paper",
        help="gradient steps on C before the w-steps (Alg. 1: one; the Wavelet set-up: 5)",
    )
    wormhole_c_lr: float = setting(
        1.0, symbol="gamma", gt=0.0, log=True, search=(1e-2, 10.0), source="paper",
        help="step size of the C-steps (the Wavelet set-up: 1)",
    )
    wormhole_c_init: float = setting(
        1.0, symbol="C_0", search=(0.5, 0.99), source="paper",  # a range valid for the tanh form too
        help="initial C of every form ('typically around 1'); tanh form: |C_0| < 1, t_0 = atanh(C_0), "
             f"and C_0 = tanh(wormhole_t_init) = {_TANH_C0:g} when the section gives neither",
    )
    wormhole_t_init: float = setting(
        math.atanh(_TANH_C0), symbol="t_0", search=(0.5, 2.0), source="inferred",
        help="initial t of the tanh form, C_0 = tanh(t_0) (t_0 = 1: C_0 = 0.7616); give it or wormhole_c_init",
    )
    wormhole_c_first_order: bool = setting(
        False, source="inferred",
        help="treat the C-step gradients as constants (no meta-gradient through the C-steps)",
    )

    def resolved(self, *, prefix: str = "") -> WormholeConfig:
        """The tanh form's C_0 and t_0 made consistent (C_0 = tanh(t_0)) from whichever the
        section gives, so that either is one setting in a study and ``values()`` parses back."""
        if self.wormhole_c_form != "tanh":
            return self  # t_0 is the tanh form's only
        given = self.model_fields_set
        c, t = self.wormhole_c_init, self.wormhole_t_init
        if "wormhole_c_init" in given and "wormhole_t_init" in given:
            if not math.isclose(math.tanh(t), c, rel_tol=1e-9, abs_tol=1e-12):
                raise ConfigError(
                    f"{prefix}wormhole_t_init",
                    f"tanh({t:g}) = {math.tanh(t):.6g} differs from wormhole_c_init {c:g}; give one of the two",
                )
            return self
        if "wormhole_c_init" in given:
            if not -1.0 < c < 1.0:
                raise ConfigError(f"{prefix}wormhole_c_init", f"the tanh form needs -1 < C_0 < 1, got {c!r}")
            return self.model_copy(update={"wormhole_t_init": math.atanh(c)})
        return self.model_copy(update={"wormhole_c_init": math.tanh(t)})


@pytree_state
@dataclass(frozen=True)
class WormholeState(AdaptState):
    """phi = C o theta being adapted (``w``) and the fitted raw task parameters (c, or t for
    tanh), kept for the statistics."""

    c: dict[str, Tensor]


class Wormhole(Learner[WormholeState]):
    """phi_i = C_i o theta, C_i fitted on the support set first, then MAML steps on phi_i."""

    config_class = WormholeConfig
    config: WormholeConfig

    def __init__(self, *, backbone: Backbone, task: TaskDistribution, **kwargs: object) -> None:
        super().__init__(backbone=backbone, task=task, **kwargs)  # type: ignore[arg-type]
        cells = backbone.cells
        if self.config.wormhole_layers == "last":
            linear = [c for c in cells if c.kind == "linear"]
            if not linear:
                raise ConfigError("learner.wormhole_layers", f"'last' needs a linear cell; '{backbone.name}' has none")
            cells = (linear[-1],)
        self.c_cells: tuple[Cell, ...] = tuple(cells)
        self.c_keys: tuple[str, ...] = tuple(k for c in self.c_cells for k in c.keys)
        self._cell_of = {k: i for i, c in enumerate(self.c_cells) for k in c.keys}

    # ----------------------------------------------------------------- C
    def c_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the raw task parameters (c, or t for tanh), keyed as in the state."""
        form = self.config.wormhole_c_form
        if form in ("scalar", "tanh"):
            return {"c": (1,)}
        if form == "diag_layer":
            return {"c": (len(self.c_cells),)}
        shapes = {}
        for cell in self.c_cells:
            shapes[f"{cell.name}.weight"] = cell.weight_shape
            if cell.bias:
                shapes[f"{cell.name}.bias"] = (cell.out_features,)
        return shapes

    def init_c(
        self, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
        hp: HParams | None = None,
    ) -> dict[str, Tensor]:
        """The raw task parameters at their initial value (t_0 for tanh, c_0 otherwise); from
        ``hp`` when given (inside the compiled step), else from the settings."""
        hp = self.runtime_hparams(dtype=dtype, device=device) if hp is None else hp
        if self.config.wormhole_c_form == "tanh":
            value = hp["wormhole_t_init"]  # t_0 itself: no atanh in the graph
        else:
            value = hp["wormhole_c_init"]
        return {k: value * torch.ones(s, dtype=dtype, device=device) for k, s in self.c_shapes().items()}

    def c_values(self, raw: dict[str, Tensor]) -> dict[str, Tensor]:
        """C itself from the raw task parameters (tanh applied for the tanh form)."""
        if self.config.wormhole_c_form == "tanh":
            return {k: torch.tanh(v) for k, v in raw.items()}
        return raw

    def apply_c(self, theta: Params, raw: dict[str, Tensor]) -> Params:
        """C o theta: the selected cells' weights and biases multiplied by C; others unchanged."""
        form = self.config.wormhole_c_form
        c = self.c_values(raw)
        out = dict(theta)
        for key in self.c_keys:
            if form in ("scalar", "tanh"):
                mult = c["c"]
            elif form == "diag_layer":
                mult = c["c"][self._cell_of[key]]
            else:
                mult = c[key]
            out[key] = mult * theta[key]
        return out

    # ----------------------------------------------------------------- per task
    def init_state(
        self, meta: Params, support_x: Tensor, support_y: Tensor, noise: Noise, *, hp: HParams,
    ) -> WormholeState:
        """The C-steps; the w-steps are then the base class's (P = alpha)."""
        theta = {k: meta[k] for k in self._adapted}
        ref = theta[self._adapted[0]]
        raw = self.init_c(dtype=ref.dtype, device=ref.device, hp=hp)
        lr = hp["wormhole_c_lr"]
        constant = self.config.first_order or self.config.wormhole_c_first_order
        for _ in range(self.config.wormhole_c_steps):
            g = self.support_grad(
                lambda r: self.loss_at(meta, self.apply_c(theta, r), support_x, support_y), raw, constant=constant,
            )
            raw = {k: raw[k] - lr * g[k] for k in raw}
        return WormholeState(w=self.apply_c(theta, raw), c=raw)

    def task_stats(self, meta: Params, state: WormholeState, noise: Noise) -> dict[str, Tensor]:
        c = torch.cat([v.reshape(-1) for v in self.c_values(state.c).values()])
        return {"c_mean": c.mean(), "c_abs_mean": c.abs().mean()}
