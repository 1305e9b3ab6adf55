"""Task distributions: shapes, determinism, labels, splits and the generators' statistics.

Image data sets are tiny fixtures written in ``tmp_path`` in the real formats (PNG class
folders, IDX files plain and gzipped); the bundled scikit-learn digits need no download.
"""

from __future__ import annotations

import gzip
import math
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metatune.errors import ConfigError
from metatune.tasks import (
    MNIST,
    TASKS,
    AvgThreshold,
    ClassPool,
    Digits,
    ImageFolder,
    Polynomial,
    TaskBatch,
    Wavelet,
    build_task,
)
from metatune.tasks.digits import load_digit_images
from metatune.tasks.mnist import read_idx
from metatune.tasks.wavelet import RICKER_AMPLITUDE
from metatune.testing import check_task_shapes


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fields(batch: TaskBatch) -> tuple[torch.Tensor, ...]:
    return batch.support_x, batch.support_y, batch.query_x, batch.query_y


def assert_same(a: TaskBatch, b: TaskBatch) -> None:
    for x, y in zip(fields(a), fields(b)):
        assert x.dtype == y.dtype and torch.equal(x, y)


def assert_differs(a: TaskBatch, b: TaskBatch) -> None:
    assert not torch.equal(a.support_x, b.support_x)
    assert not torch.equal(a.query_x, b.query_x)


def as_bytes(x: torch.Tensor) -> bytes:
    """A [0, 1] float image back to its stored uint8 bytes (the lookup key of the fixtures)."""
    return (x * 255).round().to(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------------------------------------
# registry and the generic contract
# ---------------------------------------------------------------------------------------------

def test_registered_names() -> None:
    for name in ("sine", "polynomial", "avg_threshold", "wavelet", "digits", "image_folder", "mnist"):
        assert name in TASKS


def _image_folder_section(tmp_path: Path) -> dict:
    rng = np.random.default_rng(0)
    for c in range(30):
        write_images(tmp_path / "flat" / f"class{c:02d}", 6, rng, {})
    return {"name": "image_folder", "root": str(tmp_path / "flat"), "image_size": 28, "ways": 3, "query": 2}


def _mnist_section(tmp_path: Path) -> dict:
    write_mnist(tmp_path / "mnist")
    return {"name": "mnist", "root": str(tmp_path / "mnist"), "query": 1}


#: Tasks that read data files get a tiny data set in their format; every other registered task
#: is checked as its defaults build it.
DATA_TASKS = {"image_folder": _image_folder_section, "mnist": _mnist_section}


@pytest.mark.parametrize("name", TASKS.names())
def test_shapes_dtypes_and_determinism(name: str, tmp_path: Path) -> None:
    """metatune.testing's task contract, over the whole task registry."""
    section = DATA_TASKS[name](tmp_path) if name in DATA_TASKS else {"name": name}
    check_task_shapes(build_task(section))


#: What the synthetic tasks declare by default (the contract above derives its expectations
#: from these declarations, so they are pinned here once).
SYNTHETIC = {
    "polynomial": ({"name": "polynomial"}, (1,), (1,), torch.float32, "mlp"),
    "avg_threshold": ({"name": "avg_threshold"}, (5,), (), torch.float32, "linear"),
    "wavelet": ({"name": "wavelet"}, (20,), (1,), torch.float32, "linear"),
    "digits": ({"name": "digits"}, (1, 8, 8), (), torch.int64, "digits_conv"),
}


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_declared_shapes_of_the_synthetic_tasks(name: str) -> None:
    section, x_shape, y_tail, y_dtype, backbone = SYNTHETIC[name]
    task = build_task(section)
    assert task.input_shape == x_shape
    assert task.default_backbone()["name"] == backbone
    batch = task.sample(3, generator=gen(0))
    assert batch.support_y.shape[2:] == batch.query_y.shape[2:] == y_tail
    assert batch.support_y.dtype == batch.query_y.dtype == y_dtype


def test_generator_state_advances() -> None:
    g = gen(5)
    task = Wavelet()
    a, b = task.sample(2, generator=g), task.sample(2, generator=g)
    assert_differs(a, b)


# ---------------------------------------------------------------------------------------------
# polynomial
# ---------------------------------------------------------------------------------------------

def fit_quadratic(batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat([batch.support_x, batch.query_x], 1).double()
    y = torch.cat([batch.support_y, batch.query_y], 1).double()
    design = torch.cat([x ** 0, x, x ** 2], -1)
    coef = torch.linalg.lstsq(design, y).solution.squeeze(-1)
    resid = (design @ coef.unsqueeze(-1) - y).abs().max()
    return coef, resid


def test_polynomial_matches_its_coefficients() -> None:
    task = Polynomial(orders=(2,), shots=6, query=4)
    g1, g2 = gen(3), gen(3)
    batch = task.sample(5, generator=g1)
    coef = task.sample_coefficients(5, generator=g2)
    x = torch.cat([batch.support_x, batch.query_x], 1).double()
    y = torch.cat([batch.support_y, batch.query_y], 1).double()
    hand = coef[:, None, 0:1] + coef[:, None, 1:2] * x + coef[:, None, 2:3] * x * x
    torch.testing.assert_close(y, hand, atol=1e-5, rtol=1e-5)


def test_polynomial_orders_and_code_scaling() -> None:
    batch = Polynomial().sample(600, generator=gen(0))
    coef, resid = fit_quadratic(batch)
    assert resid < 1e-4  # every task is a polynomial of order <= 2
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert x.min() >= -2 and x.max() <= 2 and x.min() < -1.9 and x.max() > 1.9
    # code scaling: |c_i| <= 2^-i
    bound = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) + 1e-4
    assert (coef.abs() <= bound).all()
    # each order about a third of the tasks
    quadratic = (coef[:, 2].abs() > 1e-3).float().mean()
    constant = ((coef[:, 1:].abs() < 1e-3).all(1)).float().mean()
    assert 0.25 < quadratic < 0.42 and 0.25 < constant < 0.42

    raw, _ = fit_quadratic(Polynomial(orders=(2,), code_scaling=False).sample(200, generator=gen(0)))
    assert raw[:, 2].abs().max() > 0.5  # the paper's U[-1, 1] without the 2^-i division
    only_linear, _ = fit_quadratic(Polynomial(orders=(1,)).sample(50, generator=gen(0)))
    assert only_linear[:, 2].abs().max() < 1e-4


def test_polynomial_validation() -> None:
    with pytest.raises(ConfigError, match="task.orders"):
        build_task({"name": "polynomial", "orders": []})
    with pytest.raises(ConfigError, match=r"task.orders\[1\]"):
        build_task({"name": "polynomial", "orders": [1, -1]})
    with pytest.raises(ConfigError, match="task.x_range"):
        build_task({"name": "polynomial", "x_range": [2, -2]})


# ---------------------------------------------------------------------------------------------
# avg-threshold
# ---------------------------------------------------------------------------------------------

def test_avg_threshold_labels_are_thresholds_of_the_mean() -> None:
    task = AvgThreshold()
    batch = task.sample(400, generator=gen(0))
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert x.min() >= 0 and x.max() <= 1
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    order = x.double().mean(-1).argsort(1)
    ys = torch.gather(y, 1, order)
    steps = ys.diff(dim=1)
    up = (steps >= 0).all(1)
    down = (steps <= 0).all(1)
    assert (up | down).all()  # one threshold per task
    mixed = ys.min(1).values != ys.max(1).values
    assert (up & mixed).any() and (down & mixed).any()  # both signs occur
    assert 0.4 < y.mean() < 0.6  # the sign makes the labels balanced overall


def test_avg_threshold_tau_range_is_a_setting() -> None:
    """tau ~ U[threshold] (a task setting): every task's boundary, between the largest mean of
    one label and the smallest of the other, meets the range; U[0.3, 0.7] leaves few one-label
    tasks where the paper's U[0, 1] leaves about half."""
    mixed = {}
    for rng in ([0.3, 0.7], [0.0, 1.0]):
        task = build_task({"name": "avg_threshold", "threshold": rng, "shots": 200, "query": 1})
        assert task.threshold == tuple(rng)
        batch = task.sample(300, generator=gen(1))
        m, pos = batch.support_x.double().mean(-1), batch.support_y.bool()
        both = pos.any(1) & (~pos).any(1)
        up = torch.where(pos, m, torch.inf).amin(1) > torch.where(~pos, m, -torch.inf).amax(1)  # s = +1
        lo = torch.where(up, torch.where(~pos, m, -torch.inf).amax(1), torch.where(pos, m, -torch.inf).amax(1))
        hi = torch.where(up, torch.where(pos, m, torch.inf).amin(1), torch.where(~pos, m, torch.inf).amin(1))
        assert (lo[both] <= rng[1]).all() and (hi[both] >= rng[0]).all()
        mixed[rng[0]] = both.float().mean().item()
    assert mixed[0.3] > 0.9 and mixed[0.0] < 0.8
    for bad in ([0.7, 0.3], [-0.1, 0.5], [0.5, 1.5], [0.5]):
        with pytest.raises(ConfigError, match=r"^field 'task.threshold'"):
            build_task({"name": "avg_threshold", "threshold": bad})


# ---------------------------------------------------------------------------------------------
# wavelet
# ---------------------------------------------------------------------------------------------

def test_wavelet_bank() -> None:
    task = Wavelet()
    bank = task.wavelets
    assert bank.shape == (5, 20)
    assert RICKER_AMPLITUDE == pytest.approx(0.8673, abs=1e-4)
    assert bank.max() <= RICKER_AMPLITUDE + 1e-12 and bank.min() >= -0.39
    torch.testing.assert_close(task.centres, torch.tensor([-2.5, -1.25, 0.0, 1.25, 2.5], dtype=torch.float64))
    assert len({tuple(r.tolist()) for r in bank.round(decimals=6)}) == 5
    assert Wavelet(translations=(0.0, 1.0)).wavelets.shape == (2, 20)


def test_wavelet_targets_are_dot_products_with_a_signed_wavelet() -> None:
    task = Wavelet()
    batch = task.sample(40, generator=gen(0), shots=30)
    x = torch.cat([batch.support_x, batch.query_x], 1).double()
    y = torch.cat([batch.support_y, batch.query_y], 1).double()
    assert x.min() >= 0 and x.max() <= 1
    f = torch.linalg.lstsq(x, y).solution.squeeze(-1)  # [B, n]
    assert (x @ f.unsqueeze(-1) - y).abs().max() < 1e-5
    bank = torch.cat([task.wavelets, -task.wavelets])
    dist = (f[:, None, :] - bank[None]).abs().amax(-1)  # [B, 2T]
    assert dist.min(1).values.max() < 1e-4  # every recovered filter is +-one of the wavelets
    used = dist.argmin(1)
    assert (used < 5).any() and (used >= 5).any()  # both signs
    assert len(set((used % 5).tolist())) == 5  # every translation


# ---------------------------------------------------------------------------------------------
# the shared episode sampler
# ---------------------------------------------------------------------------------------------

def make_pool(counts: list[int], rotations: int = 1) -> ClassPool:
    """Images [1, 2, 2] whose pixels encode (class, index) so a sampled image says where it came from."""
    per_class = []
    for c, n in enumerate(counts):
        img = torch.zeros(n, 1, 2, 2)
        img[:, 0, 0, 0] = c
        img[:, 0, 0, 1] = torch.arange(n, dtype=torch.float32)
        per_class.append(img)
    return ClassPool.from_classes(per_class, [f"c{c}" for c in range(len(counts))], rotations=rotations)


def test_episode_sampler_labels_and_sizes() -> None:
    pool = make_pool([5, 9, 6, 30, 7])
    batch = pool.sample(200, ways=3, shots=2, query=3, generator=gen(0))
    assert batch.support_x.shape == (200, 6, 1, 2, 2) and batch.query_x.shape == (200, 9, 1, 2, 2)
    maps = set()
    for t in range(200):
        for lab in range(3):
            assert (batch.support_y[t] == lab).sum() == 2 and (batch.query_y[t] == lab).sum() == 3
        x = torch.cat([batch.support_x[t], batch.query_x[t]])
        y = torch.cat([batch.support_y[t], batch.query_y[t]])
        cls, idx = x[:, 0, 0, 0].long(), x[:, 0, 0, 1].long()
        assert (idx < pool.counts[cls]).all()  # never past a class's own images
        assert len(set(zip(cls.tolist(), idx.tolist()))) == 15  # no image twice in a task
        label_of = {}
        for c, lab in zip(cls.tolist(), y.tolist()):
            assert label_of.setdefault(c, lab) == lab  # one class per label
        assert len(set(label_of.values())) == 3
        maps.add(tuple(sorted(label_of.items())))
    assert len(maps) > 30  # the class -> label map varies per task
    # the first support position is not always label 0 (examples are shuffled)
    assert len(set(batch.support_y[:, 0].tolist())) == 3


def test_episode_sampler_fixed_labels_and_errors() -> None:
    pool = make_pool([6, 6, 6, 6])
    batch = pool.sample(50, ways=2, shots=1, query=1, generator=gen(0), random_labels=False)
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    for t in range(50):
        cls = x[t, :, 0, 0, 0]
        assert cls[y[t] == 0].max() < cls[y[t] == 1].min()
    with pytest.raises(ConfigError, match="ways"):
        pool.sample(1, ways=5, shots=1, query=1, generator=gen(0))
    with pytest.raises(ConfigError, match="shots"):
        pool.sample(1, ways=2, shots=4, query=3, generator=gen(0))


def test_episode_sampler_rotations() -> None:
    pool = ClassPool.from_classes([torch.arange(c * 100, c * 100 + 18, dtype=torch.float32).view(2, 1, 3, 3)
                                   for c in range(2)], ["a", "b"], rotations=4)
    assert pool.num_classes == 8
    batch = pool.sample(100, ways=8, shots=1, query=1, generator=gen(0))
    seen = set()
    for t in range(100):
        for x, _label in zip(batch.support_x[t], batch.support_y[t]):
            c = int(x.min()) // 100
            matches = [(i, k) for i in range(2) for k in range(4)
                       if torch.equal(x, torch.rot90(pool.class_images(c)[i], k, dims=(-2, -1)))]
            assert len(matches) == 1
            seen.add((c, matches[0][1]))
    assert len(seen) == 8  # all classes in all four rotations


# ---------------------------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digit_lookup() -> dict[bytes, tuple[int, int]]:
    images, labels = load_digit_images()
    return {im.numpy().tobytes(): (int(lab), i) for i, (im, lab) in enumerate(zip(images, labels))}


def test_digits_images(digit_lookup) -> None:
    task = Digits()
    batch = task.sample(20, generator=gen(0))
    x = torch.cat([batch.support_x, batch.query_x], 1)
    assert x.min() >= 0 and x.max() <= 1 and x.max() == 1
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert y.min() == 0 and y.max() == task.ways - 1
    maps = set()
    for t in range(20):
        found = [digit_lookup[im.numpy().tobytes()] for im in x[t]]
        assert len({i for _, i in found}) == len(found)  # no image twice
        label_of = {}
        for (digit, _), lab in zip(found, y[t].tolist()):
            assert label_of.setdefault(digit, lab) == lab
        assert len(label_of) == task.ways
        maps.add(tuple(sorted(label_of.items())))
    assert len(maps) == 20


def test_digits_image_split_is_disjoint(digit_lookup) -> None:
    task = Digits()
    idx = {s: set(task.indices(s).tolist()) for s in ("train", "val", "test")}
    assert not idx["train"] & idx["test"] and not idx["train"] & idx["val"] and not idx["val"] & idx["test"]
    assert len(idx["train"]) + len(idx["val"]) + len(idx["test"]) == 1797
    assert 0.55 < len(idx["train"]) / 1797 < 0.65
    for split in ("train", "test"):
        batch = task.sample(30, generator=gen(1), split=split)
        images = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)
        used = {digit_lookup[im.numpy().tobytes()][1] for im in images}
        assert used <= idx[split]
    # the split is fixed (seed 0), not drawn from the task generator
    assert torch.equal(Digits().indices("test"), task.indices("test"))
    assert not torch.equal(Digits(split_seed=1).indices("test"), task.indices("test"))


def test_digits_class_split(digit_lookup) -> None:
    task = Digits(ways=2, split_by="classes")
    for split, allowed in (("train", set(range(6))), ("val", {6, 7}), ("test", {8, 9})):
        batch = task.sample(20, generator=gen(0), split=split)
        digits = {digit_lookup[im.numpy().tobytes()][0] for im in batch.query_x.flatten(0, 1)}
        assert digits <= allowed and len(digits) >= 2


def test_digits_fixed_labels(digit_lookup) -> None:
    batch = Digits(ways=3, random_labels=False).sample(10, generator=gen(0))
    for t in range(10):
        digit = torch.tensor([digit_lookup[im.numpy().tobytes()][0] for im in batch.support_x[t]])
        assert torch.equal(digit.argsort(), batch.support_y[t].argsort())


def test_digits_errors() -> None:
    with pytest.raises(ConfigError, match="'task.ways'"):
        build_task({"name": "digits", "ways": 99})
    with pytest.raises(ConfigError, match="'task.ways'.*val split has 2"):
        build_task({"name": "digits", "split_by": "classes"})
    with pytest.raises(ConfigError, match="task.class_split"):
        build_task({"name": "digits", "class_split": [[0, 1], [1, 2], [3, 4]]})
    with pytest.raises(ConfigError, match="task.query"):
        build_task({"name": "digits", "shots": 30, "query": 30})
    with pytest.raises(ConfigError, match="task.split_by"):
        build_task({"name": "digits", "split_by": "pixels"})


def test_digits_pickles_without_its_cache() -> None:
    task = Digits()
    first = task.sample(2, generator=gen(0))
    data = pickle.dumps(task)
    assert len(data) < 2000
    assert_same(pickle.loads(data).sample(2, generator=gen(0)), first)


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------

def write_images(folder: Path, n: int, rng: np.random.Generator, lookup: dict, *, size: int = 8,
                 rgb: bool = False) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 256, size=(size, size, 3) if rgb else (size, size), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")
        lookup[arr.tobytes()] = folder.name if rgb else folder
    (folder / "notes.txt").write_text("not an image")


@pytest.fixture
def flat_root(tmp_path: Path) -> tuple[Path, dict]:
    rng, lookup = np.random.default_rng(0), {}
    for c in range(30):
        write_images(tmp_path / "flat" / f"class{c:02d}", 6, rng, lookup)
    return tmp_path / "flat", lookup


def test_image_folder_flat(flat_root) -> None:
    root, lookup = flat_root
    task = build_task({"name": "image_folder", "root": str(root), "image_size": 8, "ways": 3, "query": 5})
    assert task.input_shape == (1, 8, 8) and task.output_dim == 3
    assert task.default_backbone() == {"name": "conv4", "channels": 64}
    splits = {s: set(task.classes(s)) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [21, 3, 6]
    assert not splits["train"] & splits["test"] and not splits["val"] & (splits["train"] | splits["test"])
    batch = task.sample(4, generator=gen(0), split="test")
    assert batch.support_x.shape == (4, 3, 1, 8, 8) and batch.query_x.shape == (4, 15, 1, 8, 8)
    assert batch.support_y.dtype == torch.int64
    for t in range(4):
        x = torch.cat([batch.support_x[t], batch.query_x[t]])
        y = torch.cat([batch.support_y[t], batch.query_y[t]])
        label_of = {}
        for im, lab in zip(x, y.tolist()):
            folder = lookup[as_bytes(im[0])]  # the exact stored pixels
            assert folder.name in splits["test"]
            assert label_of.setdefault(folder, lab) == lab
        assert len(label_of) == 3
    # same generator state, fresh instance -> same batch; another seed -> another batch
    again = ImageFolder(root=str(root), image_size=8, ways=3, query=5)
    assert_same(again.sample(4, generator=gen(0), split="test"), batch)
    assert_differs(again.sample(4, generator=gen(1), split="test"), batch)
    # a different split seed moves classes between splits
    other = ImageFolder(root=str(root), image_size=8, ways=3, query=5, split_seed=2)
    assert set(other.classes("test")) != splits["test"]
    # invert
    inv = ImageFolder(root=str(root), image_size=8, ways=3, query=5, invert=True)
    assert torch.allclose(inv.sample(4, generator=gen(0), split="test").support_x, 1 - batch.support_x)


def test_image_folder_resize_and_rotations(flat_root) -> None:
    root, _ = flat_root
    task = ImageFolder(root=str(root), image_size=5, ways=2, query=3, rotations=True)
    assert task.pool("val").num_classes == 12  # 3 classes x 4 rotations
    batch = task.sample(3, generator=gen(0), split="val")
    assert batch.support_x.shape == (3, 2, 1, 5, 5)
    assert batch.support_x.min() >= 0 and batch.support_x.max() <= 1


def test_image_folder_omniglot_depth_and_sizes(tmp_path: Path) -> None:
    rng, lookup = np.random.default_rng(1), {}
    for a in range(3):
        for c in range(4):
            write_images(tmp_path / "omniglot" / f"alphabet{a}" / f"character{c:02d}", 4, rng, lookup)
    root = tmp_path / "omniglot"
    task = ImageFolder(root=str(root), depth=2, ways=2, shots=1, query=3, image_size=8, split_sizes=(6, 3, 3))
    names = {s: task.classes(s) for s in ("train", "val", "test")}
    assert [len(v) for v in names.values()] == [6, 3, 3]
    assert all(n.count("/") == 1 for v in names.values() for n in v)
    assert len(set().union(*map(set, names.values()))) == 12
    batch = task.sample(2, generator=gen(0))
    for im in batch.query_x.flatten(0, 1):
        assert lookup[as_bytes(im[0])].relative_to(root).as_posix() in names["train"]
    # depth 1 on the nested layout finds "classes" without images
    with pytest.raises(ConfigError, match=r"task.shots.*alphabet\d: 0 images.*depth"):
        build_task({"name": "image_folder", "root": str(root), "ways": 2, "query": 3})
    with pytest.raises(ConfigError, match="task.split_sizes"):
        build_task({"name": "image_folder", "root": str(root), "depth": 2, "ways": 2, "query": 3,
                    "split_sizes": [10, 2, 2]})


def test_image_folder_split_dirs_rgb(tmp_path: Path) -> None:
    rng, lookup = np.random.default_rng(2), {}
    layout = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07"]}
    for split, classes in layout.items():
        for c in classes:
            write_images(tmp_path / "mini" / split / c, 5, rng, lookup, size=12, rgb=True)
    root = tmp_path / "mini"
    task = build_task({"name": "image_folder", "root": str(root), "layout": "split_dirs", "grayscale": False,
                       "image_size": 8, "ways": 2, "shots": 2, "query": 2})
    assert task.input_shape == (3, 8, 8)
    assert task.default_backbone() == {"name": "conv4", "channels": 32}
    for split, classes in layout.items():
        assert task.classes(split) == tuple(f"{split}/{c}" for c in classes)
        batch = task.sample(3, generator=gen(0), split=split)
        assert batch.support_x.shape == (3, 4, 3, 8, 8)
    # exact pixels survive when no resize is needed
    exact = ImageFolder(root=str(root), layout="split_dirs", grayscale=False, image_size=12, ways=2, query=2)
    im = exact.sample(1, generator=gen(0), split="test").support_x[0, 0]
    key = (im.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy().tobytes()
    assert lookup[key] in layout["test"]
    # a missing split folder
    (root / "val").rename(root / "valid")
    with pytest.raises(ConfigError, match=r"task.root.*val"):
        build_task({"name": "image_folder", "root": str(root), "layout": "split_dirs", "ways": 2, "query": 2})


def test_image_folder_errors(flat_root, tmp_path: Path) -> None:
    root, _ = flat_root
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=rf"'task.root'.*{missing.name}: no such directory"):
        build_task({"name": "image_folder", "root": str(missing)})
    with pytest.raises(ConfigError, match="'task.root'"):
        build_task({"name": "image_folder"})
    with pytest.raises(ConfigError, match=r"'task.ways'.*val split has 3 classes"):
        build_task({"name": "image_folder", "root": str(root), "ways": 4, "query": 3,
                    "split": [0.8, 0.1, 0.1]})
    with pytest.raises(ConfigError, match=r"'task.shots'.*class\d\d: 6 images"):
        build_task({"name": "image_folder", "root": str(root), "ways": 2, "shots": 5, "query": 5})
    with pytest.raises(ConfigError, match="'task.split'"):
        build_task({"name": "image_folder", "root": str(root), "split": [0.8, 0.3, 0.1]})
    with pytest.raises(ConfigError, match="'task.depth'"):
        build_task({"name": "image_folder", "root": str(root), "depth": 3})
    # an unreadable image is reported with its path when the split is loaded
    task = ImageFolder(root=str(root), ways=2, query=3, image_size=8)
    bad = root / task.classes("test")[0] / "000.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=rf"{task.classes('test')[0]}/000.png: cannot read the image"):
        task.sample(1, generator=gen(0), split="test")


# ---------------------------------------------------------------------------------------------
# MNIST IDX files
# ---------------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}[array.dtype]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_mnist(root: Path, *, gz: bool = False, per_class: tuple[int, int] = (20, 6), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lookup = {}
    for part, n in zip(("train", "t10k"), per_class):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n)
        rng.shuffle(labels)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        for i, (im, lab) in enumerate(zip(images, labels)):
            lookup[im.tobytes()] = (part, int(lab), i)
        for kind, arr in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            if gz:
                (root / f"{part}-{kind}.gz").write_bytes(gzip.compress(data))
            else:
                (root / f"{part}-{kind}").write_bytes(data)
    return lookup


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_loads_idx(tmp_path: Path, gz: bool) -> None:
    lookup = write_mnist(tmp_path / "mnist", gz=gz)
    task = build_task({"name": "mnist", "root": str(tmp_path / "mnist"), "query": 1})
    assert (task.ways, task.shots, task.query) == (2, 1, 1)
    assert task.input_shape == (1, 28, 28) and task.output_dim == 2
    assert task.default_backbone() == {"name": "digits_conv"}
    splits = {}
    for split, part in (("train", "train"), ("val", "train"), ("test", "t10k")):
        batch = task.sample(40, generator=gen(0), split=split)
        assert batch.support_x.shape == (40, 2, 1, 28, 28) and batch.query_x.shape == (40, 2, 1, 28, 28)
        assert batch.support_y.dtype == torch.int64 and batch.support_x.dtype == torch.float32
        rows, maps = set(), set()
        for t in range(40):
            x = torch.cat([batch.support_x[t], batch.query_x[t]])
            y = torch.cat([batch.support_y[t], batch.query_y[t]])
            label_of = {}
            for im, lab in zip(x, y.tolist()):
                src, digit, row = lookup[as_bytes(im[0])]
                assert src == part
                rows.add(row)
                assert label_of.setdefault(digit, lab) == lab
            maps.add(tuple(sorted(label_of.items())))
        splits[split] = rows
        assert any(m[0][1] == 1 for m in maps) and any(m[0][1] == 0 for m in maps)  # labels flip
    assert not splits["train"] & splits["val"]
    part, val_rows = task.indices("val")
    assert part == "train" and len(val_rows) == 20  # 10 % of each digit's 20 images
    assert set(val_rows.tolist()).isdisjoint(task.indices("train")[1].tolist())
    fresh = MNIST(root=str(tmp_path / "mnist"), query=1)
    assert_same(task.sample(3, generator=gen(4)), fresh.sample(3, generator=gen(4)))


def test_mnist_corrupt_files(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_mnist(root)
    images = root / "train-images-idx3-ubyte"
    good = images.read_bytes()

    images.write_bytes(good[:5000])
    with pytest.raises(ConfigError, match=r"'task.root'.*train-images-idx3-ubyte: truncated IDX file"):
        build_task({"name": "mnist", "root": str(root), "query": 1})
    images.write_bytes(good[:10])
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte: truncated IDX file"):
        read_idx(images)
    images.write_bytes(b"\x1f\x8b" + good[2:])
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte: not an IDX file"):
        read_idx(images)
    images.write_bytes(good + b"\0")
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte: corrupt IDX file"):
        read_idx(images)
    images.unlink()
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(good)[:3000])
    with pytest.raises(ConfigError, match=r"train-images-idx3-ubyte.gz: corrupt or truncated gzip"):
        build_task({"name": "mnist", "root": str(root), "query": 1})
    (root / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match=r"'task.root'.*train-images-idx3-ubyte: no such file"):
        build_task({"name": "mnist", "root": str(root), "query": 1})
    (root / "train-images-idx3-ubyte").write_bytes(good)
    (root / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, dtype=np.uint8)))
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte: 7 labels for 60 images"):
        build_task({"name": "mnist", "root": str(root), "query": 1})


def test_mnist_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'task.root'.*no such directory"):
        build_task({"name": "mnist", "root": str(tmp_path / "absent")})
    write_mnist(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"'task.query'.*val split"):
        build_task({"name": "mnist", "root": str(tmp_path / "m")})  # 15 query > 2 val images a digit
    with pytest.raises(ConfigError, match="'task.ways'"):
        build_task({"name": "mnist", "root": str(tmp_path / "m"), "ways": 11, "query": 1})


def test_read_idx_other_types(tmp_path: Path) -> None:
    arr = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    (tmp_path / "x.idx").write_bytes(idx_bytes(arr))
    out = read_idx(tmp_path / "x.idx")
    assert out.shape == (3, 4) and (out == np.arange(-6, 6).reshape(3, 4)).all()


@pytest.mark.parametrize("protocol", ["maml", "metasgd"])
def test_sine_sample_is_the_stream_of_separate_draws(protocol):
    """The one-draw sampler gives exactly the tasks of four separate uniform draws (amplitude,
    phase, frequency, x), as the sampler did before: stored runs and seeds keep their tasks."""
    from metatune.tasks import Sine

    task = Sine(protocol=protocol, shots=7, query=4)
    gen, ref_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(3):
        got = task.sample(5, generator=gen)

        def uniform(shape, lo, hi):
            return torch.rand(shape, generator=ref_gen, dtype=torch.float64) * (hi - lo) + lo

        amp, phase = uniform((5, 1, 1), 0.1, 5.0), uniform((5, 1, 1), 0.0, math.pi)
        freq = uniform((5, 1, 1), 0.8, 1.2) if protocol == "metasgd" else torch.ones((5, 1, 1), dtype=torch.float64)
        x = uniform((5, 11, 1), -5.0, 5.0)
        y = amp * torch.sin(freq * x - phase)
        x, y = x.float(), y.float()
        assert torch.equal(got.support_x, x[:, :7]) and torch.equal(got.query_x, x[:, 7:])
        assert torch.equal(got.support_y, y[:, :7]) and torch.equal(got.query_y, y[:, 7:])


@pytest.mark.parametrize(("name", "settings"), [
    ("sine", {"protocol": "maml"}), ("sine", {"protocol": "metasgd"}), ("polynomial", {}),
])
def test_sample_block_is_consecutive_samples(name, settings):
    """A block of meta-batches (the trainer's training draw) holds exactly the batches of that
    many ``sample`` calls and leaves the generator where they leave it; for a task without a
    vectorised draw the default stacks the calls."""
    task = build_task({"name": name, "shots": 4, **settings})
    gen, ref_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    block = task.sample_block(6, 3, generator=gen)
    for i in range(6):
        want, got = task.sample(3, generator=ref_gen), block[i]
        for part in ("support_x", "support_y", "query_x", "query_y"):
            assert torch.equal(getattr(got, part), getattr(want, part)), (i, part)
            if task.samples_in_blocks:  # the trainer's compiled step then sees the same strides
                assert getattr(got, part).stride() == getattr(want, part).stride()
    assert torch.equal(gen.get_state(), ref_gen.get_state())
    assert task.samples_in_blocks is (name == "sine")


@pytest.mark.parametrize("protocol", ["maml", "metasgd"])
def test_sine_trivial_baseline_is_the_zero_predictor_mse(protocol):
    """The study table's frame: predicting 0 scores E[A^2]/2 = (a^2 + ab + b^2)/6 (4.25 for
    A ~ U[0.1, 5]), checked against the MSE of 0 on 20 000 sampled tasks."""
    from metatune.tasks.sine import Sine

    task = Sine(shots=10, protocol=protocol)
    what, value = task.trivial_baseline()
    assert what == "predicting 0" and value == pytest.approx((0.01 + 0.5 + 25.0) / 6)
    batch = task.sample(20000, generator=torch.Generator().manual_seed(0), split="test")
    sampled = float((batch.query_y.double() ** 2).mean())
    assert sampled == pytest.approx(value, rel=0.03)
    assert Sine(shots=10, phase=(0.0, 1.0)).trivial_baseline() is None  # no closed form claimed
