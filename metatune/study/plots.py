"""PNG plots (matplotlib, Agg backend): the study plot (value vs the row axis per learner, log
x, published numbers dashed) and each trial's robustness curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metatune.atomic_files import replacing
from metatune.study.records import TrialRecord, TrialStatus
from metatune.study.replicates import spread
from metatune.study.table import Cell, StudyTable

__all__ = ["study_plot", "trial_plot"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and bool(values)


def _best_plot(table: StudyTable, ax: Any) -> None:
    """``rows: best``: one bar per learner (its best trial, mean ± 95% CI); a curve over a
    single row would be one tick labelled "best"."""
    names, means, errs, labels = [], [], [], []
    for learner in table.learners:
        c = table.cell(table.rows[0], learner) if table.rows else None
        names.append(learner)
        ok = c is not None and c.mean is not None and c.status == TrialStatus.COMPLETED
        means.append(c.mean if ok and c is not None else 0.0)
        errs.append((c.ci95 or 0.0) if ok and c is not None else 0.0)
        labels.append("" if ok else (c.status if c is not None else "pending"))
    bars = ax.bar(range(len(names)), means, yerr=errs, capsize=4, color="tab:blue", alpha=0.8)
    for bar, label in zip(bars, labels):
        if label:
            ax.annotate(str(label), (bar.get_x() + bar.get_width() / 2, 0), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlabel("learner (best trial of each)")


def _best_curves(table: StudyTable, records: Sequence[TrialRecord], ax: Any) -> bool:
    """``rows: best``: each learner's best trial, its test loss against inner steps (the
    adaptation curve; against shots when there is no step curve); False when no trial has one."""
    by_id = {r.trial_id: r for r in records}
    drew = False
    for learner in table.learners:
        cell = table.cell(table.rows[0], learner) if table.rows else None
        ids = (cell.trial_ids or [cell.trial_id]) if cell is not None and cell.trial_id else []
        recs = [by_id[i] for i in ids if i in by_id and by_id[i].curves]
        if len(recs) > 1:  # seed replicates: the mean curve, error bars = the across-seed sd
            xs, ys, es = _mean_curve(recs)
        else:
            curves = recs[0].curves if recs else {}
            ys, es = curves.get("loss_by_step") or [], curves.get("loss_by_step_ci95") or []
            xs = list(range(len(ys)))
            if not [y for y in ys if y is not None]:
                ys, es, xs = curves.get("loss_by_shots") or [], curves.get("loss_by_shots_ci95") or [], curves.get("shots") or []
        pts = [(x, y, e or 0.0) for x, y, e in zip(xs, ys, es or [None] * len(ys)) if y is not None]
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                        label=learner)
            drew = True
    if drew:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        step_curve = any((r.curves or {}).get("loss_by_step") for r in records)
        ax.set_xlabel("inner steps at test time (best trial of each learner)" if step_curve else "shots K")
        ys_all = [y for line in ax.get_lines() for y in line.get_ydata() if y > 0]
        if ys_all and max(ys_all) / min(ys_all) >= 20:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    return drew


def _mean_curve(recs: Sequence[TrialRecord]) -> tuple[list[Any], list[Any], list[Any]]:
    """The seeds' mean adaptation curve (loss vs inner step; vs K when there is none) and the
    across-seed sd at each point."""
    key, xkey = "loss_by_step", None
    if not any(y is not None for r in recs for y in r.curves.get(key) or []):
        key, xkey = "loss_by_shots", "shots"
    length = max(len(r.curves.get(key) or []) for r in recs)
    xs = list(recs[0].curves.get(xkey) or []) if xkey else list(range(length))
    ys: list[Any] = []
    es: list[Any] = []
    for i in range(length):
        sp = spread(((r.curves.get(key) or [None] * length)[i], None) for r in recs if i < len(r.curves.get(key) or []))
        ys.append(sp.mean if sp else None)
        es.append(sp.sd if sp else None)
    return xs, ys, es


def _seed_points(table: StudyTable, cell: Cell, by_id: dict[str, TrialRecord]) -> list[float]:
    """Each seed's own value in a replicated cell (drawn as dots beside the mean)."""
    out = []
    for tid in cell.trial_ids:
        r = by_id.get(tid)
        if r is None:
            continue
        if table.rows_axis == "shots":
            shots = r.curves.get("shots") or []
            vals = r.curves.get("loss_by_shots") or []
            v = next((y for k, y in zip(shots, vals) if str(k) == str(cell.row)), None)
        else:
            v = getattr(r, table.value, None)
        if v is not None:
            out.append(float(v) * table.scale)
    return out


def study_plot(
    table: StudyTable, path: str | Path, *, title: str = "", records: Sequence[TrialRecord] = ()
) -> Path:
    plt = _plt()
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    if table.baseline is not None:  # the frame: what a predictor that learns nothing scores
        ax.axhline(table.baseline[1], linestyle=":", color="gray", label=f"{table.baseline[0]} (trivial)")
    if table.rows_axis == "best":
        if not _best_curves(table, records, ax):
            _best_plot(table, ax)
        ax.set_ylabel(f"{table.value} (mean ± 95% CI)")
        ax.set_title(title or table.title or "study table", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        with replacing(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
        plt.close(fig)
        return path
    numeric = _numeric(table.rows)
    xs_all = sorted(table.rows) if numeric else table.rows
    positions = {(_k(v)): (v if numeric else i) for i, v in enumerate(xs_all)}
    ys_all: list[float] = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    by_id = {r.trial_id: r for r in records}
    seeded = any(c.seeded for c in table.cells.values())
    for i, learner in enumerate(table.learners):
        color = colors[i % len(colors)]
        xs, ys, es, dx = [], [], [], []
        for row in xs_all:
            c = table.cell(row, learner)
            if c.mean is not None and c.status == TrialStatus.COMPLETED:
                xs.append(positions[_k(row)])
                ys.append(c.mean)
                es.append((c.seed_sd if c.seeded else c.ci95) or 0.0)
                if c.seeded:  # the spread itself: one faint dot per seed
                    pts = _seed_points(table, c, by_id)
                    ax.scatter([positions[_k(row)]] * len(pts), pts, s=12, color=color, alpha=0.45, zorder=4)
                    ys_all.extend(pts)
            elif c.status == TrialStatus.DIVERGED:
                dx.append(positions[_k(row)])
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=color, label=learner)
            ys_all.extend(ys)
        if dx:
            ax.scatter(
                dx,
                [0.96] * len(dx),
                marker="x",
                color=color,
                s=60,
                zorder=5,
                label=f"{learner} diverged",
                transform=ax.get_xaxis_transform(),
            )
        if table.published is not None and table.published.key_for(learner) and table.rows_axis != "best":
            cells = [(positions[_k(r)], table.cell(r, learner).published) for r in xs_all]
            pub = [(x, p) for x, p in cells if p is not None]
            if pub:
                ax.plot(
                    [x for x, _ in pub],
                    [p[0] for _, p in pub],
                    linestyle="--",
                    marker=".",
                    color=color,
                    alpha=0.6,
                    label=f"{learner} (published)",
                )
                ys_all.extend(p[0] for _, p in pub)
    if numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 10:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [str(v) for v in xs_all])
    pos = [y for y in ys_all if y > 0]
    if pos and max(pos) / min(pos) >= 20:
        ax.set_yscale("log")
    ax.set_xlabel("test shots K" if table.rows_axis == "shots" else table.rows_axis)
    ax.set_ylabel(f"{table.value} (mean over seeds ± seed sd; dots: seeds)" if seeded else f"{table.value} (mean ± 95% CI)")
    ax.set_title(title or table.title or "study table", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _k(v: Any) -> str:
    return repr(v)


def trial_plot(record: TrialRecord, path: str | Path) -> Path | None:
    """Loss vs K, vs inner steps and vs inner step-size scale, plus the training curve."""
    c = record.curves
    if not c:
        return None
    plt = _plt()
    path = Path(path)
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4), dpi=100)
    train = c.get("train") or {}

    def pts(xs: list[Any], ys: list[Any]) -> tuple[list[Any], list[Any]]:
        pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and x is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    ax = axes[0]
    for key in ("train_loss", "val_loss"):
        if key in train:
            x, y = pts(train.get("iteration", []), train[key])
            if x:
                ax.plot(x, y, marker="." if key == "val_loss" else None, label=key)
    ax.set_title("training", fontsize=9)
    ax.set_xlabel("iteration")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    for ax, (xkey, ykey, ekey, label, logx) in zip(
        axes[1:],
        [
            ("shots", "loss_by_shots", "loss_by_shots_ci95", "K (support size)", False),
            (None, "loss_by_step", "loss_by_step_ci95", "inner steps at test", False),
            ("lr_scales", "loss_by_lr_scale", "loss_by_lr_scale_ci95", "inner step-size scale", True),
        ],
    ):
        ys = c.get(ykey) or []
        xs = c.get(xkey) if xkey else list(range(len(ys)))
        es = c.get(ekey) or [0.0] * len(ys)
        trip = [(x, y, e or 0.0) for x, y, e in zip(xs or [], ys, es) if y is not None]
        if trip:
            ax.errorbar(
                [t[0] for t in trip], [t[1] for t in trip], yerr=[t[2] for t in trip], marker="o", capsize=2
            )
        if logx and trip and min(t[0] for t in trip) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_title(f"test loss vs {label.split(' (')[0]}", fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{record.name}: {record.status}", fontsize=10)
    fig.tight_layout()
    with replacing(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
