"""MT-net thesis Table 6.1 (sine MSE, trained at K = 10, tested at K = 5/10/20) beside ours.

Reads ``runs/table61_<learner>/result.json`` and the MAML run
``runs/sine_maml_metasgd_protocol/result.json`` (written by ``metatune train``; see
docs/paper_checks/mtnet_table61.md) and prints, per model, the published mean ± 95 % CI and our
600-task test loss after 1 inner step (the training setting) and after 10 steps.

    .venv/bin/python benchmarks/table61.py [--runs runs] [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHOTS = ("5", "10", "20")

#: algorithms.md §9.1 (MAML and Meta-SGD rows as reported by the Meta-SGD paper).
PUBLISHED: dict[str, tuple[str, tuple[tuple[float, float], ...]]] = {
    "maml": ("MAML", ((1.07, 0.11), (0.71, 0.07), (0.50, 0.05))),
    "metasgd": ("Meta-SGD", ((0.88, 0.14), (0.53, 0.09), (0.35, 0.06))),
    "mnet_full": ("M-net-full", ((0.91, 0.09), (0.63, 0.07), (0.38, 0.04))),
    "mnet": ("M-net", ((0.88, 0.09), (0.60, 0.06), (0.41, 0.04))),
    "tnet": ("T-net", ((0.83, 0.08), (0.56, 0.06), (0.38, 0.04))),
    "mtnet_full": ("MT-net-full", ((0.81, 0.08), (0.51, 0.05), (0.35, 0.04))),
    "mtnet": ("MT-net", ((0.76, 0.09), (0.49, 0.05), (0.33, 0.04))),
}

RUN_DIRS = {name: f"table61_{name}" for name in PUBLISHED} | {"maml": "sine_maml_metasgd_protocol"}


def fmt(summary: dict | None) -> str:
    if summary is None:
        return "—"
    if summary.get("nonfinite"):
        return f"diverged ({summary['nonfinite']}/{summary['n']})"
    if summary.get("mean") is None:
        return "—"
    mean, ci = summary["mean"], summary["ci95"]
    if abs(mean) >= 1e4:
        return f"{mean:.2e}"
    return f"{mean:.2f} ± {ci:.2f}"


def load(runs: Path, name: str) -> tuple[str, dict | None]:
    path = runs / RUN_DIRS[name] / "result.json"
    if not path.is_file():
        ckpt = runs / RUN_DIRS[name] / "checkpoint.pt"
        return ("running" if ckpt.exists() or (runs / f"{RUN_DIRS[name]}.log").exists() else "missing"), None
    return "ok", json.loads(path.read_text())


def rows(runs: Path) -> list[list[str]]:
    out = []
    for name, (label, published) in PUBLISHED.items():
        status, result = load(runs, name)
        pub = [f"{m:.2f} ± {c:.2f}" for m, c in published]
        if result is None or result.get("evaluation") is None:
            why = status if result is None else result.get("status", "?")
            out.append([label, *pub, *([why] + ["—"] * 5), "—", "—"])
            continue
        by = result["evaluation"]["by_shots"]
        step1 = [fmt(by[k]["loss_by_step"][1]) if k in by else "—" for k in SHOTS]
        step10 = [fmt(by[k]["loss_by_step"][10]) if k in by and len(by[k]["loss_by_step"]) > 10 else "—"
                  for k in SHOTS]
        stats = by.get("10", {}).get("stats", {})
        mask = (f"{stats['mask_update_fraction']:.2f} / {stats['mask_p_update']:.2f} / "
                f"{stats['mask_p_frozen_thesis']:.2f}") if "mask_p_update" in stats else "—"
        out.append([label, *pub, *step1, *step10, f"{result['wall_time_s'] / 60:.1f}", mask])
    return out


HEADER = ["model", "pub K=5", "pub K=10", "pub K=20", "ours 1 step K=5", "K=10", "K=20",
          "ours 10 steps K=5", "K=10", "K=20", "train min", "mask upd / p_upd / p_frozen(thesis), K=10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args()
    table = rows(args.runs)
    if args.markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for r in table:
            print("| " + " | ".join(r) + " |")
        return
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]
    for r in [HEADER, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
