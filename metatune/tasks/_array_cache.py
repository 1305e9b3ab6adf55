"""Decoded data sets cached on disk as ``.npy`` files, shared by the processes of a machine.

Why: every trial process builds its own task, and each would otherwise decode the same image
folder (PIL, resize) or gunzip the same MNIST files. :func:`cached_arrays` decodes once into
``<folder>/<key>.<name>.npy``; later loads memory-map those files, so the trials of a node share
the page cache instead of decoding. The key (:func:`source_key`) hashes a format version, the
decode settings and each source file's relative path, size and mtime_ns. A ``filelock`` makes
concurrent first loads decode once; files are written to a temp file and renamed into place; a
JSON sidecar, written last, records each array's shape, dtype and size, and an entry that does
not match it is rebuilt. An unusable folder means decoding in memory (one warning), never an error.

Folder: ``$METATUNE_DATA_CACHE``, else ``$XDG_CACHE_HOME/metatune/arrays`` (default
``~/.cache/metatune/arrays``); delete it to clear the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout

__all__ = ["FORMAT", "cache_dir", "cached_arrays", "source_key"]

log = logging.getLogger(__name__)

FORMAT = "metatune-array-cache-1"
#: How long to wait for another process that is decoding the same data set.
LOCK_TIMEOUT_S = 3600.0
_warned: set[str] = set()


def cache_dir() -> Path:
    """``$METATUNE_DATA_CACHE``, else ``$XDG_CACHE_HOME/metatune/arrays`` (``~/.cache/...``)."""
    if env := os.environ.get("METATUNE_DATA_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "metatune" / "arrays"


def source_key(label: str, root: Path, files: Iterable[Path], settings: Mapping[str, object]) -> str:
    """``<label>-<sha256>`` of the format, ``label``, the resolved ``root``, ``settings`` and, for each
    of ``files`` (under ``root``), its relative path, size and mtime_ns. A file that cannot be
    stat'ed counts as size -1 (decoding it will report the error)."""
    root = Path(root)
    head = [FORMAT, label, str(root.resolve()), dict(settings)]
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    for f in files:
        try:
            st = os.stat(f)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            stamp = "-1\0-1"
        digest.update(f"{Path(f).relative_to(root).as_posix()}\0{stamp}\0".encode())
    return f"{label}-{digest.hexdigest()}"


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]], *,
                  what: str = "") -> dict[str, np.ndarray]:
    """The arrays ``build()`` returns (names are used in file names), decoded at most once per
    ``key`` on this machine. Cached arrays are memory-mapped copy-on-write: the pages are shared
    between processes, the arrays are writable like fresh ones, and the files are never written.
    Errors raised by ``build`` propagate; cache I/O errors only mean decoding in memory."""
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
    except (OSError, RuntimeError) as exc:  # RuntimeError: no home directory
        _warn(os.environ.get("METATUNE_DATA_CACHE") or "~/.cache/metatune/arrays", exc)
        return build()
    if (hit := _open(folder, key)) is not None:
        log.debug("memory-mapped %s from the array cache (%s)", what or key, folder)
        return hit
    lock = FileLock(str(folder / f"{key}.lock"), timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except (OSError, Timeout) as exc:
        _warn(folder, exc)
        return build()
    try:
        if (hit := _open(folder, key)) is not None:  # another process built it while this one waited
            return hit
        start = time.perf_counter()
        arrays = build()
        try:
            _write(folder, key, arrays, what)
        except OSError as exc:
            _warn(folder, exc)
            return arrays
        log.info("decoded %s into the array cache %s in %.1f s", what or key, folder,
                 time.perf_counter() - start)
        return arrays if (hit := _open(folder, key)) is None else hit
    finally:
        lock.release()


def _open(folder: Path, key: str) -> dict[str, np.ndarray] | None:
    """The entry's arrays, or None when it is missing or does not match its sidecar."""
    try:
        meta = json.loads((folder / f"{key}.json").read_text())
        if meta["format"] != FORMAT:
            raise ValueError(f"format {meta['format']!r}")
        out = {}
        for name, info in meta["arrays"].items():
            path = folder / f"{key}.{name}.npy"
            if (size := path.stat().st_size) != info["bytes"]:
                raise ValueError(f"{path.name} has {size} bytes, the sidecar says {info['bytes']}")
            # "c" (copy-on-write, see cached_arrays); an empty region cannot be mapped
            arr = np.load(path, mmap_mode=None if 0 in info["shape"] else "c", allow_pickle=False)
            if [list(arr.shape), arr.dtype.str] != [info["shape"], info["dtype"]]:
                raise ValueError(f"{path.name} holds {arr.dtype.str} {list(arr.shape)}, not {info}")
            out[name] = np.asarray(arr)
        return out
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.info("array cache entry %s is damaged (%s); rebuilding it", folder / key, exc)
        return None


def _write(folder: Path, key: str, arrays: Mapping[str, np.ndarray], what: str) -> None:
    meta: dict = {"format": FORMAT, "source": what, "arrays": {}}
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        target = folder / f"{key}.{name}.npy"
        _replace(target, lambda fh, a=arr: np.save(fh, a, allow_pickle=False))
        size = target.stat().st_size
        meta["arrays"][name] = {"shape": list(arr.shape), "dtype": arr.dtype.str, "bytes": size}
    # the sidecar last: an entry without one is incomplete and is rebuilt
    _replace(folder / f"{key}.json", lambda fh: fh.write(json.dumps(meta, indent=1).encode()))


def _replace(target: Path, write: Callable[..., object]) -> None:
    """Write through a temp file in ``target``'s folder, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _warn(folder: Path | str, exc: BaseException) -> None:
    if str(folder) not in _warned:
        _warned.add(str(folder))
        log.warning("array cache %s is not usable (%s); decoding in memory (set METATUNE_DATA_CACHE "
                    "to a writable folder to share decoded data between processes)", folder, exc)
