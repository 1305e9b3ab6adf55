"""The on-disk cache of decoded data sets (metatune/tasks/_array_cache.py): an image folder or an
MNIST split is decoded once per machine and memory-mapped by every later load, in this process or
another; a changed source file, a damaged entry or an unusable cache folder never gives stale data
or an error."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metatune.tasks import MNIST, ClassPool, ImageFolder, _array_cache
from metatune.tasks import image_folder as image_folder_module
from metatune.tasks import mnist as mnist_module
from metatune.tasks.image_folder import load_image

OMNIGLOT = {"depth": 2, "ways": 5, "shots": 1, "query": 5}


def write_omniglot(root: Path, alphabets: int, characters: int, per_class: int, seed: int = 0) -> int:
    """root/alphabetA/characterCC/NN.png, 28x28 grayscale; returns the number of images."""
    rng = np.random.default_rng(seed)
    for a in range(alphabets):
        for c in range(characters):
            folder = root / f"alphabet{a:02d}" / f"character{c:02d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return alphabets * characters * per_class


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> Path:
    """3200 PNGs in the Omniglot layout (160 characters of 20 images)."""
    root = tmp_path_factory.mktemp("omniglot_big") / "omniglot"
    assert write_omniglot(root, 8, 20, 20) == 3200
    return root


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    root = tmp_path / "omniglot"
    write_omniglot(root, 5, 10, 8, seed=1)  # 50 classes: 35 / 5 / 10
    return root


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("METATUNE_DATA_CACHE", str(folder))
    monkeypatch.setattr(_array_cache, "_warned", set())
    return folder


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Every image decode, counted (image_folder looks load_image up at call time)."""
    calls: list[Path] = []

    def counting(path, **kw):
        calls.append(Path(path))
        return load_image(path, **kw)

    monkeypatch.setattr(image_folder_module, "load_image", counting)
    return calls


def reference_pool(task: ImageFolder, split: str) -> ClassPool:
    """The pool exactly as image_folder built it before the cache."""
    classes = task.__dict__["_classes"][split]
    per_class = [torch.stack([load_image(f, size=task.image_size, grayscale=task.grayscale) for f in files])
                 for _, files in classes]
    return ClassPool.from_classes(per_class, [n for n, _ in classes], scale=255.0,
                                  rotations=4 if task.rotations else 1)


def assert_same_pool(a: ClassPool, b: ClassPool) -> None:
    assert a.images.dtype == b.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.offsets, b.offsets)
    assert torch.equal(a.counts, b.counts) and a.names == b.names
    assert (a.scale, a.rotations) == (b.scale, b.rotations)


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.json"))


def n_files(task: ImageFolder, split: str) -> int:
    return sum(len(files) for _, files in task.__dict__["_classes"][split])


CHILD = textwrap.dedent("""
    import json, logging, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from metatune.tasks import image_folder as m
    calls = []
    original = m.load_image
    m.load_image = lambda path, **kw: (calls.append(1), original(path, **kw))[1]
    root, barrier, me = sys.argv[1], sys.argv[2], sys.argv[3]
    if barrier:  # start decoding together with the other child
        Path(barrier, me).touch()
        deadline = time.monotonic() + 60
        while len(list(Path(barrier).iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    start = time.perf_counter()
    task = m.ImageFolder(root=root, **json.loads(sys.argv[4]))
    images = task.pool("train").images
    seconds = time.perf_counter() - start
    print(json.dumps({"calls": len(calls), "seconds": seconds, "shape": list(images.shape),
                      "sum": int(images.sum()), "first": images[0].flatten().tolist()}))
""")


def child(root: Path, barrier: Path | None = None, me: str = "0") -> subprocess.Popen:
    args = [sys.executable, "-c", CHILD, str(root), str(barrier or ""), me, json.dumps(OMNIGLOT)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen) -> tuple[dict, str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------

def test_second_load_maps_instead_of_decoding(big_folder: Path, cache: Path, decodes: list) -> None:
    """(a) + (b) + the timing: 3200 images decoded once; a fresh task object and a fresh process
    map the cache file (no decode, file untouched, a 'memory-mapped' log line)."""
    start = time.perf_counter()
    first = ImageFolder(root=str(big_folder), **OMNIGLOT)
    pools = {s: first.pool(s) for s in ("train", "val", "test")}
    first_s = time.perf_counter() - start
    assert len(decodes) == 3200 and len(entries(cache)) == 3
    npy = {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")}

    start = time.perf_counter()
    again = ImageFolder(root=str(big_folder), **OMNIGLOT)
    pools_again = {s: again.pool(s) for s in ("train", "val", "test")}
    second_s = time.perf_counter() - start
    assert len(decodes) == 3200  # nothing decoded again
    for s in pools:
        assert_same_pool(pools_again[s], pools[s])
        assert_same_pool(pools[s], reference_pool(first, s))
    batch = again.sample(3, generator=torch.Generator().manual_seed(0), split="test")
    ref = ImageFolder(root=str(big_folder), **OMNIGLOT)
    ref.__dict__["_pools"] = {"test": reference_pool(ref, "test")}
    ref_batch = ref.sample(3, generator=torch.Generator().manual_seed(0), split="test")
    assert torch.equal(batch.support_x, ref_batch.support_x) and torch.equal(batch.query_y, ref_batch.query_y)

    out, err = result(child(big_folder))
    assert out["calls"] == 0 and "memory-mapped" in err and "decoded" not in err
    train = pools["train"].images
    assert out["shape"] == list(train.shape) and out["sum"] == int(train.sum())
    assert out["first"] == train[0].flatten().tolist()
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.npy")} == npy
    print(f"\n[array cache] 3200 PNGs 28x28, all three splits: first load (decode) {first_s:.3f} s, "
          f"second load (new task, same process) {second_s:.3f} s; train split "
          f"({n_files(first, 'train')} images) in a fresh process: {out['seconds']:.3f} s")


def test_concurrent_first_loads_decode_once(small_folder: Path, cache: Path, tmp_path: Path) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [child(small_folder, barrier, str(i)) for i in range(2)]
    outs = [result(p)[0] for p in procs]
    n = n_files(ImageFolder(root=str(small_folder), **OMNIGLOT), "train")
    assert sorted(o["calls"] for o in outs) == [0, n]  # one decoded, the other waited and mapped
    assert outs[0]["sum"] == outs[1]["sum"] and outs[0]["first"] == outs[1]["first"]
    assert len(entries(cache)) == 1 and not list(cache.glob("*.tmp"))


def test_settings_and_rgb_resize_are_part_of_the_key(small_folder: Path, cache: Path, decodes: list) -> None:
    gray = ImageFolder(root=str(small_folder), **OMNIGLOT)
    gray.pool("train")
    n = len(decodes)
    for kw in ({"image_size": 12}, {"grayscale": False, "image_size": 20}):
        task = ImageFolder(root=str(small_folder), **OMNIGLOT, **kw)
        pool = task.pool("train")
        assert pool.images.shape[1:] == task.input_shape
        assert_same_pool(pool, reference_pool(task, "train"))
    assert len(decodes) == 3 * n and len(entries(cache)) == 3
    # invert and rotations act after the cache: same entry
    ImageFolder(root=str(small_folder), **OMNIGLOT, invert=True, rotations=True).pool("train")
    assert len(decodes) == 3 * n and len(entries(cache)) == 3


def test_touched_or_edited_file_invalidates(small_folder: Path, cache: Path, decodes: list) -> None:
    """(c)"""
    task = ImageFolder(root=str(small_folder), **OMNIGLOT)
    task.pool("train")
    n = len(decodes)
    name, files = task.__dict__["_classes"]["train"][0]
    st = files[0].stat()
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ImageFolder(root=str(small_folder), **OMNIGLOT).pool("train")
    assert len(decodes) == 2 * n and len(entries(cache)) == 2
    # new pixels are seen
    Image.fromarray(np.full((28, 28), 7, dtype=np.uint8)).save(files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    fresh = ImageFolder(root=str(small_folder), **OMNIGLOT)
    assert bool((fresh.pool("train").images[0] == 7).all())
    assert_same_pool(fresh.pool("train"), reference_pool(fresh, "train"))


@pytest.mark.parametrize("damage", ["truncate_npy", "garble_npy_header", "garble_sidecar", "drop_npy"])
def test_damaged_entry_is_rebuilt(small_folder: Path, cache: Path, decodes: list, caplog,
                                  damage: str) -> None:
    """(d)"""
    task = ImageFolder(root=str(small_folder), **OMNIGLOT)
    pool = task.pool("train")
    # a copy: damaging a mapped file in place is what must never happen to a live entry
    # (truncating it under a mapping is a SIGBUS; the cache itself only ever renames new files in)
    good = ClassPool(pool.images.clone(), pool.offsets, pool.counts, pool.names, pool.scale, pool.rotations)
    del pool, task
    n = len(decodes)
    (npy,), (sidecar,) = cache.glob("*.npy"), entries(cache)
    size = npy.stat().st_size
    if damage == "truncate_npy":
        with open(npy, "r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "garble_npy_header":
        npy.write_bytes(b"\0" * size)
    elif damage == "garble_sidecar":
        sidecar.write_text('{"format": "metatune-arr')
    else:
        npy.unlink()
    with caplog.at_level(logging.INFO, logger=_array_cache.__name__):
        again = ImageFolder(root=str(small_folder), **OMNIGLOT).pool("train")
    assert len(decodes) == 2 * n
    assert_same_pool(again, good)
    assert npy.stat().st_size == size and len(entries(cache)) == 1
    assert damage == "drop_npy" or "damaged" in caplog.text
    ImageFolder(root=str(small_folder), **OMNIGLOT).pool("train")
    assert len(decodes) == 2 * n  # the rebuilt entry is used


def test_unusable_cache_folder_decodes_in_memory(small_folder: Path, tmp_path: Path, monkeypatch,
                                                 decodes: list, caplog) -> None:
    """(e) a cache path below a regular file cannot be created (even by root)"""
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("METATUNE_DATA_CACHE", str(tmp_path / "a_file" / "cache"))
    monkeypatch.setattr(_array_cache, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=_array_cache.__name__):
        tasks = [ImageFolder(root=str(small_folder), **OMNIGLOT) for _ in range(2)]
        pools = [t.pool("train") for t in tasks]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "decoding in memory" in warnings[0].getMessage()
    assert len(decodes) == 2 * n_files(tasks[0], "train")
    assert_same_pool(pools[0], reference_pool(tasks[0], "train"))
    assert_same_pool(pools[1], pools[0])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_cache_folder(small_folder: Path, cache: Path, decodes: list) -> None:
    cache.mkdir()
    cache.chmod(0o555)
    try:
        task = ImageFolder(root=str(small_folder), **OMNIGLOT)
        assert_same_pool(task.pool("train"), reference_pool(task, "train"))
    finally:
        cache.chmod(0o755)


def test_lock_not_creatable(small_folder: Path, cache: Path, monkeypatch, decodes: list, caplog) -> None:
    """A folder that exists but refuses new files (a read-only mount, another user's folder)."""
    class Refused:
        def __init__(self, path: str, **kwargs) -> None:
            self.path = path

        def acquire(self) -> None:
            raise PermissionError(13, "Permission denied", self.path)

    monkeypatch.setattr(_array_cache, "FileLock", Refused)
    with caplog.at_level(logging.WARNING, logger=_array_cache.__name__):
        task = ImageFolder(root=str(small_folder), **OMNIGLOT)
        pool = task.pool("train")
    assert "Permission denied" in caplog.text
    assert_same_pool(pool, reference_pool(task, "train"))
    assert not list(cache.iterdir())


def test_full_disk_while_writing(small_folder: Path, cache: Path, monkeypatch, decodes: list, caplog) -> None:
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_array_cache.np, "save", no_space)
    with caplog.at_level(logging.WARNING, logger=_array_cache.__name__):
        task = ImageFolder(root=str(small_folder), **OMNIGLOT)
        pool = task.pool("train")
    assert "No space left" in caplog.text
    monkeypatch.undo()
    assert_same_pool(pool, reference_pool(task, "train"))
    assert not list(cache.glob("*.npy")) and not list(cache.glob(".*.tmp")) and not entries(cache)


def test_unreadable_image_is_reported_and_not_cached(small_folder: Path, cache: Path) -> None:
    task = ImageFolder(root=str(small_folder), **OMNIGLOT)
    bad = task.__dict__["_classes"]["train"][0][1][0]
    bad.write_bytes(b"not a png")
    with pytest.raises(Exception, match="cannot read the image"):
        task.pool("train")
    assert not entries(cache) and not list(cache.glob("*.npy"))


# ---------------------------------------------------------------------------------------------
# MNIST IDX files
# ---------------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "mnist"
    root.mkdir()
    for part, n in (("train", 300), ("t10k", 60)):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n // 10)
        rng.shuffle(labels)
        write_idx(root / f"{part}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{part}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def idx_reads(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    original = mnist_module.read_idx

    def counting(path, **kw):
        calls.append(Path(path))
        return original(path, **kw)

    monkeypatch.setattr(mnist_module, "read_idx", counting)
    monkeypatch.setattr(mnist_module, "_CACHE", {})  # as in a fresh process
    return calls


def decoded_mnist(root: Path) -> dict[str, np.ndarray]:
    files = mnist_module._FILES.items()
    return {k: mnist_module.read_idx(mnist_module._find(root, stem)) for k, stem in files}


def test_mnist_decoded_once(mnist_root: Path, cache: Path, idx_reads: list, monkeypatch) -> None:
    first = MNIST(root=str(mnist_root), query=1)
    assert len(idx_reads) == 4 and len(entries(cache)) == 1
    monkeypatch.setattr(mnist_module, "_CACHE", {})
    second = MNIST(root=str(mnist_root), query=1)
    assert len(idx_reads) == 4  # mapped, not read
    arrays, reference = mnist_module._load(mnist_root), decoded_mnist(mnist_root)
    assert arrays.keys() == reference.keys()
    for k in reference:
        assert arrays[k].dtype == reference[k].dtype and np.array_equal(arrays[k], reference[k])
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    for split in ("train", "val", "test"):
        a, b = first.sample(4, generator=gen(), split=split), second.sample(4, generator=gen(), split=split)
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    # another process
    code = ("import json, sys; from metatune.tasks import mnist as m; calls = []; r = m.read_idx; "
            "m.read_idx = lambda p, **k: (calls.append(p), r(p, **k))[1]; "
            "a = m._load(m.Path(sys.argv[1])); print(json.dumps([len(calls), int(a['train_images'].sum())]))")
    out = subprocess.run([sys.executable, "-c", code, str(mnist_root)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [0, int(reference["train_images"].sum())]


def test_mnist_touched_file_and_damaged_entry(mnist_root: Path, cache: Path, idx_reads: list,
                                              monkeypatch) -> None:
    MNIST(root=str(mnist_root), query=1)
    before = set(entries(cache))
    labels = mnist_root / "t10k-labels-idx1-ubyte"
    st = labels.stat()
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.setattr(mnist_module, "_CACHE", {})
    MNIST(root=str(mnist_root), query=1)
    assert len(idx_reads) == 8 and len(entries(cache)) == 2
    (sidecar,) = set(entries(cache)) - before
    newest = sidecar.name.removesuffix(".json")
    images = cache / f"{newest}.train_images.npy"
    with open(images, "r+b") as fh:
        fh.truncate(1000)
    monkeypatch.setattr(mnist_module, "_CACHE", {})
    arrays = mnist_module._load(mnist_root)
    assert len(idx_reads) == 12
    assert np.array_equal(arrays["train_images"], decoded_mnist(mnist_root)["train_images"])
