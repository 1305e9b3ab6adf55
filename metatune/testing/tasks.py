"""The task contract: what every task distribution must satisfy, checked from what the task
declares about itself (``problem``, ``input_shape``, ``output_dim``, ``shots``, ``ways``,
``query``, ``default_backbone``), so one check covers every registered task and a plugin's
own task alike. Raises ``AssertionError`` with a message."""

from __future__ import annotations

import torch

from metatune.models import build_backbone
from metatune.tasks.base import TaskBatch, TaskDistribution

__all__ = ["check_task_shapes"]

_PARTS = ("support_x", "support_y", "query_x", "query_y")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssertionError(message)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: TaskBatch, b: TaskBatch) -> bool:
    return all(
        getattr(a, p).dtype == getattr(b, p).dtype and torch.equal(getattr(a, p), getattr(b, p))
        for p in _PARTS
    )


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_task_shapes(task: TaskDistribution, *, num_tasks: int = 3) -> None:
    """Shapes and dtypes of a sampled meta-batch (classification sizes count per class), seeded
    determinism, the ``shots`` override, every split, and the loss, accuracy and default
    backbone on one task's data."""
    name = getattr(task, "name", type(task).__name__)
    per_class = task.problem == "classification"
    ways = int(task.ways) if per_class else 1  # type: ignore[attr-defined]
    x_shape = tuple(task.input_shape)
    y_tail, y_dtype = {
        "regression": ((task.output_dim,), torch.float32),
        "classification": ((), torch.int64),
        "binary": ((), torch.float32),
    }[task.problem]
    k = task.shots * ways
    batch = task.sample(num_tasks, generator=_gen(0))
    q = batch.query_x.shape[1]
    query = getattr(task, "query", None)
    if isinstance(query, int):
        _check(q == query * ways, f"{name}: {q} query points, expected query x ways = {query * ways}")
    for split in ("train", "val", "test"):
        b = task.sample(num_tasks, generator=_gen(0), split=split)
        where = f"{name} ({split} split)"
        _check(_shape(b.support_x) == (num_tasks, k, *x_shape), f"{where}: support_x {_shape(b.support_x)}")
        _check(_shape(b.query_x) == (num_tasks, q, *x_shape), f"{where}: query_x {_shape(b.query_x)}")
        _check(_shape(b.support_y) == (num_tasks, k, *y_tail), f"{where}: support_y {_shape(b.support_y)}")
        _check(_shape(b.query_y) == (num_tasks, q, *y_tail), f"{where}: query_y {_shape(b.query_y)}")
        _check(b.support_x.dtype == b.query_x.dtype == torch.float32, f"{where}: inputs not float32")
        _check(b.support_y.dtype == b.query_y.dtype == y_dtype, f"{where}: targets not {y_dtype}")
        labels = torch.cat([b.support_y, b.query_y], 1)
        if task.problem == "classification":
            in_range = bool(labels.min() >= 0 and labels.max() < task.output_dim)
            _check(in_range, f"{where}: labels outside 0..ways-1")
        elif task.problem == "binary":
            _check(bool(((labels == 0) | (labels == 1)).all()), f"{where}: binary labels outside {{0, 1}}")
    _check(_same(batch, task.sample(num_tasks, generator=_gen(0))), f"{name}: same seed, different batch")
    reseeded = task.sample(num_tasks, generator=_gen(1))
    same_x = torch.equal(batch.support_x, reseeded.support_x) or torch.equal(batch.query_x, reseeded.query_x)
    differs = not same_x
    _check(differs, f"{name}: seeds 0 and 1 give the same inputs")
    # shots overrides the support size only
    other = task.sample(2, generator=_gen(0), shots=3)
    rows = other.support_x.shape[1]
    _check(rows == 3 * ways, f"{name}: shots=3 gives {rows} support rows")
    _check(other.query_x.shape[1] == q, f"{name}: shots=3 changes the query size")
    # the loss and accuracy accept one task's predictions
    pred = torch.zeros(q, task.output_dim)
    _check(bool(torch.isfinite(task.loss(pred, batch.query_y[0]))), f"{name}: non-finite loss")
    acc = task.accuracy(pred, batch.query_y[0])
    _check((acc is None) == (task.problem == "regression"), f"{name}: accuracy {acc!r} ({task.problem} task)")
    backbone = build_backbone(task.default_backbone(), input_shape=x_shape, output_dim=task.output_dim)
    out = backbone.apply(backbone.init_params(generator=_gen(0)), batch.support_x[0])
    _check(_shape(out) == (k, task.output_dim), f"{name}: default backbone outputs {_shape(out)}")
