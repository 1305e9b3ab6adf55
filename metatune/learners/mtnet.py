"""T-net, M-net, MT-net and their "-full" variants (Lee & Choi 2018; Lee's MSc thesis;
algorithms.md §3).

Every cell computes y = T (W x + b) (``<cell>.T``, ``out x out``, identity at init, applied by
:func:`metatune.models.base.apply_cell`; a 1x1 convolution for conv cells). The inner loop is

    W~ = W - alpha * (M ⊙ grad_W L_support(W, T)),    b~ = b - alpha * (m_b ⊙ grad_b L_support)

with T and the mask logits zeta meta-learned only (never adapted). Variants:

============  =====  ======================================================================
learner       T      mask M
============  =====  ======================================================================
tnet          yes    none (M = 1)
mnet          no     one logit per output unit (row of W; the unit's bias shares it)
mtnet         yes    as mnet
mnet_full     no     one logit per individual weight and per bias (code flag share_M=False)
mtnet_full    yes    as mnet_full
============  =====  ======================================================================

Masks (straight-through Gumbel, paper eqs. 3.8-3.9 and the authors' code). With two-class
logits (zeta, 0) and g1, g2 ~ Gumbel(0, 1), the *forward* value is the hard one-hot argmax,

    M = 1[zeta + g1 - g2 > 0]  ~  Bernoulli(sigmoid(zeta)),

and the *backward* pass uses the gradient of the soft value s = sigmoid((zeta + g1 - g2) / c),
c = ``mask_temperature`` (implemented as ``M = hard + (s - stop_grad(s))``, so the forward
value is exactly 0 or 1). The temperature therefore changes the zeta gradient only, never the
forward pass. ``mask_forward: soft`` is the other reading, eq. 3.9 as written: M = s in value
and gradient (threshold masks at evaluation stay hard). ``mask_output: false`` (an ablation)
leaves the output cell unmasked: it has no logits and is adapted with alpha alone. ``sample_noise`` draws the logistic difference g1 - g2 ~ Logistic(0, 1) (same
law as the difference of two Gumbels) outside vmap, one row per task, under the keys
``gumbel/<zeta key>``, shaped ``[tasks, S, *zeta.shape]`` with S = ``steps`` when masks are
re-sampled every inner step (``mask_resample: per_step``, the code's behaviour for -full) and
S = 1 when one mask serves every step of a task (``per_task``, the code's behaviour for the
shared variants).

Parameters: ``zeta/<cell>.weight`` is ``[out]`` for shared masks (bias uses the same entry) and
shaped like the weight for -full, which also has ``zeta/<cell>.bias`` ``[out]``. Init: shared
logits = ``logit_init`` (0); -full logits = ``logit_init`` + truncated normal with std
``logit_init_std_fc`` = 0.1 for linear cells and ``logit_init_std_conv`` = 0.01 for conv cells
(the code's init; set both to 0 for the thesis's "0").

Train vs evaluation masks (``mask_eval``): during meta-training masks are always sampled. At
evaluation, ``sample`` (default, faithful: fresh Gumbel noise, hard 0/1 as the code does at
meta-test), ``threshold`` (M = 1[sigmoid(zeta) > 0.5], implemented as zero noise) or
``expected`` (M = sigmoid(zeta), a soft mask; the noise dict then carries only a per-task
``mask_expected`` marker). The evaluation protocol (``metatune.evaluate``) calls
``sample_noise(..., training=False)``; the trainer calls it with ``training=True``.

Sign convention of the logged mask statistics (algorithms.md §3.6). P(M = 1, the unit/weight is
updated) = sigmoid(+zeta). ``task_stats`` logs

- ``mask_update_fraction``: mean of the masks actually used (all entries, all steps; units for
  shared masks, weights and biases for -full) -- the fraction really updated;
- ``mask_p_update``: mean sigmoid(zeta) over all logits (expected update fraction);
- ``mask_p_frozen_thesis``: the number the thesis (§6.3, "fraction of weights changed") and the
  code ("change probs") report: the mean over logit tensors of the mean of sigmoid(-zeta) --
  by the sampler's convention the probability of being *frozen*; note it averages per tensor
  (as the code does), so it is not exactly 1 - ``mask_p_update``;
- ``mask_p_update/<cell>``: mean sigmoid(zeta) per cell.

Comparisons with the thesis's Fig. 6.1 should say which of these is plotted.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor

from metatune.errors import ConfigError
from metatune.learners.base import HParams, Learner, Noise
from metatune.learners.hparams import LearnerConfig, setting
from metatune.learners.state import AdaptState
from metatune.models.base import Cell, Params, truncated_normal

__all__ = [
    "EXPECTED", "GUMBEL", "THRESHOLD", "ZETA", "FullMaskConfig", "MNet", "MNetFull", "MTNet", "MTNetFull", "MaskConfig",
    "MaskedLearner", "TNet",
]

ZETA = "zeta/"
GUMBEL = "gumbel/"
EXPECTED = "mask_expected"
#: Marker of threshold masks at evaluation under ``mask_forward: soft`` (zero noise alone would
#: give the soft value sigmoid(zeta / c) there, not the threshold).
THRESHOLD = "mask_threshold"


Resample = Literal["per_task", "per_step"]
_RESAMPLE_HELP = (
    "draw a task's masks once for all inner steps, or afresh at every step "
    "(the code: once per task for shared masks, every step for -full)"
)
_STD_FC_HELP = "std of the truncated-normal logit init for linear cells (code: 0.1 for -full, 0 shared)"
_STD_CONV_HELP = "std of the truncated-normal logit init for conv cells (code: 0.01 for -full, 0 shared)"


class MaskConfig(LearnerConfig):
    """The settings of the learners with masks (M-net, MT-net; the -full ones differ in defaults)."""

    mask_temperature: float = setting(
        1.0, symbol="c", gt=0.0, log=True, search=(0.1, 10.0), source="code",
        help="Gumbel-softmax temperature; changes only the straight-through gradient of zeta",
    )
    mask_eval: Literal["sample", "threshold", "expected"] = setting(
        "sample", source="code", help="masks at evaluation: sampled (faithful), 1[sigmoid(zeta) > 0.5], or soft sigmoid(zeta)",
    )
    mask_resample: Resample = setting("per_task", source="code", help=_RESAMPLE_HELP)
    logit_init: float = setting(
        0.0, symbol="zeta_0", search=(-3.0, 3.0), source="paper", help="initial mask logit (mean of the init for -full)",
    )
    mask_forward: Literal["hard", "soft"] = setting(
        "hard", source="code",
        help="mask value in the inner step: hard 0/1 with the soft gradient (straight-through, the code), or "
             "the soft Gumbel-softmax value itself (thesis eq. 3.9) [paper]",
    )
    mask_output: bool = setting(
        True, source="code", help="whether the output cell is masked too (false: always adapted; an ablation)",
    )
    logit_init_std_fc: float = setting(0.0, ge=0.0, source="code", help=_STD_FC_HELP)
    logit_init_std_conv: float = setting(0.0, ge=0.0, source="code", help=_STD_CONV_HELP)


class FullMaskConfig(MaskConfig):
    """M-net-full and MT-net-full: masks re-drawn every step, logits initialised with noise."""

    mask_resample: Resample = setting("per_step", source="code", help=_RESAMPLE_HELP)
    logit_init_std_fc: float = setting(0.1, ge=0.0, source="code", help=_STD_FC_HELP)
    logit_init_std_conv: float = setting(0.01, ge=0.0, source="code", help=_STD_CONV_HELP)


class MaskedLearner(Learner[AdaptState]):
    """The MT-net family; subclasses set ``use_T`` (transformation), ``use_M`` (masks) and
    ``full`` (one logit per weight instead of per output unit)."""

    use_T: ClassVar[bool] = False
    use_M: ClassVar[bool] = False
    full: ClassVar[bool] = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        #: adapted key -> (zeta key, whether the zeta is one entry per output row)
        self._mask_of: dict[str, tuple[str, bool]] = {}
        self._cells: dict[str, Cell] = {}
        cells = self.backbone.cells
        if self.use_M and not self.mask_config.mask_output:
            cells = cells[:-1]  # the output cell: M = 1 and no logits
            if not cells:
                raise ConfigError(
                    "learner.mask_output", f"false leaves '{self.backbone.name}' (one cell) without a masked cell",
                )
        for cell in cells:
            for key in cell.keys:
                if self.full:
                    self._mask_of[key] = (ZETA + key, False)
                else:
                    self._mask_of[key] = (f"{ZETA}{cell.name}.weight", True)
                self._cells[self._mask_of[key][0]] = cell
        zetas = dict.fromkeys(z for z, _ in self._mask_of.values())
        self._zeta_keys: tuple[str, ...] = tuple(zetas) if self.use_M else ()

    @property
    def mask_config(self) -> MaskConfig:
        """The mask settings (a learner with masks only: T-net has none)."""
        assert isinstance(self.config, MaskConfig), f"{type(self).__name__} has no masks"
        return self.config

    # ----------------------------------------------------------------- meta-parameters
    def init_meta_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        params = super().init_meta_params(generator=generator, dtype=dtype)
        if self.use_T:
            for cell in self.backbone.cells:
                params[f"{cell.name}.T"] = torch.eye(cell.out_features, dtype=dtype)
        for zk in self._zeta_keys:
            cell = self._cells[zk]
            shape = params[zk[len(ZETA):]].shape if self.full else (cell.out_features,)
            masks = self.mask_config
            std = masks.logit_init_std_conv if cell.kind == "conv" else masks.logit_init_std_fc
            zeta = torch.full(shape, masks.logit_init, dtype=dtype)
            if std > 0:
                zeta = zeta + truncated_normal(tuple(shape), std, generator=generator, dtype=dtype)
            params[zk] = zeta
        return params

    @property
    def draws_training_noise(self) -> bool:
        return self.use_M  # training always samples masks (``mask_eval`` is for evaluation)

    def sample_noise(
        self, num_tasks: int, *, generator: torch.Generator, meta_params: Params, steps: int,
        training: bool = True,
    ) -> Noise:
        """Logistic noise g1 - g2 for every mask logit, ``[tasks, S, *zeta.shape]``.

        ``training`` selects sampled masks; otherwise ``mask_eval`` decides (see the module
        docstring)."""
        if not self.use_M:
            return {}
        mode = "sample" if training else self.mask_config.mask_eval
        dtype = meta_params[self._zeta_keys[0]].dtype
        if mode == "expected":
            return {EXPECTED: torch.zeros(num_tasks, dtype=dtype)}
        # A draw per step when masks are re-drawn every step (threshold noise too, all zeros:
        # check_noise can then tell noise drawn for too few steps from any other).
        draws = max(int(steps), 1) if self._per_step_noise() else 1
        noise: Noise = {}
        for zk in self._zeta_keys:
            shape = (num_tasks, draws, *meta_params[zk].shape)
            if mode == "threshold":
                noise[GUMBEL + zk] = torch.zeros(shape, dtype=dtype)
                if self.mask_config.mask_forward == "soft":
                    noise[THRESHOLD] = torch.zeros(num_tasks, dtype=dtype)
            else:
                u = torch.rand(shape, generator=generator, dtype=dtype).clamp_(min=torch.finfo(dtype).tiny)
                noise[GUMBEL + zk] = torch.log(u) - torch.log1p(-u)
        return noise

    def check_noise(self, noise: Noise, *, steps: int) -> None:
        """Masks re-drawn every step need a draw per step: fewer would silently reuse the first
        (the draw index is clamped under vmap), so that is an error."""
        if not self._per_step_noise():
            return
        for key, draws in noise.items():
            if key.startswith(GUMBEL) and draws.shape[1] < steps:
                break
        else:
            return
        raise ValueError(
            f"{self.name}: mask noise drawn for {draws.shape[1]} inner step(s) but {steps} are run "
            f"(masks re-drawn every step); draw it with sample_noise(..., steps={steps})"
        )

    def _per_step_noise(self) -> bool:
        return self.use_M and self.mask_config.mask_resample == "per_step"

    # ----------------------------------------------------------------- masks (per task)
    def zeta_masks(self, meta: Params, noise: Noise, step: int, *, hp: HParams | None = None) -> dict[str, Tensor]:
        """The mask of every logit tensor at inner step ``step`` (one task's noise)."""
        temperature = self.mask_config.mask_temperature if hp is None else hp["mask_temperature"]
        masks: dict[str, Tensor] = {}
        for zk in self._zeta_keys:
            zeta = meta[zk]
            if EXPECTED in noise:
                masks[zk] = torch.sigmoid(zeta)
                continue
            draws = noise[GUMBEL + zk]
            logits = zeta + draws[step if draws.shape[0] > 1 else 0]
            hard = (logits > 0).to(zeta.dtype)
            soft = torch.sigmoid(logits / temperature)
            if self.mask_config.mask_forward == "soft" and THRESHOLD not in noise:
                masks[zk] = soft  # eq. 3.9's value
            else:
                masks[zk] = hard + (soft - soft.detach())  # value: hard; gradient: that of soft
        return masks

    def masks(self, meta: Params, noise: Noise, step: int, *, hp: HParams | None = None) -> dict[str, Tensor]:
        """Masks broadcastable to each adapted tensor (rows for shared masks)."""
        by_zeta = self.zeta_masks(meta, noise, step, hp=hp)
        out: dict[str, Tensor] = {}
        for key, (zk, per_row) in self._mask_of.items():
            m = by_zeta[zk]
            if per_row and key.endswith(".weight"):
                m = m.reshape(m.shape + (1,) * (meta[key].dim() - 1))
            out[key] = m
        return out

    # ----------------------------------------------------------------- per task (under vmap)
    def step_size(self, meta: Params, state: AdaptState, noise: Noise, *, step: int, hp: HParams) -> Params:
        """P = alpha * M (this step's straight-through masks; M = 1 without masks)."""
        if not self.use_M:
            return super().step_size(meta, state, noise, step=step, hp=hp)
        lr = hp["inner_lr"] * hp["lr_scale"]
        masks = self.masks(meta, noise, step, hp=hp)
        return {k: lr * masks[k] if k in masks else lr for k in state.w}  # unmasked: mask_output false

    def task_stats(self, meta: Params, state: AdaptState, noise: Noise) -> dict[str, Tensor]:
        if not self.use_M:
            return {}
        used: Tensor | float = 0.0
        p_update: Tensor | float = 0.0
        count, frozen = 0, []
        per_cell: dict[str, list[Tensor]] = {}
        for zk in self._zeta_keys:
            zeta = meta[zk].detach()
            if EXPECTED in noise:
                mask = torch.sigmoid(zeta)
            else:
                mask = (zeta + noise[GUMBEL + zk] > 0).to(zeta.dtype)  # every drawn step
            used = used + mask.mean() * zeta.numel()
            count += zeta.numel()
            p = torch.sigmoid(zeta)
            p_update = p_update + p.sum()
            frozen.append(torch.sigmoid(-zeta).mean())
            per_cell.setdefault(self._cells[zk].name, []).append(p.flatten())
        stats: dict[str, Tensor] = {
            "mask_update_fraction": torch.as_tensor(used / count),
            "mask_p_update": torch.as_tensor(p_update / count),
            "mask_p_frozen_thesis": torch.stack(frozen).mean(),
        }
        for name, ps in per_cell.items():
            stats[f"mask_p_update/{name}"] = torch.cat(ps).mean()
        return stats


class TNet(MaskedLearner):
    """T-net: identity-initialised T per cell, meta-learned; W, b adapted by plain SGD."""

    use_T = True


class MNet(MaskedLearner):
    """M-net: one straight-through Bernoulli mask per output unit, no T."""

    use_M = True
    config_class = MaskConfig


class MTNet(MNet):
    """MT-net: T and per-unit masks."""

    use_T = True


class MNetFull(MaskedLearner):
    """M-net-full: one mask logit per weight and per bias, re-sampled every step, no T."""

    use_M = True
    full = True
    config_class = FullMaskConfig


class MTNetFull(MNetFull):
    """MT-net-full: T and per-weight masks."""

    use_T = True
