"""Every trial as one Parquet row (pyarrow): config, final metrics, curves as list columns,
status and where it diverged. Rebuilt whole from Tune's storage each time, written atomically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from metatune.atomic_files import replacing
from metatune.errors import CheckpointError
from metatune.study.records import TrialRecord, TrialStatus

__all__ = ["read_trials", "trials_table", "write_trials"]

_SCALARS: list[tuple[str, pa.DataType]] = [
    ("trial_id", pa.string()),
    ("learner", pa.string()),
    ("status", pa.string()),
    ("tune_status", pa.string()),
    ("objective", pa.float64()),
    ("iteration", pa.int64()),
    ("val_loss", pa.float64()),
    ("test_loss", pa.float64()),
    ("test_loss_ci95", pa.float64()),
    ("test_accuracy", pa.float64()),
    ("test_accuracy_ci95", pa.float64()),
    ("diverged_at", pa.int64()),
    ("last_finite_loss", pa.float64()),
    ("wall_time_s", pa.float64()),
    ("compiled", pa.bool_()),
    ("compile_graphs", pa.int64()),
    ("compile_cache_hits", pa.int64()),
    ("compile_seconds", pa.float64()),
    ("num_failures", pa.int64()),
    ("error", pa.string()),
]
#: (column, key in record.curves, element type); training curves come from curves["train"].
_CURVES: list[tuple[str, str, pa.DataType]] = [
    ("curve_iteration", "train.iteration", pa.int64()),
    ("curve_train_loss", "train.train_loss", pa.float64()),
    ("curve_val_loss", "train.val_loss", pa.float64()),
    ("shots", "shots", pa.int64()),
    ("loss_by_shots", "loss_by_shots", pa.float64()),
    ("loss_by_shots_ci95", "loss_by_shots_ci95", pa.float64()),
    ("loss_by_step", "loss_by_step", pa.float64()),
    ("loss_by_step_ci95", "loss_by_step_ci95", pa.float64()),
    ("lr_scales", "lr_scales", pa.float64()),
    ("loss_by_lr_scale", "loss_by_lr_scale", pa.float64()),
    ("loss_by_lr_scale_ci95", "loss_by_lr_scale_ci95", pa.float64()),
]


def _curve(record: TrialRecord, key: str) -> list[Any] | None:
    node: Any = record.curves
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return list(node) if isinstance(node, (list, tuple)) else None


def _param_column(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())


def trials_table(records: Sequence[TrialRecord], *, study: str = "", metric: str = "") -> pa.Table:
    cols: dict[str, pa.Array] = {}
    for name, typ in _SCALARS:
        values = [getattr(r, name) for r in records]
        if typ == pa.int64():
            values = [None if v is None else int(v) for v in values]
        elif typ == pa.string():
            values = [None if v is None else str(v) for v in values]  # a TrialStatus as its word
        cols[name] = pa.array(values, type=typ)
    cols["diverged"] = pa.array([r.status == TrialStatus.DIVERGED for r in records], type=pa.bool_())
    names: list[str] = []
    for r in records:
        for k in r.params:
            if k not in names:
                names.append(k)
    for k in names:
        cols[f"param.{k}"] = _param_column([r.params.get(k) for r in records])
    cols["params_json"] = pa.array([json.dumps(r.params, sort_keys=True) for r in records], type=pa.string())
    cols["run_config_json"] = pa.array(
        [json.dumps(r.run_config, sort_keys=True) for r in records], type=pa.string()
    )
    for col, key, typ in _CURVES:
        cols[col] = pa.array([_curve(r, key) for r in records], type=pa.list_(typ))
    table = pa.table(cols)
    meta = {b"metatune.study": study.encode(), b"metatune.metric": metric.encode()}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})


def write_trials(
    records: Sequence[TrialRecord], path: str | Path, *, study: str = "", metric: str = ""
) -> Path:
    path = Path(path)
    with replacing(path) as tmp:
        # Page checksums: without them a flipped bit in a data page reads back as a wrong value.
        pq.write_table(trials_table(records, study=study, metric=metric), tmp, write_page_checksum=True)
    return path


def _schema_problem(schema: pa.Schema) -> str | None:
    """What keeps ``schema`` from being a trials file (missing or mistyped columns), or None."""
    expected = {name: typ for name, typ in _SCALARS}
    expected |= {"diverged": pa.bool_(), "params_json": pa.string(), "run_config_json": pa.string()}
    expected |= {col: pa.list_(typ) for col, _, typ in _CURVES}
    missing = [name for name in expected if name not in schema.names]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        return f"missing columns: {', '.join(missing[:5])}{more}"
    wrong = [
        f"{name} is {schema.field(name).type}, expected {typ}"
        for name, typ in expected.items()
        if not schema.field(name).type.equals(typ)
    ]
    return f"wrong column types: {'; '.join(wrong)}" if wrong else None


def read_trials(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a trials Parquet file; a missing, truncated, damaged or foreign file raises
    CheckpointError naming it, with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: results file not found (run `metatune report` to rebuild it)")
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise CheckpointError(
            f"{path}: unreadable or truncated Parquet file ({reason}); rebuild it with `metatune report`"
        ) from None
    try:
        problem = _schema_problem(table.schema)
    except UnicodeDecodeError:  # a flipped bit in a column name of the footer
        problem = "a column name is not UTF-8 (damaged footer)"
    if problem:
        raise CheckpointError(
            f"{path}: not a metatune trials file ({problem}); rebuild it with `metatune report`"
        )
    return table.to_pylist()
