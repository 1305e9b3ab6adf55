"""``metatune export STUDY``: the best run config per learner (or the top k) as YAML that
``metatune train`` accepts unchanged, and a summary table of the study."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metatune.atomic_files import write_atomic
from metatune.config import parse_config
from metatune.study.records import TrialRecord, TrialStatus, format_params

__all__ = ["Exported", "best_trials", "export_best", "summary_table"]


@dataclass(frozen=True)
class Exported:
    learner: str
    rank: int
    path: Path
    record: TrialRecord


def best_trials(records: Sequence[TrialRecord], *, mode: str, top_k: int = 1) -> dict[str, list[TrialRecord]]:
    """Completed (not diverged) trials per learner, best objective first."""
    sign = 1.0 if mode == "min" else -1.0
    out: dict[str, list[TrialRecord]] = {}
    for r in records:
        if r.status == TrialStatus.COMPLETED and r.objective is not None and math.isfinite(r.objective):
            out.setdefault(r.learner, []).append(r)
    return {k: sorted(v, key=lambda r: sign * r.objective)[:top_k] for k, v in out.items()}  # type: ignore[operator]


def trainable_config(record: TrialRecord) -> dict[str, Any]:
    """The trial's run config, made to run alone: no GPU share cap, any device."""
    cfg = copy.deepcopy(record.run_config)
    cfg.pop("gpu_memory_fraction", None)
    if cfg.get("device") == "cuda":
        cfg["device"] = "auto"
    return cfg


def export_best(
    records: Sequence[TrialRecord],
    out_dir: str | Path,
    *,
    study: str,
    metric: str,
    mode: str,
    top_k: int = 1,
) -> list[Exported]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Exported] = []
    for learner, ranked in sorted(best_trials(records, mode=mode, top_k=top_k).items()):
        for rank, r in enumerate(ranked, start=1):
            cfg = trainable_config(r)
            parse_config(cfg)  # what `metatune train` will do; a failure here is a bug, not user input
            path = out_dir / (f"{learner}.yaml" if rank == 1 else f"{learner}_rank{rank}.yaml")
            test = (
                f", test loss {r.test_loss:.4g} ± {r.test_loss_ci95 or 0:.2g}"
                if r.test_loss is not None
                else ""
            )
            header = (
                f"# Best {learner} config #{rank} of study '{study}' (trial {r.trial_id}): "
                f"{metric} {r.objective:.4g}{test}.\n"
                f"# Retrain with: metatune train {path}\n"
            )
            write_atomic(path, header + yaml.safe_dump(cfg, sort_keys=False))
            written.append(Exported(learner, rank, path, r))
    return written


def summary_table(records: Sequence[TrialRecord], *, metric: str, mode: str, learners: Sequence[str]) -> str:
    """One line per learner: trials, diverged, best objective, its test loss and config."""
    best = best_trials(records, mode=mode)
    rows = [
        (
            "learner",
            "trials",
            "done",
            "diverged",
            "failed",
            f"best {metric}",
            "test loss (95% CI)",
            "best config",
        )
    ]
    for learner in learners:
        mine = [r for r in records if r.learner == learner]
        b = best.get(learner, [None])[0]
        rows.append(
            (
                learner,
                str(len(mine)),
                str(sum(r.status in (TrialStatus.COMPLETED, TrialStatus.STOPPED) for r in mine)),
                str(sum(r.status == TrialStatus.DIVERGED for r in mine)),
                str(sum(r.status == TrialStatus.ERROR for r in mine)),
                f"{b.objective:.4g}" if b and b.objective is not None else "-",
                f"{b.test_loss:.4g} ± {b.test_loss_ci95 or 0:.2g}" if b and b.test_loss is not None else "-",
                format_params(b) if b else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
