"""Study subcommands of the ``metatune`` CLI (run, resume, status, export, report, ui).

Each command validates its input before Ray or MLflow start; a bad file or field ends with
one line naming the file and field and exit code 2 (the top-level CLI turns ConfigError into
that). STUDY is a study folder, a study YAML, or a study name under ./metatune_results.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metatune.errors import ConfigError
from metatune.study.driver import describe_plan, execute, public_uri, tracker_for
from metatune.study.preflight import check_resources, clear_study_folder, hold_study_lock, writable_folder
from metatune.study.records import TrialStatus
from metatune.study.ui import cmd_ui

if TYPE_CHECKING:
    from metatune.study.resolved import Study

__all__ = ["register_commands"]


def _same_study(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether frozen study ``a`` (read back) and ``b`` (from the file) are the same study. A
    section ``a`` lacks (written before that section existed) matches ``b``'s when that is unset."""
    skip = {"tracking", "workdir"}

    def unset(value: Any) -> bool:
        return value is None or (isinstance(value, dict) and all(unset(v) for v in value.values()))

    keys = (set(a) | set(b)) - skip
    return all(a.get(k) == b.get(k) or (k not in a and unset(b.get(k))) for k in keys)


def cmd_run(args: argparse.Namespace) -> int:
    from metatune.config import read_yaml
    from metatune.study.spec import FROZEN_FILE, is_uri, load_study, warm_start_source

    study = load_study(args.study, storage=args.storage, tracking_uri=args.tracking_uri, overrides=args.set)
    _preflight(study, args)
    warm_start_source(study)  # a missing or mismatched warm-start study: one line, before Ray
    if args.dry_run:
        print(describe_plan(study))
        return 0
    writable_folder(study.dir, "--storage" if args.storage else "storage")
    lock = hold_study_lock(study.dir, study.name, command="run")  # held until this driver exits
    frozen = study.dir / FROZEN_FILE
    resume = False
    if frozen.is_file():
        if args.overwrite:
            if is_uri(study.tune_root):
                raise ConfigError(
                    "--overwrite", f"will not delete remote storage {study.tune_root}; remove it yourself"
                )
            clear_study_folder(study.dir)
        elif _same_study(read_yaml(frozen), study.frozen()):
            print(
                f"study '{study.name}' already exists in {study.dir}: resuming it (--overwrite starts afresh)"
            )
            resume = True
        else:
            raise ConfigError(
                "<study>",
                f"a different study named '{study.name}' already ran in {study.dir}; "
                f"`metatune resume {study.dir}` continues that one, --overwrite deletes it, "
                "or rename this study",
                source=args.study,
            )
    if not resume and study.spec.optuna.storage:
        _fresh_optuna_record(study, overwrite=args.overwrite)
    study.write_frozen()
    try:
        return execute(study, args, resume=resume)
    finally:
        lock.release()


def _fresh_optuna_record(study: Study, *, overwrite: bool) -> None:
    """A new study in a shared Optuna database must not join a record of the same name (another
    study folder's): refused, or deleted with --overwrite."""
    import optuna

    from metatune.study._mlflow import redact_uri
    from metatune.study._ray.storage import open_storage

    url = str(study.spec.optuna.storage)
    storage = open_storage(url)
    try:
        if study.name not in optuna.get_all_study_names(storage):
            return
        if not overwrite:
            raise ConfigError(
                "optuna.storage",
                f"an Optuna study named '{study.name}' already exists in {redact_uri(url)}; rename this "
                "study, resume the folder that owns it, or --overwrite deletes it",
                source=study.source,
            )
        optuna.delete_study(study_name=study.name, storage=storage)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def cmd_resume(args: argparse.Namespace) -> int:
    from metatune.study.spec import open_study

    study = open_study(args.study, tracking_uri=args.tracking_uri)
    _preflight(study, args)
    writable_folder(study.dir, "<study>")
    lock = hold_study_lock(study.dir, study.name, command="resume")
    try:
        if args.tracking_uri:
            study.write_frozen()
        return execute(study, args, resume=True)
    finally:
        lock.release()


def _preflight(study: Study, args: argparse.Namespace) -> None:
    """What can be refused before Ray starts: the driver's options against the study's needs."""
    check_resources(
        cpus_per_trial=study.spec.resources.cpus, gpus_per_trial=study.spec.resources.gpus,
        num_cpus=args.num_cpus, num_gpus=args.num_gpus, address=args.address,
    )


def cmd_status(args: argparse.Namespace) -> int:
    from metatune.study.monitor import format_params, progress_line
    from metatune.study.spec import open_study
    from metatune.study.status_file import read_status

    study = open_study(args.study)
    driver = read_status(study.dir)
    records = _read_records(study)
    print(f"study '{study.name}' in {study.dir}")
    if driver:
        age = time.time() - float(driver.get("updated", 0))
        print(
            f"driver: {driver.get('state')} (pid {driver.get('pid')} on {driver.get('host')}, "
            f"last update {age:.0f} s ago)"
        )
        if driver.get("state") == "running":
            # Tune's stored snapshot lists running trials as pending; the live driver knows better.
            live = driver.get("trials") or {}
            for r in records:
                if r.status == TrialStatus.PENDING and live.get(r.trial_id) == TrialStatus.RUNNING:
                    r.status = TrialStatus.RUNNING
    print(progress_line(study, records, 0.0).split("] ", 1)[1])
    if not records:
        print("no trials in the Tune storage yet")
        return 0
    rows = [("trial", "status", "iteration", study.metric, "test loss", "params")]
    for r in records:
        rows.append(
            (
                r.name,
                r.status + (f"@{r.diverged_at}" if r.diverged_at is not None else ""),
                "" if r.iteration is None else str(r.iteration),
                # A diverged trial has no objective: its penalty is not a value to read.
                "" if r.objective is None or r.status == TrialStatus.DIVERGED else f"{r.objective:.4g}",
                "" if r.test_loss is None else f"{r.test_loss:.4g} ± {r.test_loss_ci95 or 0:.2g}",
                format_params(r),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    left = study.num_trials - sum(r.finished for r in records)
    if left > 0 and not (driver and driver.get("state") == "running"):
        print(f"{left} trial(s) not finished: `metatune resume {study.dir}`")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from metatune.study.export import export_best, summary_table
    from metatune.study.spec import open_study

    study = open_study(args.study)
    if args.top_k < 1:
        raise ConfigError("--top-k", f"expected a positive number, got {args.top_k}")
    records = _read_records(study)
    out = Path(args.out) if args.out else study.best_dir
    exported = export_best(
        records, out, study=study.name, metric=study.metric, mode=study.mode, top_k=args.top_k
    )
    print(summary_table(records, metric=study.metric, mode=study.mode, learners=study.learners))
    print()
    if not exported:
        print("nothing exported: no trial has completed yet")
        return 1
    for e in exported:
        print(
            f"wrote {e.path}  ({e.learner} #{e.rank}, trial {e.record.trial_id}, "
            f"{study.metric} {e.record.objective:.4g})"
        )
    print(f"retrain one alone: metatune train {exported[0].path} --seed 1")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from metatune.study.report import rebuild
    from metatune.study.spec import open_study

    study = open_study(args.study, tracking_uri=args.tracking_uri)
    records = _read_records(study)
    tracker = None if args.no_mlflow else tracker_for(study)
    views, files = rebuild(study, records, tracker=tracker)
    print(f"rebuilt study '{study.name}' from {study.tune_path}: {len(records)} trials")
    print(f"  Parquet: {files['parquet']}\n  table:   {files['md']}\n  plot:    {files['png']}")
    if tracker is not None:
        if views.mlflow_errors:
            print(f"  MLflow:  FAILED ({views.last_error}); run `metatune report` again once it is reachable")
            return 1
        print(
            f"  MLflow:  {public_uri(study)}, experiment '{study.experiment}', "
            f"parent run {tracker.parent_id}"
        )
    return 0


def _read_records(study: Study) -> list[Any]:
    """The study's records from Tune's snapshot, after putting its last good copy back if the
    snapshot is damaged (a disk that filled up). Only while no driver runs: a live driver
    rewrites its snapshot every second, and repairing under it would race it."""
    from metatune.study import _ray
    from metatune.study._ray.snapshot import damage

    if damage(Path(study.tune_path)) is not None:
        try:
            lock = hold_study_lock(study.dir, study.name, command="report")
        except ConfigError:
            pass
        else:
            try:
                repaired = _ray.repair_snapshot(study)
                if repaired:
                    print(repaired)
            finally:
                lock.release()
    return _ray.read_records(study)


def cmd_dashboard(args: argparse.Namespace) -> int:
    """optuna-dashboard on the study's Optuna record (history, importance, slice, contour...)."""
    from metatune.study._ray.storage import OPTUNA_FILE, optuna_storage_url
    from metatune.study.spec import open_study

    study = open_study(args.study or find_default_study())
    if study.spec.optuna.storage is None and not (study.dir / OPTUNA_FILE).is_file():
        raise ConfigError("<study>", f"no Optuna record yet in {study.dir / OPTUNA_FILE} (no trial has started)",
                          source=str(study.dir))
    import optuna_dashboard

    print(f"Optuna dashboard for study '{study.name}' ({study.spec.optuna.storage or study.dir / OPTUNA_FILE}): "
          f"http://{args.host}:{args.port}/dashboard  (Ctrl-C stops it)", flush=True)
    try:
        optuna_dashboard.run_server(optuna_storage_url(study), host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass
    return 0


def find_default_study() -> str:
    from metatune.study.spec import DEFAULT_ROOT, FROZEN_FILE

    found = sorted(p.parent for p in (Path.cwd() / DEFAULT_ROOT).glob(f"*/{FROZEN_FILE}"))
    if len(found) == 1:
        return str(found[0])
    names = ", ".join(p.name for p in found) or "none"
    raise ConfigError("STUDY", f"name the study to show (studies under ./{DEFAULT_ROOT}: {names})")


def _add_exec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address", help="Ray cluster to join ('auto' on a cluster head); default: a private local Ray"
    )
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray instance (default: detected)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (e.g. http://head:5000); default: the study's")
    p.add_argument(
        "--wait-for-node", type=float, default=600.0, metavar="S",
        help="on a cluster: how long to wait for a node that fits one trial (the autoscaler's) before giving up",
    )
    p.add_argument(
        "--no-mlflow", action="store_true", help="do not log to MLflow (`metatune report` can later)"
    )
    p.add_argument(
        "--progress-every", type=float, default=20.0, metavar="S", help="seconds between progress lines"
    )


def register_commands(sub: argparse._SubParsersAction) -> None:
    """Add the study subcommands to the top-level parser."""
    p = sub.add_parser("run", help="run a study (Ray Tune + Optuna + MLflow)")
    p.add_argument("study", help="study YAML (studies/*.yaml)")
    p.add_argument("--storage", help="study folder or s3:// / gs:// URI (default ./metatune_results/<name>)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run of this study first")
    p.add_argument("--dry-run", action="store_true", help="check the study and print its plan; start nothing")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="change one setting of the study file (dotted key, YAML value), e.g. --set training.iterations=2000",
    )
    _add_exec_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("resume", help="finish an interrupted study (no finished trial runs again)")
    p.add_argument("study", help="study folder, study YAML or name")
    _add_exec_options(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="trials done, running, diverged and failed; best so far")
    p.add_argument("study", help="study folder, study YAML or name")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("export", help="write the best run config per learner as YAML for `metatune train`")
    p.add_argument("study", help="study folder, study YAML or name")
    p.add_argument("--top-k", type=int, default=1, help="export the k best configs per learner")
    p.add_argument("--out", help="folder to write to (default <study>/best)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="rebuild MLflow runs, Parquet and the study table from Tune storage")
    p.add_argument("study", help="study folder, study YAML or name")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI to (re)build the runs in; default: the study's"
    )
    p.add_argument("--no-mlflow", action="store_true", help="only the local files")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="serve the MLflow UI of a study on 127.0.0.1")
    p.add_argument("study", nargs="?", help="study folder, study YAML or name (default: the only one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)  # in ui.py

    p = sub.add_parser("dashboard", help="open the study's Optuna record in optuna-dashboard (loopback)")
    p.add_argument("study", nargs="?", help="study folder, study YAML or name (default: the only one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=cmd_dashboard)
