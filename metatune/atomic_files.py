"""Every file metatune writes is written whole or not at all: into a temporary file beside the
target, flushed to disk, then renamed over it. A full or read-only disk, or a kill mid-write,
leaves the previous version in place, never half a file; a failed write removes its temporary
file so it does not hold the space a full disk needs back."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["replacing", "write_atomic"]


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to (by any writer: Parquet, a figure);
    on a clean exit it is synced and renamed over ``path``, on an error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid in the name: two processes writing the same file never share a temporary file.
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(path) as tmp:
        tmp.write_bytes(raw)
    return path


def _sync(path: Path) -> None:
    """Flush ``path`` to the disk before the rename: otherwise a power loss can leave the new
    name pointing at an empty file (ext4, xfs)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
