"""N-way K-shot MNIST from the IDX files on disk (Wormhole MAML §4.3, algorithms.md §7.5).

``root`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``);
the dotted names some mirrors use (``train-images.idx3-ubyte``) are accepted too. Nothing is
downloaded.

Splits [inferred; the paper gives none]: ``test`` is the t10k files; ``val`` is a held-out
``val_fraction`` (10 %) of each digit's training images, chosen by a fixed permutation
(``split_seed``); ``train`` is the rest. Every split holds all 10 digits, so tasks differ in
the digits that meet and in the labels: with ``random_labels: true`` each task maps its
digits to 0..N-1 in a fresh random order (the conflict the paper studies). Defaults are the
paper's 2-way 1-shot; the query size (15 per class) is [inferred].

Images are ``[1, 28, 28]`` float32 in [0, 1]. Default backbone ``digits_conv`` (28 -> 14 -> 7).
The files are read when the task is made (a missing, truncated or corrupt file is a
ConfigError naming it) and cached per process; the decoded arrays are also cached on disk and
memory-mapped by every later load on the machine, keyed by the files' paths, sizes and mtimes
(``metatune/tasks/_array_cache.py``).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metatune.errors import ConfigError
from metatune.tasks._array_cache import cached_arrays, source_key
from metatune.tasks._checks import episode_sizes
from metatune.tasks.base import Split
from metatune.tasks.episodes import ClassPool, EpisodicTask

__all__ = ["MNIST", "read_idx"]

# IDX type codes -> numpy big-endian dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_CACHE: dict[tuple, dict[str, np.ndarray]] = {}


def read_idx(path: str | Path, *, field: str = "root") -> np.ndarray:
    """Read one IDX file (``.gz`` is decompressed); a truncated or corrupt file raises
    :class:`ConfigError` for ``field`` naming the path and what is wrong."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise ConfigError(field, f"{path}: corrupt or truncated gzip file ({exc})") from None
    except OSError as exc:
        raise ConfigError(field, f"{path}: cannot read ({exc.strerror or exc})") from None
    if len(raw) < 4:
        raise ConfigError(field, f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise ConfigError(field, f"{path}: not an IDX file (magic number 0x{raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(field,
                          f"{path}: truncated IDX file (header needs {header} bytes, file has {len(raw)})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise ConfigError(field, f"{path}: truncated IDX file (shape {list(shape)} needs {expected} data "
                          f"bytes, found {found})")
    if found > expected:
        raise ConfigError(field, f"{path}: corrupt IDX file ({found - expected} bytes after the data of "
                          f"shape {list(shape)})")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    dotted = stem[::-1].replace("-", ".", 1)[::-1]  # train-images-idx3-ubyte -> train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (root / name).is_file():
            return root / name
    raise ConfigError("root", f"{root / stem}: no such file (nor {stem}.gz)")


def _load(root: Path) -> dict[str, np.ndarray]:
    paths = {key: _find(root, stem) for key, stem in _FILES.items()}
    key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths.values())
    if key in _CACHE:
        return _CACHE[key]
    arrays = cached_arrays(source_key("mnist", root, paths.values(), {"reader": "read_idx"}),
                           lambda: _read(root, paths), what=str(root))
    while len(_CACHE) >= 2:  # keep at most two data sets per process
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = arrays
    return arrays


def _read(root: Path, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """Decode and check the four files (only checked arrays reach the disk cache)."""
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3:
            raise ConfigError("root", f"{paths[f'{part}_images']}: expected images [N, rows, cols], got "
                              f"shape {list(images.shape)}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ConfigError("root", f"{paths[f'{part}_labels']}: {len(labels)} labels for "
                              f"{len(images)} images in {paths[f'{part}_images'].name}")
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ConfigError("root", f"{paths[f'{part}_labels']}: labels outside 0-9")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise ConfigError("root", f"{root}: train and test images differ in size")
    for part in ("train", "test"):
        if arrays[f"{part}_images"].dtype != np.uint8:
            raise ConfigError("root", f"{paths[f'{part}_images']}: expected unsigned-byte pixels, got "
                              f"{arrays[f'{part}_images'].dtype}")
    return arrays


@dataclass(frozen=True, kw_only=True)
class MNIST(EpisodicTask):
    root: str
    ways: int = 2
    shots: int = 1
    #: Query images per class.
    query: int = 15
    #: Fraction of each digit's training images held out as the val split.
    val_fraction: float = 0.1
    split_seed: int = 0
    random_labels: bool = True

    def __post_init__(self) -> None:
        episode_sizes(self.ways, self.shots, self.query)
        if not 0 < self.val_fraction < 1:
            raise ConfigError("val_fraction",
                              f"expected a fraction between 0 and 1, got {self.val_fraction!r}")
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise ConfigError("root", f"{root}: no such directory")
        arrays = _load(root)
        self.__dict__["_shape"] = (1, *arrays["train_images"].shape[1:])
        for name in ("train", "val", "test"):
            counts = torch.bincount(self._split_labels(arrays, name), minlength=10)
            present = int((counts > 0).sum())
            if present < self.ways:
                raise ConfigError("ways", f"{root}: the {name} split has {present} digit classes, fewer than "
                                  f"ways = {self.ways}")
            smallest = int(counts[counts > 0].min())
            if smallest < self.shots + self.query:
                raise ConfigError("query", f"{root}: a digit of the {name} split has {smallest} images, "
                                  f"fewer than shots + query = {self.shots} + {self.query}")

    def _split_rows(self, arrays: dict[str, np.ndarray], split: Split) -> tuple[str, torch.Tensor]:
        """Which files and which rows of them make up a split."""
        if split == "test":
            return "test", torch.arange(len(arrays["test_labels"]))
        labels = torch.from_numpy(arrays["train_labels"].astype(np.int64))
        gen = torch.Generator().manual_seed(self.split_seed)
        keep = []
        for c in range(10):
            idx = torch.nonzero(labels == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            n_val = round(self.val_fraction * len(idx))
            keep.append(idx[:n_val] if split == "val" else idx[n_val:])
        return "train", torch.cat(keep).sort().values

    def _split_labels(self, arrays: dict[str, np.ndarray], split: Split) -> torch.Tensor:
        part, rows = self._split_rows(arrays, split)
        return torch.from_numpy(arrays[f"{part}_labels"].astype(np.int64))[rows]

    def indices(self, split: Split) -> tuple[str, torch.Tensor]:
        """``("train" | "test", rows)``: the file pair and the rows a split uses."""
        return self._split_rows(_load(Path(self.root).expanduser()), split)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.__dict__["_shape"]

    def default_backbone(self) -> dict:
        return {"name": "digits_conv"}

    def _build_pool(self, split: Split) -> ClassPool:
        arrays = _load(Path(self.root).expanduser())
        part, rows = self._split_rows(arrays, split)
        images = torch.from_numpy(arrays[f"{part}_images"])[rows].unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{part}_labels"].astype(np.int64))[rows]
        return ClassPool.from_labels(images, labels, scale=255.0)
