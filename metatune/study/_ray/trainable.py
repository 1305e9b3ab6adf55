"""The trainable: one Tune trial trains one run config, reporting at each validation.

The worker receives the study's trial plan (never the study file) and builds only the run
config of its own trial; the history entries between reports go to the driver live (see live)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import tune

from metatune.errors import CheckpointError
from metatune.study._ray.live import LiveSender
from metatune.study._ray.storage import (
    store_final,
    store_latest_checkpoint,
    stored_final,
    stored_latest_checkpoint,
)
from metatune.study.plan import TrialPlan
from metatune.study.records import VAL_ACCURACY, VAL_LOSS, TrialStatus, final_payload, intermediate_payload
from metatune.study.resolved import Study

__all__ = ["StudyTrainable", "make_trainable", "run_trial"]

log = logging.getLogger(__name__)

#: What Tune runs: the trial function with its resources attached.
StudyTrainable = type[tune.Trainable] | Callable[[dict[str, Any]], None]


def run_trial(plan: TrialPlan, config: dict[str, Any], *, live: LiveSender | None = None) -> None:
    """Train one trial (inside a Tune worker)."""
    from metatune.config import parse_config
    from metatune.trial import CHECKPOINT_FILE, Trainer, to_json

    if os.path.isdir(plan.workdir):
        os.chdir(plan.workdir)  # relative task paths resolve as in the driver
    components = parse_config(plan.run_config_for(config))
    stored = stored_final()
    if stored is not None:
        # The trial had finished, but the driver died before Tune's experiment snapshot
        # recorded it (or even before the final result reached the driver): report the stored
        # outcome again instead of training again.
        tune.report({**stored, "replayed": 1.0})
        return
    checkpoint = tune.get_checkpoint()
    trainer = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer = Trainer.restore(Path(d) / CHECKPOINT_FILE, components)
    with tempfile.TemporaryDirectory(prefix="metatune-latest-") as d:
        latest = Path(d) / CHECKPOINT_FILE
        try:
            candidate = Trainer.restore(latest, components) if stored_latest_checkpoint(latest) else None
        except CheckpointError as exc:  # a damaged copy: Tune's own checkpoint still stands
            log.warning("ignoring the trial's latest-checkpoint copy: %s", exc)
            candidate = None
        if candidate is not None and (trainer is None or candidate.iteration > trainer.iteration):
            trainer = candidate  # further on than the checkpoint Tune handed over
    if trainer is None:
        trainer = Trainer(components)

    # History entries not yet reported: a restored trainer's are (the tracker skips logged steps).
    sent = len(trainer.history)

    def report(metrics: dict[str, float], tr: Trainer) -> None:
        nonlocal sent
        if tr.iteration >= components.config.training.iterations:
            # The final report below carries this validation. Sent twice, ASHA would stop the
            # trial at max_t before its test evaluation arrives.
            return
        window, sent = tr.history[sent:], len(tr.history)
        payload = intermediate_payload(metrics, metric=plan.metric, penalty=plan.penalty, window=window)
        with tempfile.TemporaryDirectory(prefix="metatune-ckpt-") as d:
            path = tr.save(Path(d) / CHECKPOINT_FILE)
            store_latest_checkpoint(path.read_bytes())  # before Tune logs the result (see storage)
            tune.report(payload, checkpoint=tune.Checkpoint.from_directory(d))

    result = trainer.train(report=report, on_log=live)
    validation = None
    if result.status == TrialStatus.COMPLETED:
        last = result.history[-1] if result.history else {}
        if last.get("iteration") == result.iterations and VAL_LOSS in last:
            validation = {k: last[k] for k in (VAL_LOSS, f"{VAL_LOSS}_ci95", VAL_ACCURACY) if k in last}
        else:
            validation = trainer.validate()
    payload = final_payload(result.to_dict(), metric=plan.metric, penalty=plan.penalty, validation=validation)
    # Stored before it is reported: Tune records a trial's end (and its latest checkpoint) only
    # at its next experiment snapshot, so a driver killed in between would restart the trial
    # from an earlier checkpoint and train its last stretch again.
    store_final(to_json(payload))
    tune.report(payload)


def make_trainable(study: Study, *, live: LiveSender | None = None) -> StudyTrainable:
    """The study's trainable with its resources; it carries the trial plan (and the live
    training-loss inbox) to the workers."""
    plan = study.plan

    def metatune_trial(config: dict[str, Any]) -> None:
        run_trial(plan, config, live=live)

    res = study.spec.resources
    resources = {"cpu": res.cpus}
    if res.gpus:
        resources["gpu"] = res.gpus
    return tune.with_resources(metatune_trial, resources)
