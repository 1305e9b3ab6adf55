"""The ``metatune`` command line.

Every command validates its input first: a bad file or field ends with one line naming the
file and field, exit code 2, and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from metatune.atomic_files import write_atomic
from metatune.errors import CheckpointError, ConfigError

__all__ = ["main"]


def _print_eval(result) -> None:  # noqa: ANN001 - TrainResult
    ev = result.evaluation
    if ev is None:
        print(f"status: {result.status} at iteration {result.diverged_at} "
              f"(last finite loss {result.last_finite_loss})")
        return
    metric = "accuracy" if any(r.accuracy is not None for r in ev.by_shots.values()) else None
    print(f"\npost-adaptation on {ev.tasks} held-out {ev.split} tasks (mean ± 95% CI):")
    print(f"  {'K':>4}  {'steps':>5}  {'loss':>20}" + (f"  {'accuracy':>20}" if metric else ""))
    for k, r in ev.by_shots.items():
        line = f"  {k:>4}  {r.steps:>5}  {str(r.loss):>20}"
        if metric and r.accuracy is not None:
            line += f"  {str(r.accuracy):>20}"
        print(line)
    if len(ev.lr_scale_curve) > 1:
        print("  loss vs inner step-size scale: " + ", ".join(f"x{s:g}: {v}" for s, v in ev.lr_scale_curve.items()))


def cmd_train(args: argparse.Namespace) -> int:
    from metatune.config import parse_config
    from metatune.trial import CHECKPOINT_FILE, Trainer, to_json
    from metatune.yaml_files import read_yaml

    data = read_yaml(args.config)
    if isinstance(data, dict):  # anything else is reported by parse_config
        if args.seed is not None:
            data["seed"] = args.seed
        if args.device is not None:
            data["device"] = args.device
        if args.iterations is not None:
            training = data.get("training") or {}
            if isinstance(training, dict):
                data["training"] = {**training, "iterations": args.iterations}
    components = parse_config(data, source=args.config)
    cfg = components.config
    out = Path(args.output) if args.output else Path("metatune_results") / "train" / f"{Path(args.config).stem}-seed{cfg.seed}"
    ckpt = out / CHECKPOINT_FILE
    if args.resume and ckpt.is_file():
        trainer = Trainer.restore(ckpt, components)
        print(f"resuming from {ckpt} at iteration {trainer.iteration}")
    else:
        try:
            trainer = Trainer(components)
        except ConfigError as exc:  # settings only the machine can refuse (device: cuda without CUDA)
            raise exc.with_source(args.config) from None
    print(f"training {cfg.learner['name']} on {cfg.task['name']} for {cfg.training.iterations} iterations "
          f"(seed {cfg.seed}); output in {out}")
    result = trainer.train(checkpoint_dir=out, progress=not args.no_progress)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "result.json", to_json(result.to_dict()))
    _print_eval(result)
    print(f"\nwall time {result.wall_time_s:.1f} s; results: {out / 'result.json'}")
    return 0


def cmd_learners(args: argparse.Namespace) -> int:
    from metatune.learner_table import learner_rows, markdown_table, plain_table

    rows = learner_rows(args.names or None)
    print(markdown_table(rows) if args.markdown else plain_table(rows), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from metatune.schema import file_schema

    print(json.dumps(file_schema(args.kind), indent=2))
    return 0


def one_line(text: str) -> str:
    """``text`` with non-printable characters (newlines, tabs, NUL, ...) as Python escapes: an
    error is one line even when the file's keys or values hold such characters."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_EXAMPLES = """examples:
  metatune run studies/quickstart.yaml                       # a study on a private local Ray
  metatune run studies/quickstart.yaml --dry-run --set trials=12 --set training.iterations=2000
  metatune status quickstart                                 # done / running / diverged / failed
  metatune resume quickstart                                 # after Ctrl-C, a full disk or a lost node
  metatune ui quickstart                                     # MLflow UI on 127.0.0.1:5000
  metatune dashboard quickstart                              # optuna-dashboard on 127.0.0.1:8080
  metatune train metatune_results/quickstart/best/maml.yaml  # retrain the best config alone
  metatune learners maml mtnet                               # every setting: default, range, symbol
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("metatune")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metatune", description=__doc__.splitlines()[0], epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"metatune {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (and Ray's and MLflow's notices)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one learner from a config file, without Ray")
    p.add_argument("config", help="run config YAML (what `metatune export` writes)")
    p.add_argument("--seed", type=int, help="override the config's seed")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="override the config's device")
    p.add_argument("--iterations", type=int, help="override training.iterations")
    p.add_argument("--output", help="results folder (default metatune_results/train/<config>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the results folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("learners", help="print every learner's settings: default, valid range, search range, symbol")
    p.add_argument("names", nargs="*", help="only these learners (default: all, plugins included)")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (the one in docs/learners.md)")
    p.set_defaults(func=cmd_learners)

    p = sub.add_parser("schema", help="print the JSON Schema of a run config, study file or search space (for editors)")
    p.add_argument("kind", choices=["run", "study", "search-space"])
    p.set_defaults(func=cmd_schema)

    from metatune.study.cli import register_commands

    register_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ConfigError, CheckpointError) as exc:
        print(f"metatune: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metatune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `metatune schema study | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
