"""Small validators shared by the task distributions (each raises ConfigError naming the field)."""

from __future__ import annotations

from collections.abc import Sequence

from metatune.errors import ConfigError

__all__ = ["episode_sizes", "interval", "split_counts", "split_fractions"]


def interval(value: Sequence[float], field: str, *, strict: bool = True) -> None:
    """``value`` is a ``(low, high)`` pair with ``low < high`` (``<=`` when not ``strict``)."""
    if len(value) != 2:
        raise ConfigError(field, f"expected a pair [low, high], got {list(value)!r}")
    lo, hi = value
    if lo > hi or (strict and lo == hi):
        raise ConfigError(field, f"expected low < high, got {list(value)!r}")


def split_fractions(value: Sequence[float], field: str) -> None:
    """Three non-negative train/val/test fractions summing to at most 1."""
    if len(value) != 3:
        raise ConfigError(field, f"expected three fractions [train, val, test], got {list(value)!r}")
    if any(v < 0 for v in value):
        raise ConfigError(field, f"fractions must be non-negative, got {list(value)!r}")
    if sum(value) > 1 + 1e-9 or sum(value) <= 0:
        raise ConfigError(field, f"fractions must sum to a positive number at most 1, got {list(value)!r}")


def split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    """Split ``n`` items into train/val/test sizes; when the fractions sum to 1 the test split
    takes the remainder, so no item is dropped by rounding."""
    n_train = round(fractions[0] * n)
    n_val = min(round(fractions[1] * n), n - n_train)
    if abs(sum(fractions) - 1) < 1e-9:
        n_test = n - n_train - n_val
    else:
        n_test = min(round(fractions[2] * n), n - n_train - n_val)
    return n_train, n_val, n_test


def episode_sizes(ways: int, shots: int, query: int) -> None:
    """An N-way K-shot episode needs at least 2 classes and positive support/query sizes."""
    if ways < 2:
        raise ConfigError("ways", f"expected at least 2 classes per task, got {ways}")
    for name, value in (("shots", shots), ("query", query)):
        if value <= 0:
            raise ConfigError(name, f"expected a positive number, got {value!r}")
