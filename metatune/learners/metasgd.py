"""Meta-SGD (algorithms.md §2): one learning rate per weight and bias, meta-learned."""

from __future__ import annotations

from typing import Literal

import torch

from metatune.learners.base import HParams, Learner, Noise
from metatune.learners.hparams import LearnerConfig, setting
from metatune.learners.state import AdaptState
from metatune.models.base import Params

__all__ = ["MetaSGD", "MetaSGDConfig"]

PREFIX = "lr/"


class MetaSGDConfig(LearnerConfig):
    alpha_init: Literal["constant", "uniform"] = setting(
        "constant", source="code", help="every alpha = inner_lr (learn2learn), or alpha ~ U[alpha_init_low, alpha_init_high]",
    )
    alpha_init_low: float = setting(0.005, ge=0.0, source="inferred", help="lower bound of the uniform init")
    alpha_init_high: float = setting(0.1, ge=0.0, source="inferred", help="upper bound of the uniform init")


class MetaSGD(Learner[AdaptState]):
    """theta' = theta - alpha o grad L_support(theta), alpha shaped like theta; the same alpha
    at every step when ``inner_steps`` > 1. ``inner_lr`` is alpha's initial value."""

    config_class = MetaSGDConfig
    config: MetaSGDConfig

    def init_meta_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        params = super().init_meta_params(generator=generator, dtype=dtype)
        for key in self._adapted:
            shape = params[key].shape
            if self.config.alpha_init == "uniform":
                lo, hi = self.config.alpha_init_low, self.config.alpha_init_high
                alpha = torch.rand(shape, generator=generator, dtype=dtype) * (hi - lo) + lo
            else:
                alpha = torch.full(shape, self.config.inner_lr, dtype=dtype)
            params[PREFIX + key] = alpha
        return params

    def step_size(self, meta: Params, state: AdaptState, noise: Noise, *, step: int, hp: HParams) -> Params:
        """P = alpha_k, the meta-learned rate of each weight (times ``lr_scale``)."""
        return {k: hp["lr_scale"] * meta[PREFIX + k] for k in state.w}
