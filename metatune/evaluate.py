"""The evaluation protocol: post-adaptation loss (and accuracy) on held-out tasks.

Scores ``tasks`` held-out tasks (600 in every paper here) drawn from a fixed seed, so every
learner of a study sees the same tasks, and reports mean and 95 % CI (1.96 std / sqrt(n) over
tasks; for accuracy also the binomial CI over all query predictions that CxGrad prints,
algorithms.md §8). Robustness curves: loss after every inner step ``0..steps`` at each K,
and final loss vs a multiplier on the inner step size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import Tensor

from metatune.engine import evaluation_forward
from metatune.learners.base import Learner
from metatune.models.base import Params
from metatune.tasks.base import Split, TaskBatch, TaskDistribution

__all__ = ["EvalResult", "ShotResult", "Summary", "TASK_BLOCK", "evaluate", "heldout_tasks", "summarise"]


@dataclass(frozen=True)
class Summary:
    """Mean and 95 % CI half-width over tasks. Tasks whose loss is not finite (the inner loop
    diverged) are counted in ``nonfinite``, and then mean and CI are ``inf``, never NaN."""

    mean: float
    ci95: float
    n: int
    nonfinite: int = 0

    def __str__(self) -> str:
        if self.nonfinite:
            return f"diverged ({self.nonfinite}/{self.n} tasks)"
        return f"{self.mean:.4g} ± {self.ci95:.2g}"


def summarise(values: Tensor) -> Summary:
    values = values.detach().double().flatten()
    n = values.numel()
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        return Summary(math.inf, math.inf, n, bad)
    std = values.std(unbiased=True).item() if n > 1 else 0.0
    return Summary(values.mean().item(), 1.96 * std / math.sqrt(n), n)


@dataclass
class ShotResult:
    shots: int
    #: The inner steps of the headline numbers (``loss``, ``accuracy``, ``task_losses``).
    steps: int
    #: Final-step query loss per task (kept so other statistics can be computed later).
    task_losses: list[float]
    loss: Summary
    loss_by_step: list[Summary]
    accuracy: Summary | None = None
    accuracy_by_step: list[Summary] | None = None
    #: Binomial 95 % CI over every query prediction (CxGrad's statistic).
    accuracy_ci95_binomial: float | None = None
    #: Learner diagnostics after the last curve step (mask fractions, context norms, ...).
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalResult:
    by_shots: dict[int, ShotResult]
    #: Final loss vs multiplier of the inner step size, at the training K.
    lr_scale_curve: dict[float, Summary]
    split: str
    tasks: int

    def to_dict(self) -> dict:
        return {
            "split": self.split,
            "tasks": self.tasks,
            "by_shots": {str(k): asdict(v) for k, v in self.by_shots.items()},
            "lr_scale_curve": {str(k): asdict(v) for k, v in self.lr_scale_curve.items()},
        }


#: Held-out tasks are drawn in blocks, each from its own seed, so the task set does not depend
#: on how many tasks are scored per vmapped call.
TASK_BLOCK = 10


def heldout_tasks(task: TaskDistribution, count: int, *, seed: int, shots: int | None = None,
                  split: Split = "test", start: int = 0) -> TaskBatch:
    """Tasks ``start .. start+count`` of the held-out stream of ``seed`` (the same for every learner)."""
    parts, first, last = [], start // TASK_BLOCK, (start + count - 1) // TASK_BLOCK
    for block in range(first, last + 1):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + block)
        parts.append(task.sample(TASK_BLOCK, generator=gen, shots=shots, split=split))
    whole = TaskBatch(*(torch.cat([getattr(p, f) for p in parts]) for f in
                        ("support_x", "support_y", "query_x", "query_y")))
    offset = start - first * TASK_BLOCK
    return whole[offset:offset + count]


def _run(
    learner: Learner, meta: Params, *, tasks: int, shots: int, steps: int, lr_scale: float, seed: int,
    split: Split, chunk: int, device: torch.device, dtype: torch.dtype, compile: bool,
) -> dict[str, Tensor]:
    outs: list[dict[str, Tensor]] = []
    done = 0
    meta = {k: v.detach() for k, v in meta.items()}
    while done < tasks:
        n = min(chunk, tasks - done)
        # Compiled: a short last chunk is padded with the next tasks of the stream (and cut off
        # below), so every chunk has one shape and one graph. A task's result does not depend
        # on the others, and its noise rows are the first rows of the larger draw.
        run = min(chunk, tasks) if compile else n
        batch = heldout_tasks(learner.task, run, seed=seed, shots=shots, split=split, start=done)
        batch = batch.to(device=device, dtype=dtype)
        # Noise gets its own seed per chunk start so tasks never depend on what a learner draws.
        noise_gen = torch.Generator().manual_seed(seed * 7919 + done)
        noise = learner.sample_noise(run, generator=noise_gen, meta_params=meta, steps=steps, training=False)
        noise = {k: v.to(device) for k, v in noise.items()}
        out = evaluation_forward(learner, meta, batch, noise, steps=steps, lr_scale=lr_scale, compile=compile)
        outs.append({k: v[:n].detach() for k, v in out.items()})
        done += n
    merged = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    merged["query_size"] = torch.tensor(batch.query_y.shape[1])
    return merged


def evaluate(
    learner: Learner, meta: Params, *, tasks: int = 600, shots: Sequence[int] | None = None,
    steps: int | None = None, curve_steps: int | None = None, lr_scales: Sequence[float] = (1.0,),
    seed: int = 1, split: Split = "test", chunk: int = 100, device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32, compile: bool | Literal["auto"] = "auto",
) -> EvalResult:
    """Evaluate ``meta`` on ``tasks`` held-out tasks at each K in ``shots``.

    The headline loss is after ``steps`` inner steps (default: the training steps); the step
    curve runs to ``curve_steps`` (default ``steps``); the step-size curve is at ``steps``.
    """
    device = torch.device(device)
    if compile == "auto":  # the run config's rule (RunConfig.compiles_evaluation): on CUDA only
        compile = device.type == "cuda"
    steps = learner.config.inner_steps if steps is None else steps
    curve_steps = steps if curve_steps is None else max(curve_steps, steps)
    train_k = learner.task.shots
    shots = list(shots) if shots else [train_k]
    run = functools.partial(_run, tasks=tasks, seed=seed, split=split, chunk=chunk, device=device, dtype=dtype,
                            compile=bool(compile))
    by_shots: dict[int, ShotResult] = {}
    for k in shots:
        out = run(learner, meta, shots=k, steps=curve_steps, lr_scale=1.0)
        losses = out["loss"]  # [tasks, curve_steps + 1]
        result = ShotResult(
            shots=k, steps=steps, task_losses=losses[:, steps].tolist(), loss=summarise(losses[:, steps]),
            loss_by_step=[summarise(losses[:, s]) for s in range(losses.shape[1])],
        )
        if "accuracy" in out:
            acc = out["accuracy"]
            result.accuracy = summarise(acc[:, steps])
            result.accuracy_by_step = [summarise(acc[:, s]) for s in range(acc.shape[1])]
            p = acc[:, steps].double().mean().item()
            n_pred = acc.shape[0] * int(out["query_size"])
            result.accuracy_ci95_binomial = 1.96 * math.sqrt(max(p * (1 - p), 0.0) / n_pred)
        result.stats = {k[len("stats/"):]: v.double().mean().item() for k, v in out.items() if k.startswith("stats/")}
        by_shots[k] = result
    curve: dict[float, Summary] = {}
    for scale in lr_scales:
        if scale == 1.0 and train_k in by_shots:
            curve[scale] = by_shots[train_k].loss
            continue
        out = run(learner, meta, shots=train_k, steps=steps, lr_scale=scale)
        curve[scale] = summarise(out["loss"][:, steps])
    return EvalResult(by_shots=by_shots, lr_scale_curve=curve, split=split, tasks=tasks)
