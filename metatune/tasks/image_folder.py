"""N-way K-shot classification on images a user has on disk, one folder per class.

Layouts (``layout``):

- ``"flat"``: ``root/<class>/<image files>`` (``depth: 1``), or Omniglot's
  ``root/<alphabet>/<character>/<image files>`` (``depth: 2``; a class is one character). The
  classes, sorted by path, are shuffled with ``random.Random(split_seed).shuffle`` (the
  procedure of cbfinn/maml, seed 1, on a sorted listing) and cut into train / val / test by
  the fractions ``split`` (default 0.7 / 0.1 / 0.2) or by explicit class counts
  ``split_sizes`` (Omniglot's 1100 / 100 / 423, algorithms.md §7.6 and §11.15).
- ``"split_dirs"``: ``root/train``, ``root/val`` (or ``root/validation``) and ``root/test``, each
  holding class folders at ``depth`` (miniImageNet's Ravi split, 64 / 16 / 20 classes).

Images are read with PIL, converted to grayscale (``grayscale: true``) or RGB, resized to
``image_size`` x ``image_size`` with Lanczos filtering (as cbfinn/maml's Omniglot script) and
scaled to [0, 1]; ``invert: true`` gives 1 - x (cbfinn's Omniglot loader inverts, making the
strokes 1). ``rotations: true`` adds every class rotated by 90, 180 and 270 degrees as three
new classes in every split (the Omniglot augmentation; the rotated copies of a class stay in
its split). The folders are scanned when the task is made (so a bad layout fails at once);
a split's images are loaded on first use and kept on the instance. The decoded split (uint8,
before inversion and rotation) is cached on disk and memory-mapped by every later load on the
machine, keyed by the files' paths, sizes and mtimes and the decode settings
(``metatune/tasks/_array_cache.py``).

Errors name the field and the path: a missing ``root`` or split folder, no class folders,
a split with fewer classes than ``ways``, a class with fewer than ``shots + query`` images.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from metatune._fields import positive
from metatune.errors import ConfigError
from metatune.tasks._array_cache import cached_arrays, source_key
from metatune.tasks._checks import episode_sizes, split_counts, split_fractions
from metatune.tasks.base import Split, TaskBatch
from metatune.tasks.episodes import SPLITS, ClassPool, EpisodicTask

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "load_image"]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})


def load_image(path: str | Path, *, size: int, grayscale: bool) -> torch.Tensor:
    """One image file as a ``[C, size, size]`` uint8 tensor (C = 1 or 3)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            img = opened.convert("L" if grayscale else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.LANCZOS)
            arr = np.array(img, dtype=np.uint8)  # a writable copy
    except (OSError, ValueError) as exc:
        raise ConfigError("root", f"{path}: cannot read the image ({exc})") from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(path: Path, depth: int) -> list[Path]:
    dirs = [path]
    for _ in range(depth):
        dirs = [d for parent in dirs for d in _visible_dirs(parent)]
    return dirs


@dataclass(frozen=True, kw_only=True)
class ImageFolder(EpisodicTask):
    root: str
    layout: Literal["flat", "split_dirs"] = "flat"
    #: Folder levels below ``root`` (or below each split folder) down to a class: 1 for
    #: ``<class>/``, 2 for Omniglot's ``<alphabet>/<character>/``.
    depth: int = 1
    image_size: int = 28
    grayscale: bool = True
    invert: bool = False
    ways: int = 5
    shots: int = 1
    #: Query images per class.
    query: int = 15
    #: Train / val / test fractions of the classes (``layout: flat``).
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    #: Explicit train / val / test class counts (``layout: flat``); overrides ``split``.
    split_sizes: tuple[int, int, int] | None = None
    split_seed: int = 1
    rotations: bool = False
    random_labels: bool = True

    def __post_init__(self) -> None:
        episode_sizes(self.ways, self.shots, self.query)
        positive(self.image_size, "image_size")
        if self.depth not in (1, 2):
            raise ConfigError(
                "depth", f"expected 1 (root/<class>/) or 2 (root/<alphabet>/<character>/), got {self.depth}")
        split_fractions(self.split, "split")
        if self.split_sizes is not None:
            if len(self.split_sizes) != 3 or any(n < 0 for n in self.split_sizes):
                raise ConfigError("split_sizes",
                                  f"expected three class counts [train, val, test], got {self.split_sizes!r}")
        self.__dict__["_classes"] = self._scan()

    # -- layout ---------------------------------------------------------------------------
    def _scan(self) -> dict[str, list[tuple[str, list[Path]]]]:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise ConfigError("root", f"{root}: no such directory")
        found: dict[str, list[Path]] = {}
        if self.layout == "split_dirs":
            for name in SPLITS:
                candidates = [root / name] + ([root / "validation"] if name == "val" else [])
                folder = next((c for c in candidates if c.is_dir()), None)
                if folder is None:
                    raise ConfigError("root", f"{candidates[0]}: no such directory (layout: split_dirs "
                                      f"expects {root}/train, {root}/val and {root}/test)")
                found[name] = _class_dirs(folder, self.depth)
        else:
            dirs = _class_dirs(root, self.depth)
            random.Random(self.split_seed).shuffle(dirs)
            if self.split_sizes is not None:
                sizes = self.split_sizes
                if sum(sizes) > len(dirs):
                    raise ConfigError("split_sizes", f"{root} has {len(dirs)} classes, fewer than "
                                      f"{' + '.join(map(str, sizes))}")
            else:
                sizes = split_counts(len(dirs), self.split)
            cuts = np.cumsum((0, *sizes))
            found = {name: sorted(dirs[cuts[i]:cuts[i + 1]]) for i, name in enumerate(SPLITS)}
        need = self.shots + self.query
        out: dict[str, list[tuple[str, list[Path]]]] = {}
        for name, dirs in found.items():
            classes = []
            for d in dirs:
                files = _image_files(d)
                if len(files) < need:
                    hint = " (class folders hold image files; is depth right?)" if not files else ""
                    raise ConfigError("shots", f"{d}: {len(files)} images, fewer than shots + query = "
                                      f"{self.shots} + {self.query}{hint}")
                classes.append((d.relative_to(root).as_posix(), files))
            available = len(classes) * (4 if self.rotations else 1)
            if available < self.ways:
                raise ConfigError("ways", f"{root}: the {name} split has {available} classes, fewer than "
                                  f"ways = {self.ways} (layout: {self.layout}, depth: {self.depth})")
            out[name] = classes
        return out

    def classes(self, split: Split) -> tuple[str, ...]:
        """The class folders of a split, relative to ``root``."""
        return tuple(name for name, _ in self.__dict__["_classes"][split])

    # -- task ------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1 if self.grayscale else 3, self.image_size, self.image_size)

    def default_backbone(self) -> dict:
        # MAML's Omniglot net has 64 filters, its miniImageNet net 32 (algorithms.md §7.6).
        return {"name": "conv4", "channels": 64 if self.grayscale else 32}

    def _build_pool(self, split: Split) -> ClassPool:
        from PIL import __version__ as pillow

        classes = self.__dict__["_classes"][split]
        files = [f for _, class_files in classes for f in class_files]
        root = Path(self.root).expanduser()
        settings = {"decode": "PIL convert, Lanczos resize, uint8 [N, C, H, W]", "pillow": pillow,
                    "image_size": self.image_size, "grayscale": self.grayscale}
        images = cached_arrays(source_key("image_folder", root, files, settings),
                               lambda: {"images": self._decode(files)}, what=f"{root} ({split})")["images"]
        counts = torch.tensor([len(class_files) for _, class_files in classes], dtype=torch.int64)
        offsets = torch.cumsum(counts, 0) - counts
        return ClassPool(torch.from_numpy(images), offsets, counts, tuple(name for name, _ in classes),
                         scale=255.0, rotations=4 if self.rotations else 1)

    def _decode(self, files: list[Path]) -> np.ndarray:
        """The images of ``files``, in order, as one ``[N, C, size, size]`` uint8 array."""
        out = np.empty((len(files), *self.input_shape), dtype=np.uint8)
        for i, f in enumerate(files):
            out[i] = load_image(f, size=self.image_size, grayscale=self.grayscale).numpy()
        return out

    def sample(self, num_tasks: int, *, generator: torch.Generator, shots: int | None = None,
               split: Split = "train") -> TaskBatch:
        batch = super().sample(num_tasks, generator=generator, shots=shots, split=split)
        if not self.invert:
            return batch
        return TaskBatch(1 - batch.support_x, batch.support_y, 1 - batch.query_x, batch.query_y)
