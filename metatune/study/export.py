"""``metatune export STUDY``: the best run config per learner (or the top k) as YAML that
``metatune train`` accepts unchanged, and a summary table of the study."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metatune.atomic_files import write_atomic
from metatune.config import parse_config
from metatune.study.records import TrialRecord, TrialStatus, format_params
from metatune.study.replicates import Replicates, group_replicates, seed_of, spread

__all__ = ["Exported", "best_configs", "best_trials", "export_best", "summary_table"]


@dataclass(frozen=True)
class Exported:
    learner: str
    rank: int
    path: Path
    record: TrialRecord


def best_configs(records: Sequence[TrialRecord], *, mode: str, top_k: int = 1) -> dict[str, list[Replicates]]:
    """Configurations per learner with a completed (not diverged) seed, best mean objective
    over their completed seeds first (a configuration is never judged by its luckiest seed)."""
    sign = 1.0 if mode == "min" else -1.0
    out: dict[str, list[tuple[float, Replicates]]] = {}
    for group in group_replicates(records):
        objective = group.objective()
        if objective is not None:
            out.setdefault(group.learner, []).append((sign * objective, group))
    return {k: [g for _, g in sorted(v, key=lambda t: t[0])[:top_k]] for k, v in out.items()}


def best_trials(records: Sequence[TrialRecord], *, mode: str, top_k: int = 1) -> dict[str, list[TrialRecord]]:
    """The trial standing for each best configuration (its lowest completed seed)."""
    return {
        k: [g.representative for g in groups] for k, groups in best_configs(records, mode=mode, top_k=top_k).items()
    }


def _seed_note(group: Replicates) -> str:
    done = sorted(seed_of(t) or 0 for t in group.completed)
    left = len(group.trials) - len(done)
    if len(group.trials) < 2:
        return ""
    return f" (mean over {len(done)} seeds: {', '.join(map(str, done))}" + (f"; {left} not completed)" if left else ")")


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
    for learner, ranked in sorted(best_configs(records, mode=mode, top_k=top_k).items()):
        for rank, group in enumerate(ranked, start=1):
            r = group.representative
            cfg = trainable_config(r)
            parse_config(cfg)  # what `metatune train` will do; a failure here is a bug, not user input
            path = out_dir / (f"{learner}.yaml" if rank == 1 else f"{learner}_rank{rank}.yaml")
            test = spread((t.test_loss, t.test_loss_ci95) for t in group.completed if t.test_loss is not None)
            test_text = f", test loss {test.text(4)}" if test is not None else ""
            replicated = len(group.trials) > 1
            trials = ", ".join(t.trial_id for t in group.completed) if replicated else r.trial_id
            header = (
                f"# Best {learner} config #{rank} of study '{study}' (trial{'s' if replicated else ''} {trials}): "
                f"{metric} {group.objective():.4g}{_seed_note(group)}{test_text}.\n"
                + (f"# The configuration, not a seed: seed {cfg.get('seed')} below is one of its replicates.\n"
                   if replicated else "")
                + f"# Retrain with: metatune train {path}\n"
            )
            write_atomic(path, header + yaml.safe_dump(cfg, sort_keys=False))
            written.append(Exported(learner, rank, path, r))
    return written


def summary_table(records: Sequence[TrialRecord], *, metric: str, mode: str, learners: Sequence[str]) -> str:
    """One line per learner: trials, diverged, best objective, its test loss and config."""
    best = best_configs(records, mode=mode)
    rows = [
        (
            "learner",
            "trials",
            "done",
            "diverged",
            "failed",
            f"best {metric}",
            "test loss (± 95% CI; ± seed sd)",
            "best config",
        )
    ]
    for learner in learners:
        mine = [r for r in records if r.learner == learner]
        g = best.get(learner, [None])[0]
        b = g.representative if g is not None else None
        test = spread((t.test_loss, t.test_loss_ci95) for t in g.completed) if g is not None else None
        obj = g.objective() if g is not None else None
        rows.append(
            (
                learner,
                str(len(mine)),
                str(sum(r.status in (TrialStatus.COMPLETED, TrialStatus.STOPPED) for r in mine)),
                str(sum(r.status == TrialStatus.DIVERGED for r in mine)),
                str(sum(r.status == TrialStatus.ERROR for r in mine)),
                (f"{obj:.4g}" + (f" ({len(g.completed)} seeds)" if g and len(g.trials) > 1 else ""))
                if obj is not None
                else "-",
                test.text(4) if test is not None and test.seeds > 1 else
                (f"{b.test_loss:.4g} ± {b.test_loss_ci95 or 0:.2g}" if b and b.test_loss is not None else "-"),
                format_params(b, seed=False) if b else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
