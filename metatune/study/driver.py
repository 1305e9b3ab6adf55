"""Driving a study's Tune experiment from ``metatune run``/``resume``: start Ray, run or resume
the experiment, keep the views (MLflow, Parquet, table, best configs) in step, and end with a
summary and an exit code (0 done, 1 failed trials or a disk that refused writes, 130 Ctrl-C)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from metatune.errors import ConfigError
from metatune.study.records import TrialStatus

if TYPE_CHECKING:
    from metatune.study._mlflow import Tracker
    from metatune.study.resolved import Study

__all__ = ["describe_plan", "execute", "public_uri", "tracker_for"]


def tracker_for(study: Study) -> Tracker:
    from metatune.study._mlflow import Tracker

    return Tracker(
        study.tracking_uri, study.experiment, study=study.name, artifact_location=study.artifact_location
    )


def public_uri(study: Study) -> str:
    from metatune.study._mlflow import redact_uri

    return redact_uri(study.tracking_uri)


def _ui_hint(study: Study) -> str:
    if study.tracking_uri.startswith("sqlite:"):
        return f"metatune ui {study.dir}    (serves {study.tracking_uri} on http://127.0.0.1:5000)"
    return f"open {public_uri(study)} (experiment '{study.experiment}')"


def execute(study: Study, args: argparse.Namespace, *, resume: bool) -> int:
    from metatune.study import _ray
    from metatune.study.export import export_best, summary_table
    from metatune.study.monitor import StudyMonitor
    from metatune.study.report import Views

    s = study.spec
    print(
        f"study '{study.name}': {study.num_trials} trials of {', '.join(study.learners)} "
        + (f"({study.num_trials // len(s.replicate_seeds)} configurations x {len(s.replicate_seeds)} seeds) "
           if s.replicate_seeds else "")
        + f"(sampler {s.sampler.name}, scheduler {s.scheduler.name}, objective {study.metric} {study.mode}, "
        f"{s.resources.cpus:g} CPU"
        + (f" + {s.resources.gpus:g} GPU" if s.resources.gpus else "")
        + " per trial)"
    )
    print(f"  folder {study.dir}\n  MLflow {public_uri(study)} (experiment '{study.experiment}')")
    if resume:
        repaired = _ray.repair_snapshot(study)  # before Tune reads it: a cut-short snapshot restarts it
        if repaired:
            print(f"  {repaired}")
    views = Views(study, tracker=None if args.no_mlflow else tracker_for(study))
    views.start()
    monitor = StudyMonitor(study, views, interval_s=args.progress_every)
    interrupted, disk_problem = False, None
    local_ray = args.address in (None, "", "local")
    if local_ray and (stopped := _ray.stop_leftover_ray_processes(study.dir)):
        print(f"  stopped {stopped} Ray process(es) left running by an earlier driver of this study")
    try:
        _ray.init_ray(args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus, verbose=args.verbose)
        if local_ray:
            _ray.note_ray_processes(study.dir)
        else:
            _ray.wait_for_a_node_that_fits(
                cpus=s.resources.cpus, gpus=s.resources.gpus, wait_s=args.wait_for_node
            )
        run = _ray.run_study(study, monitor, resume=resume)
        interrupted, disk_problem = run.interrupted, run.disk_problem
    except KeyboardInterrupt:
        interrupted = True
    except _ray.RestoreFailed as exc:
        raise ConfigError(
            "<study>",
            f"Tune could not restore the experiment in {study.tune_path} ({exc}); it would have started "
            "a new one, so nothing was run and nothing changed",
            source=str(study.dir),
        ) from None
    finally:
        _ray.shutdown_ray()
        _ray.forget_ray_processes(study.dir)
    if disk_problem is not None:
        # No views: they live on the same disk. The next resume or report brings them up to date
        # (and closes the MLflow runs this driver leaves open).
        print(
            f"\nstudy stopped: the disk holding {study.dir} refuses writes ({disk_problem}). Nothing "
            f"recorded is lost: free space (or make it writable), then `metatune resume {study.dir}`"
        )
        return 1
    records = _ray.read_records(study)
    for r in records:
        views.trial(r)
    files = views.refresh_study(records)
    finished = len(records) >= study.num_trials and all(r.finished for r in records)
    state = "finished" if finished and not interrupted else "interrupted"
    views.finish("FINISHED" if state == "finished" else "KILLED", records)
    views.write_guarded(monitor.end, records, state)
    exported = views.write_guarded(
        export_best, records, study.best_dir, study=study.name, metric=study.metric, mode=study.mode
    ) or []
    print()
    print(summary_table(records, metric=study.metric, mode=study.mode, learners=study.learners))
    if "md" in files:
        print(f"\nstudy table ({files['md']}):\n")
        print(Path(files["md"]).read_text())
    print("Where to look:")
    print(f"  MLflow UI:    {_ui_hint(study)}")
    print(f"  every trial:  {files.get('parquet', 'not written (see the note below)')}")
    if exported:
        print(f"  best configs: {', '.join(str(e.path) for e in exported)}")
        print(f"                (retrain one alone: metatune train {exported[0].path})")
    else:
        print("  best configs: none yet (no trial completed)")
    if views.write_errors:
        print(
            f"  note: writing the study's files failed {views.write_errors} time(s) ({views.last_write_error}); "
            f"nothing is lost: `metatune report {study.dir}` rewrites them from the Tune storage"
        )
    if views.mlflow_errors:
        print(
            f"  note: MLflow failed {views.mlflow_errors} time(s) ({views.last_error}); "
            f"`metatune report {study.dir}` restores the runs"
        )
    if state != "finished":
        print(f"\nstudy interrupted: `metatune resume {study.dir}` finishes it")
        return 130 if interrupted else 1
    failed = [r for r in records if r.status == TrialStatus.ERROR]
    if failed:
        print(
            f"\n{len(failed)} trial(s) failed ({', '.join(r.name for r in failed)}): "
            f"`metatune resume {study.dir}` retries them from their last checkpoints"
        )
        return 1
    return 0


def describe_plan(study: Study) -> str:
    """What ``metatune run --dry-run`` prints: the trials, what each samples and trains, the
    resources and where it would write; nothing is started or written."""
    s, tr = study.spec, study.spec.training
    lines = [
        f"study '{study.name}' (dry run: nothing started, nothing written)",
        f"  {study.num_trials} trials of {', '.join(study.learners)}; sampler {s.sampler.name}, "
        f"scheduler {s.scheduler.name}, objective {study.metric} ({study.mode})",
        f"  each trial: {tr.iterations} iterations, meta-batch {tr.meta_batch}, outer lr {tr.outer_lr:g} "
        f"({tr.outer_optimizer}), validation every {tr.eval_every}; {s.resources.cpus:g} CPU"
        + (f" + {s.resources.gpus:g} GPU" if s.resources.gpus else ""),
        "  search space:",
    ]
    if s.replicate_seeds:
        lines.insert(2, f"  seed replicates: every configuration trains once per seed {list(s.replicate_seeds)}; "
                        "views show the mean over seeds ± the across-seed sd")
    for learner in study.learners:
        described = []
        for param in study.space.for_learner(learner):
            text = param.describe()
            head, _, shared = text.rpartition(" [")
            # "inner_lr: float [0.003, 0.1] log [maml, metasgd]": the learner list is this line's.
            described.append(head if head and learner in shared else text)
        lines.append(f"    {learner}: " + ("; ".join(described) or "(defaults only)"))
    lines += [
        f"  folder {study.dir} (Tune experiment, trials.parquet, optuna.db, table/, best/)",
        f"  MLflow {public_uri(study)} (experiment '{study.experiment}')",
        f"  Optuna record {study.spec.optuna.storage or study.dir / 'optuna.db'}"
        + (f", warm-started from {study.spec.optuna.warm_start}" if study.spec.optuna.warm_start else ""),
    ]
    return "\n".join(lines)
