"""Which ``optuna.divergence`` finds a good configuration in fewer trials, on studies/divergence.yaml.

For each encoding (``prune``, ``constraint``, ``fail``, and ``penalty``: what metatune did before,
COMPLETE at the finite penalty) and each sampler seed, an Optuna study with the study file's sampler
(``make_sampler``: TPE, multivariate, constant liar, its start-up trials) asks ``--trials`` trials
one at a time from the study's own search space. A trial's value is the real result of the study's
trainer (``metatune.trial.Trainer`` on the study's run config: validation loss at each report as
intermediate values, the final validation loss as the value, or diverged) told to Optuna through
``metatune.study.divergence``, as the study's searcher does.

Training is cached: each sampled value is snapped to a log grid (``--per-decade`` points per decade,
inside the range), every distinct grid point trains once and its outcome is stored in ``--cache``,
so a rerun costs seconds and the seeds and encodings share the same landscape. Figures: the trial
(1-based) at which a study first reaches ``val_loss <= --threshold``, median and range over seeds
(a study that never does counts as ``--trials + 1``).

    python benchmarks/divergence_encoding.py                          # 20 seeds, 30 trials
    python benchmarks/divergence_encoding.py --seeds 2 --trials 8     # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENCODINGS = ("prune", "constraint", "fail", "penalty")


def snap(value: float, *, low: float, high: float, per_decade: int) -> float:
    """``value`` on the log grid of ``per_decade`` points a decade, kept inside [low, high]."""
    x = round(math.log10(value) * per_decade) / per_decade
    lo, hi = math.ceil(math.log10(low) * per_decade - 1e-9), math.floor(math.log10(high) * per_decade + 1e-9)
    x = min(max(x, lo / per_decade), hi / per_decade)
    return float(f"{10 ** x:.6g}")


class Landscape:
    """The study's real training outcome per grid point, trained on first use and cached on disk."""

    def __init__(self, *, study: Any, cache: Path, per_decade: int) -> None:
        self.study, self.cache, self.per_decade = study, cache, per_decade
        self.entries: dict[str, dict[str, Any]] = json.loads(cache.read_text()) if cache.is_file() else {}
        self.trained_s = 0.0
        self.trained = 0

    def key(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        snapped = dict(params)
        for p in self.study.space.params:
            if p.kind == "float" and p.log and p.name in params:
                snapped[p.name] = snap(params[p.name], low=p.low, high=p.high, per_decade=self.per_decade)
        return ",".join(f"{k}={snapped[k]:g}" for k in sorted(snapped) if k != "learner"), snapped

    def grid(self) -> list[dict[str, Any]]:
        """Every grid point of the study's (single-learner, log-range) space."""
        import itertools

        axes = []
        for p in self.study.space.params:
            lo = math.ceil(math.log10(p.low) * self.per_decade - 1e-9)
            hi = math.floor(math.log10(p.high) * self.per_decade + 1e-9)
            axes.append([(p.name, float(f"{10 ** (i / self.per_decade):.6g}")) for i in range(lo, hi + 1)])
        constants = {"learner": self.study.learners[0]}
        return [{**dict(point), **constants} for point in itertools.product(*axes)]

    def outcome(self, config: dict[str, Any]) -> dict[str, Any]:
        key, snapped = self.key(config)
        if key not in self.entries:
            self.entries[key] = self._train(snapped)
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            self.cache.write_text(json.dumps(self.entries, indent=1, sort_keys=True) + "\n")
        return self.entries[key]

    def _train(self, config: dict[str, Any]) -> dict[str, Any]:
        from metatune.config import parse_config
        from metatune.study.records import finite
        from metatune.trial import Trainer

        start = time.perf_counter()
        trainer = Trainer(parse_config(self.study.run_config_for(config)))
        steps: dict[str, float] = {}

        def report(metrics: dict[str, float], tr: Trainer) -> None:
            value = finite(metrics.get(self.study.metric))
            if value is not None:
                steps[str(tr.iteration)] = value

        result = trainer.train(report=report)
        last = result.history[-1] if result.history else {}
        value = finite(last.get(self.study.metric)) if result.status == "completed" else None
        seconds = time.perf_counter() - start
        self.trained_s += seconds
        self.trained += 1
        print(f"  trained {config}: {result.status}, {self.study.metric} {value}, {seconds:.1f} s", flush=True)
        return {"status": result.status, "value": value, "intermediate": steps, "diverged_at": result.diverged_at,
                "seconds": round(seconds, 2)}


def run_search(*, study: Any, landscape: Landscape, encoding: str, seed: int, trials: int,
               threshold: float) -> dict[str, Any]:
    import optuna

    from metatune.study.divergence import tell_diverged, tell_finished
    from metatune.study.strategies import make_sampler

    spec = study.spec
    sampler = make_sampler(spec.sampler.name, seed=seed, space=study.space, startup_trials=spec.sampler.startup_trials)
    ot = optuna.create_study(direction="minimize" if study.mode == "min" else "maximize", sampler=sampler)
    for point in study.initial_points:
        ot.enqueue_trial(point)
    reached, best, diverged = None, math.inf, 0
    for n in range(1, trials + 1):
        trial = ot.ask()
        constants = study.space(trial) or {}  # the suggest calls: params exist after this
        config = {**trial.params, **constants}
        out = landscape.outcome(config)
        for step, value in sorted(out["intermediate"].items(), key=lambda kv: int(kv[0])):
            trial.report(value, int(step))
        if out["status"] == "diverged":
            diverged += 1
            if encoding == "penalty":
                ot.tell(trial, study.penalty)
            else:
                tell_diverged(ot, trial, encoding=encoding, penalty=study.penalty)
            continue
        value = out["value"] if out["value"] is not None else study.penalty
        tell_finished(ot, trial, encoding=encoding, value=value)
        best = min(best, value)
        if reached is None and value <= threshold:
            reached = n
    return {"encoding": encoding, "seed": seed, "reached_at": reached, "best": best, "diverged": diverged}


def summarize(runs: list[dict[str, Any]], *, trials: int) -> dict[str, Any]:
    at = [r["reached_at"] if r["reached_at"] is not None else trials + 1 for r in runs]
    return {
        "median": statistics.median(at), "min": min(at), "max": max(at),
        "never": sum(r["reached_at"] is None for r in runs),
        "mean_diverged": statistics.mean(r["diverged"] for r in runs),
        "median_best": statistics.median(r["best"] for r in runs),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "divergence.yaml"))
    ap.add_argument("--seeds", type=int, default=20, help="sampler seeds 0..N-1")
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--threshold", type=float, default=4.5, help="val_loss a study must reach")
    ap.add_argument("--per-decade", type=int, default=2)
    ap.add_argument("--fill", action="store_true", help="train every grid point first (and print the landscape)")
    ap.add_argument("--encodings", default=",".join(ENCODINGS))
    ap.add_argument("--cache", default=str(ROOT / "benchmarks" / "results_divergence_landscape.json"))
    ap.add_argument("--json", default=None, help="write the per-seed results here")
    args = ap.parse_args(argv)

    import optuna
    import torch

    from metatune.study.spec import load_study

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(args.study)
    landscape = Landscape(study=study, cache=Path(args.cache), per_decade=args.per_decade)
    start = time.perf_counter()
    if args.fill:
        for point in landscape.grid():
            out = landscape.outcome(point)
            print(f"  {landscape.key(point)[0]}: {out['status']} {out['value']}")
    encodings = [e.strip() for e in args.encodings.split(",")]
    runs = [run_search(study=study, landscape=landscape, encoding=enc, seed=seed, trials=args.trials,
                       threshold=args.threshold)
            for seed in range(args.seeds) for enc in encodings]
    wall = time.perf_counter() - start
    print(f"\nstudy {study.name}: {args.seeds} sampler seeds x {args.trials} trials, threshold "
          f"{study.metric} <= {args.threshold:g}; grid {args.per_decade}/decade, {len(landscape.entries)} points "
          f"cached ({landscape.trained} trained now, {landscape.trained_s:.0f} s); wall {wall:.0f} s")
    print("| encoding | trials to threshold: median | range | never reached | diverged trials (mean) | best (median) |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for enc in encodings if args.seeds else ():
        s = summary[enc] = summarize([r for r in runs if r["encoding"] == enc], trials=args.trials)
        print(f"| {enc} | {s['median']:g} | {s['min']}-{s['max']} | {s['never']}/{args.seeds} | "
              f"{s['mean_diverged']:.1f} | {s['median_best']:.3f} |")
    for enc in encodings if args.seeds else ():
        print(f"  {enc}: reached at " + " ".join(str(r["reached_at"] or "-") for r in runs if r["encoding"] == enc))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "wall_s": wall, "summary": summary,
                                                "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
