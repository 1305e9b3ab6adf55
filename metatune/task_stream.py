"""The training batches of one run, drawn from the run's generator one by one or in blocks.

A task that draws a block cheaper than its batches one by one (``samples_in_blocks``, e.g.
:class:`~metatune.tasks.Sine`: one vectorised draw instead of about 15 small tensor operations
per step) gets its batches for the steps up to the next log point in one call, with exactly the
values of per-step sampling. That holds only while nothing else draws from the generator
between steps, so a learner that draws inner-loop noise from it keeps per-step sampling.

A checkpoint taken inside a block stores the generator's state at the block's start and the
position in it; resuming draws the block again and continues from that position, so a resumed
run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch

from metatune.tasks.base import TaskBatch, TaskDistribution

__all__ = ["TaskStream"]

#: At most this many meta-batches per block (a sine block of 1 000 x 25 tasks is about 2 MB).
MAX_BLOCK = 1000


class TaskStream:
    """``next(until=n)`` returns the next meta-batch; ``n`` (the steps left before the next log
    point, where the trainer snapshots and checkpoints) bounds a new block."""

    def __init__(
        self, task: TaskDistribution, *, meta_batch: int, generator: torch.Generator, device: torch.device,
        dtype: torch.dtype, blocks: bool,
    ) -> None:
        self.task, self.meta_batch, self.generator = task, meta_batch, generator
        self.device, self.dtype = device, dtype
        self.blocks = blocks and task.samples_in_blocks
        self._block: TaskBatch | None = None
        self._start: torch.Tensor | None = None  # generator state before the block was drawn
        self._length = 0
        self._pos = 0

    def next(self, *, until: int) -> TaskBatch:
        if self._block is None or self._pos >= self._length:
            if not self.blocks:
                return self.task.sample(self.meta_batch, generator=self.generator).to(
                    device=self.device, dtype=self.dtype)
            self._draw(max(1, min(until, MAX_BLOCK)))
        assert self._block is not None
        batch = self._block[self._pos]
        self._pos += 1
        return batch

    def _draw(self, length: int) -> None:
        self._start = self.generator.get_state()
        block = self.task.sample_block(length, self.meta_batch, generator=self.generator)
        self._block = block.to(device=self.device, dtype=self.dtype)
        self._length, self._pos = length, 0

    # The trainer's rewind: the block objects are never written to, so references suffice.
    def snapshot(self) -> tuple[Any, ...]:
        return self._block, self._start, self._length, self._pos

    def restore(self, snapshot: tuple[Any, ...]) -> None:
        self._block, self._start, self._length, self._pos = snapshot

    def checkpoint(self) -> tuple[torch.Tensor, list[int]]:
        """(generator state, [position, block length]) to store; [0, 0] outside a block."""
        if self._block is not None and self._start is not None and self._pos < self._length:
            return self._start, [self._pos, self._length]
        return self.generator.get_state(), [0, 0]

    def resume(self, generator_state: torch.Tensor, position: list[int] | None) -> None:
        """Continue from :meth:`checkpoint`'s values (None: a checkpoint without a block)."""
        self.generator.set_state(generator_state)
        self._block, self._length, self._pos = None, 0, 0
        pos, length = position or (0, 0)
        if length:
            self._draw(int(length))
            self._pos = int(pos)
