"""N-way K-shot classification on scikit-learn's bundled 8x8 digits (no download).

1797 images of the digits 0-9 (about 180 per class), as ``[1, 8, 8]`` float32 in [0, 1]
(pixel values 0..16 divided by 16). A small stand-in for the Wormhole MNIST set-up
(algorithms.md §7.5) that runs in seconds on a CPU.

Splits (``split_by``):

- ``"images"`` (default): every split holds all 10 classes, with disjoint *images*: each
  class's images are permuted with a fixed generator (``split_seed`` = 0) and cut
  ``image_split`` = 60 / 20 / 20 % into train / val / test [inferred]. Tasks then differ only
  in which classes meet and in the random labels.
- ``"classes"``: disjoint *classes*, ``class_split`` (default train 0-5, val 6-7, test 8-9);
  every split must have at least ``ways`` classes, so with the default only 2-way works.

``random_labels: true`` assigns the labels 0..N-1 to a task's classes in a fresh random order
per task, so the same digit is class 0 in one task and class 1 in another (Wormhole's 2-way
label conflict); ``false`` gives the smaller digit the smaller label.

Default backbone ``digits_conv`` (two 5x5 convs + pools, two linear layers). ``conv4`` works
with ``{"name": "conv4", "blocks": 3, "channels": 32}``: 8x8 inputs allow at most three 2x2
max-pool blocks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import torch

from metatune.errors import ConfigError
from metatune.tasks._checks import episode_sizes, split_counts, split_fractions
from metatune.tasks.base import Split
from metatune.tasks.episodes import SPLITS, ClassPool, EpisodicTask

__all__ = ["Digits", "load_digit_images"]

NUM_CLASSES = 10


@functools.lru_cache(maxsize=1)
def load_digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (images ``[1797, 1, 8, 8]`` float32 in [0, 1], labels int64);
    loaded once per process."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(data.target, dtype=torch.int64)
    return images, labels


@dataclass(frozen=True, kw_only=True)
class Digits(EpisodicTask):
    ways: int = 5
    shots: int = 1
    #: Query images per class.
    query: int = 15
    split_by: Literal["images", "classes"] = "images"
    #: Per-class train / val / test fractions of the images (``split_by: images``).
    image_split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    #: Train / val / test digit classes (``split_by: classes``).
    class_split: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4, 5), (6, 7), (8, 9))
    split_seed: int = 0
    random_labels: bool = True

    def __post_init__(self) -> None:
        episode_sizes(self.ways, self.shots, self.query)
        split_fractions(self.image_split, "image_split")
        if len(self.class_split) != 3:
            raise ConfigError("class_split",
                              f"expected three class lists [train, val, test], got {self.class_split!r}")
        seen: dict[int, str] = {}
        for name, classes in zip(SPLITS, self.class_split):
            if not classes:
                raise ConfigError("class_split", f"the {name} split has no classes")
            for c in classes:
                if not 0 <= c < NUM_CLASSES:
                    raise ConfigError("class_split", f"digit classes are 0-9, got {c!r} in the {name} split")
                if c in seen:
                    raise ConfigError("class_split",
                                      f"class {c} is in both the {seen[c]} and the {name} split")
                seen[c] = name
        if self.split_by == "classes":
            for name, classes in zip(SPLITS, self.class_split):
                if self.ways > len(classes):
                    raise ConfigError(
                        "ways", f"{self.ways}-way tasks need {self.ways} classes, but with split_by: classes "
                        f"the {name} split has {len(classes)} ({list(classes)}); lower ways or use "
                        "split_by: images")
        elif self.ways > NUM_CLASSES:
            raise ConfigError("ways", f"the digits have {NUM_CLASSES} classes, fewer than ways = {self.ways}")
        need = self.shots + self.query
        have = min(self._pool_sizes())
        if need > have:
            raise ConfigError("query", f"shots + query = {need} images per class are needed, but a class of "
                              f"some split has only {have}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, 8, 8)

    def default_backbone(self) -> dict:
        return {"name": "digits_conv"}

    def _split_indices(self) -> dict[str, dict[int, torch.Tensor]]:
        """split -> class -> dataset indices of that split's images of that class."""
        _, labels = load_digit_images()
        out: dict[str, dict[int, torch.Tensor]] = {s: {} for s in SPLITS}
        if self.split_by == "classes":
            for name, classes in zip(SPLITS, self.class_split):
                for c in sorted(classes):
                    out[name][c] = torch.nonzero(labels == c).flatten()
            return out
        gen = torch.Generator().manual_seed(self.split_seed)
        for c in range(NUM_CLASSES):
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            n_train, n_val, n_test = split_counts(len(idx), self.image_split)
            cuts = {"train": idx[:n_train], "val": idx[n_train:n_train + n_val],
                    "test": idx[n_train + n_val:n_train + n_val + n_test]}
            for name in SPLITS:
                out[name][c] = cuts[name].sort().values
        return out

    def _pool_sizes(self) -> list[int]:
        return [len(v) for per_class in self._split_indices().values() for v in per_class.values()]

    def indices(self, split: Split) -> torch.Tensor:
        """Dataset indices (into ``sklearn.datasets.load_digits()``) of a split's images."""
        return torch.cat(list(self._split_indices()[split].values()))

    def _build_pool(self, split: Split) -> ClassPool:
        images, _ = load_digit_images()
        per_class = self._split_indices()[split]
        return ClassPool.from_classes([images[i] for i in per_class.values()], [str(c) for c in per_class])
