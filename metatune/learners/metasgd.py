"""Meta-SGD (algorithms.md §2): one learning rate per weight and bias, meta-learned."""

from __future__ import annotations

from typing import ClassVar

import torch

from metatune.learners.base import HParams, Learner, Noise
from metatune.learners.hparams import COMMON, HyperParameter
from metatune.learners.state import AdaptState
from metatune.models.base import Params

__all__ = ["MetaSGD"]

PREFIX = "lr/"


class MetaSGD(Learner[AdaptState]):
    """theta' = theta - alpha o grad L_support(theta), alpha shaped like theta; the same alpha
    at every step when ``inner_steps`` > 1. ``inner_lr`` is alpha's initial value."""

    hyperparameters: ClassVar[tuple[HyperParameter, ...]] = (
        *COMMON,
        HyperParameter(
            "alpha_init", "categorical", "constant", choices=("constant", "uniform"),
            help="every alpha = inner_lr (learn2learn), or alpha ~ U[alpha_init_low, alpha_init_high]",
        ),
        HyperParameter("alpha_init_low", "float", 0.005, low=0.0, help="lower bound of the uniform init"),
        HyperParameter("alpha_init_high", "float", 0.1, low=0.0, help="upper bound of the uniform init"),
    )

    def init_meta_params(self, *, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Params:
        params = super().init_meta_params(generator=generator, dtype=dtype)
        for key in self._adapted:
            shape = params[key].shape
            if self.hparams["alpha_init"] == "uniform":
                lo, hi = float(self.hparams["alpha_init_low"]), float(self.hparams["alpha_init_high"])
                alpha = torch.rand(shape, generator=generator, dtype=dtype) * (hi - lo) + lo
            else:
                alpha = torch.full(shape, float(self.hparams["inner_lr"]), dtype=dtype)
            params[PREFIX + key] = alpha
        return params

    def step_size(self, meta: Params, state: AdaptState, noise: Noise, *, step: int, hp: HParams) -> Params:
        """P = alpha_k, the meta-learned rate of each weight (times ``lr_scale``)."""
        return {k: hp["lr_scale"] * meta[PREFIX + k] for k in state.w}
