"""N-way K-shot episodes from images grouped by class, shared by ``digits``, ``image_folder``
and ``mnist``.

A :class:`ClassPool` holds one split: every image of the split in one tensor, sorted by class,
with per-class offsets and counts. :meth:`ClassPool.sample` draws a whole meta-batch with
tensor ops only (no loop over tasks):

1. each task picks ``ways`` distinct classes (argsort of uniforms over the classes);
2. each picked class gives ``shots + query`` distinct images (the smallest of uniform keys
   over that class's images; keys past the class's count are masked out);
3. the class in slot ``j`` gets label ``j`` -- the classes were drawn in random order, so the
   class -> label map is a fresh random permutation per task (Wormhole's label conflict,
   algorithms.md §7.5). With ``random_labels=False`` the picked classes are sorted first, so
   a class always gets a lower label than any larger-numbered class in its task;
4. support and query are each shuffled per task (so position says nothing about the label).

Everything is drawn from the generator passed in, so the same generator state gives the
same batch. With ``rotations=4`` every class also exists rotated by 90, 180 and 270 degrees
as three further classes (the Omniglot augmentation); class ``c`` of the pool is then base
class ``c // 4`` rotated ``c % 4`` quarter turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from metatune.errors import ConfigError
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution

__all__ = ["ClassPool", "EpisodicTask", "SPLITS", "check_split"]

SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")


@dataclass(frozen=True, eq=False)
class ClassPool:
    """The images of one split, grouped by class.

    ``images [T, *shape]`` (any dtype; divided by ``scale`` and cast to float32 when sampled),
    sorted so that class ``c`` owns rows ``offsets[c] : offsets[c] + counts[c]``. ``names``
    label the base classes (folder names, digit values) for messages and tests.
    """

    images: Tensor
    offsets: Tensor
    counts: Tensor
    names: tuple[str, ...]
    scale: float = 1.0
    rotations: int = 1

    @classmethod
    def from_classes(cls, per_class: Sequence[Tensor], names: Sequence[str], *, scale: float = 1.0,
                     rotations: int = 1) -> ClassPool:
        if len(per_class) != len(names):
            raise ValueError("one name per class is needed")
        if not per_class:
            raise ValueError("a class pool needs at least one class")
        counts = torch.tensor([len(t) for t in per_class], dtype=torch.int64)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(torch.cat(list(per_class)), offsets, counts, tuple(names), scale, rotations)

    @classmethod
    def from_labels(cls, images: Tensor, labels: Tensor, *, names: Sequence[str] | None = None,
                    scale: float = 1.0, rotations: int = 1) -> ClassPool:
        """Group ``images`` by integer ``labels`` (classes are the distinct labels, ascending)."""
        labels = torch.as_tensor(labels, dtype=torch.int64)
        classes, counts = torch.unique(labels, sorted=True, return_counts=True)
        order = torch.argsort(labels, stable=True)
        offsets = torch.cumsum(counts, 0) - counts
        if names is None:
            names = [str(int(c)) for c in classes]
        return cls(images[order], offsets, counts, tuple(names), scale, rotations)

    @property
    def num_classes(self) -> int:
        """Classes available to a task, rotated copies included."""
        return len(self.names) * self.rotations

    @property
    def min_count(self) -> int:
        return int(self.counts.min())

    def class_images(self, c: int) -> Tensor:
        """The stored images of base class ``c`` (unscaled, unrotated)."""
        start = int(self.offsets[c])
        return self.images[start:start + int(self.counts[c])]

    def sample(self, num_tasks: int, *, ways: int, shots: int, query: int, generator: torch.Generator,
               random_labels: bool = True) -> TaskBatch:
        if ways > self.num_classes:
            raise ConfigError("ways",
                              f"{ways}-way tasks need {ways} classes; this split has {self.num_classes}")
        n = shots + query
        if n > self.min_count:
            raise ConfigError(
                "shots", f"shots + query = {shots} + {query} images per class are needed, but a class of "
                f"this split has only {self.min_count}")
        b = num_tasks
        cls = torch.rand(b, self.num_classes, generator=generator).argsort(dim=1)[:, :ways]  # [B, N]
        if not random_labels:
            cls = cls.sort(dim=1).values
        base, rot = cls // self.rotations, cls % self.rotations
        counts = self.counts[base]  # [B, N]
        width = int(self.counts.max())
        keys = torch.rand(b, ways, width, generator=generator)
        keys.masked_fill_(torch.arange(width) >= counts[..., None], 2.0)
        pick = keys.topk(n, dim=-1, largest=False).indices  # [B, N, n], random order
        x = self.images[self.offsets[base][..., None] + pick].to(torch.float32)  # [B, N, n, *shape]
        if self.scale != 1.0:
            x = x / self.scale
        if self.rotations > 1:
            for k in range(1, 4):
                mask = rot == k
                if bool(mask.any()):
                    x[mask] = torch.rot90(x[mask], k, dims=(-2, -1))
        y = torch.arange(ways).view(1, ways, 1).expand(b, ways, n)
        shape = x.shape[3:]

        def part(lo: int, hi: int) -> tuple[Tensor, Tensor]:
            m = hi - lo
            xs = x[:, :, lo:hi].reshape(b, ways * m, *shape)
            ys = y[:, :, lo:hi].reshape(b, ways * m)
            perm = torch.rand(b, ways * m, generator=generator).argsort(dim=1)
            rows = torch.arange(b)[:, None]
            return xs[rows, perm].contiguous(), ys[rows, perm].contiguous()

        sx, sy = part(0, shots)
        qx, qy = part(shots, n)
        return TaskBatch(sx, sy, qx, qy)


class EpisodicTask(TaskDistribution):
    """Base of the N-way K-shot image tasks. Subclasses are frozen dataclasses with fields
    ``ways``, ``shots``, ``query`` (per class) and ``random_labels``, and build one
    :class:`ClassPool` per split in :meth:`_build_pool`; pools are built on first use and
    cached on the instance (never pickled)."""

    problem: ClassVar[Problem] = "classification"
    ways: int
    shots: int
    query: int
    random_labels: bool

    def _build_pool(self, split: Split) -> ClassPool:
        raise NotImplementedError

    def pool(self, split: Split) -> ClassPool:
        check_split(split)
        pools = self.__dict__.setdefault("_pools", {})
        if split not in pools:
            pools[split] = self._build_pool(split)
        return pools[split]

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_pools"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def output_dim(self) -> int:
        return self.ways

    def sample(
        self, num_tasks: int, *, generator: torch.Generator, shots: int | None = None, split: Split = "train"
    ) -> TaskBatch:
        k = self.shots if shots is None else shots
        if k < 1:
            raise ConfigError("shots", f"expected a positive number, got {k!r}")
        return self.pool(split).sample(num_tasks, ways=self.ways, shots=k, query=self.query,
                                       generator=generator, random_labels=self.random_labels)
