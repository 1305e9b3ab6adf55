"""The outer update (gradient clipping and the Adam or SGD step) as plain in-place tensor code,
so the compiled training step can run it in the same graph as the meta-gradient.

The state stays in the trainer's ``torch.optim`` optimiser (``optimizer.state[p]``), in the
layout its fused kernel keeps, so checkpoints, the trainer's rewind and the uncompiled path
(which calls ``optimizer.step()``) all see one state. The arithmetic is torch's own Adam
(``torch.optim.adam._single_tensor_adam``, bias corrections in float64), so a compiled step
equals the uncompiled one to rounding (tested in float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["OptimizerState", "OuterUpdate"]

#: Per meta-parameter key: Adam's ``exp_avg``, ``exp_avg_sq`` and ``step`` tensors (empty for SGD).
OptimizerState = tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]


@dataclass(frozen=True)
class OuterUpdate:
    """How the meta-parameters move; the fields are structure (they key the compiled graph),
    while the learning rate and the clip bound arrive as tensors."""

    kind: Literal["adam", "sgd"]
    clips: bool
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer, *, clips: bool) -> OuterUpdate | None:
        """The update ``optimizer`` performs, or None where it has settings this code does not
        reproduce (the trainer then keeps calling ``optimizer.step()``)."""
        if len(optimizer.param_groups) != 1:
            return None
        group = optimizer.param_groups[0]
        if group.get("weight_decay", 0) or group.get("maximize") or group.get("differentiable"):
            return None
        if isinstance(optimizer, torch.optim.Adam) and not group.get("amsgrad"):
            beta1, beta2 = group["betas"]
            return cls("adam", clips, float(beta1), float(beta2), float(group["eps"]))
        if type(optimizer) is torch.optim.SGD and not group.get("momentum") and not group.get("nesterov"):
            return cls("sgd", clips)
        return None

    def state(self, optimizer: torch.optim.Optimizer, meta: dict[str, Tensor]) -> OptimizerState:
        """The optimiser's state tensors keyed like ``meta``, created as torch's fused Adam creates
        them on its first step (a float32 ``step`` on the parameter's device, zero moments)."""
        if self.kind == "sgd":
            return {}, {}, {}
        exp_avg, exp_avg_sq, steps = {}, {}, {}
        for key, p in meta.items():
            state = optimizer.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avg[key], exp_avg_sq[key], steps[key] = state["exp_avg"], state["exp_avg_sq"], state["step"]
        return exp_avg, exp_avg_sq, steps

    def apply(
        self, meta: dict[str, Tensor], grads: dict[str, Tensor], state: OptimizerState, lr: Tensor, clip: Tensor,
    ) -> None:
        """Clip (if ``clips``) and step every meta-parameter in place; ``lr`` and ``clip`` are
        0-d float64 tensors."""
        exp_avgs, exp_avg_sqs, steps = state
        for key, p in meta.items():
            g = grads[key]
            if self.clips:
                bound = clip.to(g.dtype)
                g = torch.minimum(torch.maximum(g, -bound), bound)
            if self.kind == "sgd":
                p.sub_(lr.to(p.dtype) * g)
                continue
            m, v, step = exp_avgs[key], exp_avg_sqs[key], steps[key]
            step.add_(1)
            m.lerp_(g, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            count = step.to(torch.float64)
            step_size = (lr / (1 - self.beta1**count)).to(p.dtype)
            correction2_sqrt = torch.sqrt(1 - self.beta2**count).to(p.dtype)
            p.sub_(step_size * m / (v.sqrt() / correction2_sqrt + self.eps))
