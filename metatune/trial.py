"""One training run: build task, backbone and learner from a config, meta-train with Adam,
validate and checkpoint periodically, then run the evaluation protocol.

Plain Python with no service imports: ``metatune train`` runs it directly, and the study
layer wraps it in a Ray Tune trainable. A non-finite meta-loss or meta-gradient stops
training and is recorded as ``diverged`` (iteration and last finite loss), never as a crash
or a NaN metric.

The training step never waits for the device: losses and finiteness flags stay tensors and
are read at log points (every ``log_every`` iterations). When a flag there says a step was not
finite, the trainer rewinds to the log point before it (a snapshot of parameters, optimiser
and RNG) and replays the finite steps, so the state, the divergence iteration and the last
finite loss are exactly those of a run that checked every step.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from metatune.atomic_files import write_atomic
from metatune.checkpoint import CHECKPOINT_FILE, CHECKPOINT_FORMAT, load_checkpoint
from metatune.config import Components, RunConfig, parse_config
from metatune.engine import ALL_FINITE, COMPILE_STATS, train_step
from metatune.errors import CheckpointError, ConfigError
from metatune.evaluate import evaluate
from metatune.task_stream import TaskStream
from metatune.train_result import TrainResult, to_json

__all__ = ["CHECKPOINT_FILE", "TrainResult", "Trainer", "load_checkpoint", "to_json"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "expected a device this machine has: cuda was requested, but CUDA is not available")
    return torch.device(name)


def _fast_optimizer(
    cls: type[torch.optim.Adam] | type[torch.optim.SGD], params: list[torch.Tensor], *, lr: float,
) -> torch.optim.Optimizer:
    """The fused kernel (one call updates every tensor: 94 us against 336 us foreach and 376 us
    for the loop, Adam on the sine MLP), else foreach where a torch build or device lacks it."""
    try:
        return cls(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=lr, foreach=True)


#: Called at every validation with (metrics, trainer); the study layer reports to Tune here.
ReportFn = Callable[[dict[str, float], "Trainer"], None]
#: Called with each history entry that no report carries (one per ``log_every`` iterations).
LogFn = Callable[[dict[str, Any]], None]


class Trainer:
    """Meta-trains one learner; all state (params, Adam, RNG, history) checkpoints and restores."""

    def __init__(self, components: Components) -> None:
        if not isinstance(components, Components):
            raise TypeError("Trainer takes built Components; use Trainer.from_config for a config or mapping")
        self.components = components
        cfg = components.config
        self.config = cfg
        self.learner = components.learner
        self.task = components.task
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = _resolve_device(cfg.device)
        if self.device.type == "cuda" and cfg.gpu_memory_fraction:
            torch.cuda.set_per_process_memory_fraction(cfg.gpu_memory_fraction, self.device)
        self.dtype = _DTYPES[cfg.dtype]
        init_gen = torch.Generator().manual_seed(cfg.seed)
        params = self.learner.init_meta_params(generator=init_gen, dtype=self.dtype)
        self.meta = {k: v.to(self.device).requires_grad_() for k, v in params.items()}
        optimizer = torch.optim.Adam if cfg.training.outer_optimizer == "adam" else torch.optim.SGD
        self.optimizer = _fast_optimizer(optimizer, list(self.meta.values()), lr=cfg.training.outer_lr)
        #: The learner's numeric settings as tensor inputs of the (compiled) step.
        self.hp = self.learner.runtime_hparams(dtype=self.dtype, device=self.device)
        # One stream for training tasks and inner-loop noise, seeded apart from the init.
        self.generator = torch.Generator().manual_seed(cfg.seed + 1_000_003)
        self._draws_noise = self.learner.draws_training_noise
        self.tasks = TaskStream(
            self.task, meta_batch=cfg.training.meta_batch, generator=self.generator, device=self.device,
            dtype=self.dtype, blocks=not self._draws_noise,
        )
        self.iteration = 0
        self.status = "running"
        self.diverged_at: int | None = None
        self.last_finite_loss: float | None = None
        self.history: list[dict[str, float]] = []
        self.wall_time_s = 0.0
        self._last_out: dict[str, torch.Tensor] = {}
        #: Whether this run compiles (``compile: auto`` decides by the run's length).
        self.compiled = cfg.compiles()
        self.compiled_evaluation = cfg.compiles_evaluation(self.device.type)
        self._train_step = train_step(
            self.learner, self.optimizer, grad_clip=cfg.training.grad_clip, compile=self.compiled
        )
        self._compile_before = COMPILE_STATS.snapshot()

    @classmethod
    def from_config(cls, config: RunConfig | Mapping[str, Any], *, source: str | None = None) -> Trainer:
        """A trainer for a run config or its mapping form (validated; ``source`` names the file in errors)."""
        data = config.to_dict() if isinstance(config, RunConfig) else config
        return cls(parse_config(data, source=source))

    # ------------------------------------------------------------------ training
    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One outer step with no host sync: the meta-loss and a flag saying whether it and
        every meta-gradient are finite. The update is applied either way (see ``train``)."""
        cfg = self.config.training
        to_log_point = cfg.log_every - self.iteration % cfg.log_every
        batch = self.tasks.next(until=min(to_log_point, max(cfg.iterations - self.iteration, 1)))
        noise = {}
        if self._draws_noise:
            noise = self.learner.sample_noise(
                cfg.meta_batch, generator=self.generator, meta_params=self.meta,
                steps=self.learner.config.inner_steps, training=True,
            )
            noise = {k: v.to(self.device) for k, v in noise.items()}
        loss, out = self._train_step(self.meta, batch, noise, self.hp)
        self.iteration += 1
        self._last_out = out
        return loss, out[ALL_FINITE]

    def step(self) -> float | None:
        """One outer step, checked at once; returns the meta-loss, or None (and marks
        diverged, leaving the parameters as they were) if it was not finite."""
        snapshot = self._snapshot()
        loss, finite = self._step()
        if not bool(finite):
            self._restore(snapshot)
            self._mark_diverged(self.iteration + 1)
            return None
        self.last_finite_loss = loss.item()
        return self.last_finite_loss

    def _snapshot(self) -> dict[str, Any]:
        return {
            "meta": {k: v.detach().clone() for k, v in self.meta.items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self.generator.get_state(),
            "tasks": self.tasks.snapshot(),
            "iteration": self.iteration,
        }

    def _restore(self, snapshot: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in snapshot["meta"].items():
                self.meta[k].copy_(v)
        self.optimizer.load_state_dict(copy.deepcopy(snapshot["optimizer"]))
        self.generator.set_state(snapshot["generator"])
        self.tasks.restore(snapshot["tasks"])
        self.iteration = snapshot["iteration"]

    def _mark_diverged(self, iteration: int) -> None:
        self.status = "diverged"
        self.diverged_at = iteration
        log.warning("meta-loss not finite at iteration %d: recorded as diverged", iteration)

    def _stats(self) -> dict[str, float]:
        """Mean of each per-task statistic of the last step (read at log points only)."""
        return {k: v.mean().item() for k, v in self._last_out.items() if k.startswith("stats/")}

    def validate(self) -> dict[str, float]:
        """Post-adaptation query loss on a fixed set of validation tasks (training K and steps)."""
        cfg, ev = self.config.training, self.config.evaluation
        res = evaluate(
            self.learner, self.meta, tasks=cfg.val_tasks, steps=None, seed=ev.seed + 104_729,
            split="val", chunk=ev.chunk, device=self.device, dtype=self.dtype, compile=self.compiled_evaluation,
        )
        shot = res.by_shots[self.task.shots]
        metrics = {"val_loss": shot.loss.mean, "val_loss_ci95": shot.loss.ci95}
        if shot.accuracy is not None:
            metrics["val_accuracy"] = shot.accuracy.mean
        return metrics

    def train(
        self, *, report: ReportFn | None = None, checkpoint_dir: str | Path | None = None, progress: bool = False,
        on_log: LogFn | None = None,
    ) -> TrainResult:
        """Meta-train until ``training.iterations`` (continuing from a restored state) or divergence."""
        cfg = self.config.training
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=self.learner.name, unit="it")
        window: list[torch.Tensor] = []
        flags: list[torch.Tensor] = []
        snapshot = self._snapshot()
        start = time.perf_counter()
        base_time = self.wall_time_s
        try:
            while self.iteration < cfg.iterations and self.status != "diverged":
                loss, finite = self._step()
                window.append(loss)
                flags.append(finite)
                if bar is not None:
                    bar.update(1)
                it = self.iteration
                last = it == cfg.iterations
                # Each period on its own: a validation or checkpoint is never skipped because its
                # period is not a multiple of log_every.
                due_eval = bool(cfg.eval_every) and (it % cfg.eval_every == 0 or last)
                due_save = checkpoint_dir is not None and bool(cfg.checkpoint_every) and (
                    it % cfg.checkpoint_every == 0 or last
                )
                if it % cfg.log_every == 0 or last or due_eval or due_save:
                    if not self._window_finite(window, flags, snapshot):
                        break
                    losses = torch.stack(window)
                    entry = {"iteration": it, "train_loss": losses.mean().item(), **self._stats()}
                    self.last_finite_loss = losses[-1].item()
                    window.clear()
                    flags.clear()
                    if due_eval:
                        entry.update(self.validate())
                    self.history.append(entry)
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.3g}" for k, v in entry.items() if k in ("train_loss", "val_loss")})
                    self.wall_time_s = base_time + time.perf_counter() - start
                    if due_save and checkpoint_dir is not None:
                        self.save(Path(checkpoint_dir) / CHECKPOINT_FILE)
                    if due_eval and report is not None:
                        report(self.metrics(entry), self)
                    elif on_log is not None:
                        on_log(entry)
                    snapshot = self._snapshot()
        finally:
            if bar is not None:
                bar.close()
        self.wall_time_s = base_time + time.perf_counter() - start
        if self.status != "diverged":
            self.status = "completed"
        evaluation = None
        if self.status == "completed":
            ev = self.config.evaluation
            evaluation = evaluate(
                self.learner, self.meta, tasks=ev.tasks, shots=ev.shots, steps=ev.inner_steps,
                curve_steps=ev.curve_steps, lr_scales=ev.lr_scales, seed=ev.seed, split=ev.split, chunk=ev.chunk,
                device=self.device, dtype=self.dtype, compile=self.compiled_evaluation,
            )
        return TrainResult(
            status=self.status, iterations=self.iteration, config=self.config.to_dict(), seed=self.config.seed,
            wall_time_s=self.wall_time_s, diverged_at=self.diverged_at, last_finite_loss=self.last_finite_loss,
            history=list(self.history), evaluation=evaluation, compile=self.compile_record(),
        )

    def compile_record(self) -> dict[str, Any]:
        """Whether this run compiled, and the graphs, cache hits and seconds it took so far."""
        return {
            "compiled": self.compiled, "compiled_evaluation": self.compiled_evaluation,
            **COMPILE_STATS.since(self._compile_before),
        }

    def _window_finite(self, window: list[torch.Tensor], flags: list[torch.Tensor], snapshot: dict[str, Any]) -> bool:
        """Read the flags of the steps since ``snapshot`` (the one host sync per log point). If
        one was not finite, rewind to the snapshot, replay the steps before it and mark the
        run diverged at that step, with the last finite loss."""
        ok = torch.stack(flags)
        if bool(ok.all()):
            return True
        bad = int((~ok).nonzero()[0, 0])
        self._restore(snapshot)
        for _ in range(bad):
            self._step()
        if bad:
            self.last_finite_loss = window[bad - 1].item()
        self._mark_diverged(self.iteration + 1)
        return False

    def metrics(self, entry: dict[str, float]) -> dict[str, float]:
        """Flat, always-finite metrics for a scheduler/searcher (see the study layer)."""
        return {k: float(v) for k, v in entry.items() if isinstance(v, (int, float)) and math.isfinite(v)} | {
            "diverged": float(self.status == "diverged")
        }

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        generator, task_block = self.tasks.checkpoint()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "iteration": self.iteration,
            "status": self.status,
            "diverged_at": self.diverged_at,
            "last_finite_loss": self.last_finite_loss,
            "wall_time_s": self.wall_time_s,
            "meta": {k: v.detach().cpu() for k, v in self.meta.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": generator,
            "task_block": task_block,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"not a metatune checkpoint (format {state.get('format')!r})")
        if set(state["meta"]) != set(self.meta):
            raise CheckpointError("checkpoint parameters do not match this learner/backbone")
        with torch.no_grad():
            for k, v in state["meta"].items():
                self.meta[k].copy_(v.to(self.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.tasks.resume(state["generator"], state.get("task_block"))  # absent before 2026-12
        self.iteration = int(state["iteration"])
        self.status = state["status"]
        self.diverged_at = state["diverged_at"]
        self.last_finite_loss = state["last_finite_loss"]
        self.wall_time_s = float(state["wall_time_s"])
        self.history = list(state["history"])

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint atomically (temp file + rename) so a kill never leaves half a file."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        return write_atomic(path, buf.getvalue())

    @classmethod
    def restore(cls, path: str | Path, components: Components | None = None) -> Trainer:
        """Rebuild a trainer from a checkpoint file (config taken from it unless given)."""
        state = load_checkpoint(path)
        if components is None:
            try:
                components = parse_config(state["config"])
            except ConfigError as exc:
                raise CheckpointError(f"{path}: the run config stored in the checkpoint is invalid ({exc})") from None
        else:
            # Same-named parameters would load into another learner (maml vs fomaml, or another
            # task of the same shape) and silently continue a different run.
            for part in ("learner", "task"):
                stored = state["config"].get(part)
                stored_name = stored.get("name") if isinstance(stored, dict) else None
                wanted = getattr(components.config, part).get("name")
                if stored_name != wanted:
                    raise CheckpointError(
                        f"{path}: checkpoint was written by {part} {stored_name!r}, this run's {part} is {wanted!r}"
                    )
        trainer = cls(components)
        try:
            trainer.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: checkpoint does not fit this run ({exc})") from None
        return trainer
