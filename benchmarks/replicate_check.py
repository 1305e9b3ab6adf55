"""Ours against the published numbers, cell by cell, for a seed-replicated study.

Reads a finished study's ``table/study_table.csv`` and prints, per (row, learner): our mean ±
across-seed sd, the published value, whether the published value lies inside our mean ± 2 seed
sd, and the gap in units of the combined 95 % CI (our mean per-seed CI and the published one).

    python benchmarks/replicate_check.py STUDY_DIR [--rows 10 20] [--markdown]
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", type=Path)
    ap.add_argument("--rows", nargs="*", help="only these row values")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = list(csv.DictReader((args.study / "table" / "study_table.csv").open()))
    value = next(k for k in rows[0] if k.endswith("_mean") and not k.startswith("published"))[: -len("_mean")]
    axis = next(iter(rows[0]))
    head = [axis, "learner", "ours (mean ± seed sd)", "seeds", "published", "inside ± 2 sd", "gap / combined CI"]
    out = []
    for r in rows:
        if args.rows and r[axis] not in args.rows:
            continue
        if not r[f"{value}_mean"]:
            continue
        mean, sd = float(r[f"{value}_mean"]), float(r[f"{value}_seed_sd"] or "nan")
        ci = float(r[f"{value}_ci95"] or "nan")
        pub = float(r["published_mean"]) if r["published_mean"] else None
        pub_ci = float(r["published_ci95"]) if r["published_ci95"] else 0.0
        inside = "" if pub is None or math.isnan(sd) else ("yes" if abs(pub - mean) <= 2 * sd else "no")
        combined = math.hypot(ci, pub_ci) if not math.isnan(ci) else float("nan")
        gap = "" if pub is None else f"{(mean - pub) / combined:+.2f}"
        out.append([r[axis], r["learner"], f"{mean:.3f} ± {sd:.3f}", r["seeds"],
                    "" if pub is None else f"{pub:.2f}" + (f" ± {pub_ci:.2f}" if r["published_ci95"] else ""),
                    inside, gap])
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for line in out:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(x) for x in col) for col in zip(head, *out)]
    for line in [head, *out]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))


if __name__ == "__main__":
    main()
