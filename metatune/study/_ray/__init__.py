"""The Ray adapter: the only code that imports Ray.

- :mod:`.trainable` trains one trial in a Tune worker, from the study's trial plan;
- :mod:`.searcher` is Ray's OptunaSearch with a complete Optuna record;
- :mod:`.callback` forwards Tune's trial events to the study's monitor on the driver;
- :mod:`.tuner` builds or restores the Tuner and starts and stops Ray;
- :mod:`.storage` reads and writes what the study keeps in Tune's storage;
- :mod:`.snapshot` keeps the last good copy of Tune's experiment snapshot and puts it back;
- :mod:`.processes` stops the Ray processes a killed driver left behind;
- :mod:`.tune_logs` filters Tune's driver logs and stops a resume that Tune cannot restore;
- :mod:`.trials` turns Tune's trials into study records;
- :mod:`.optuna_seam` holds the two reads of Ray-private Optuna state.

Importing it changes nothing in the environment: Tune's settings are applied when Ray starts
(:func:`init_ray`) or a study runs (:func:`run_study`).
"""

from __future__ import annotations

from metatune.study._ray.callback import StudyCallback
from metatune.study._ray.processes import (
    forget_ray_processes,
    note_ray_processes,
    stop_leftover_ray_processes,
)
from metatune.study._ray.searcher import ATTR_OUTCOME, ATTR_RETRY_OF, ATTR_TUNE_ID, StudyLimiter, StudySearch
from metatune.study._ray.snapshot import repair_snapshot
from metatune.study._ray.storage import can_resume, optuna_trials, prune_checkpoints
from metatune.study._ray.trials import read_records
from metatune.study._ray.tune_logs import RestoreFailed
from metatune.study._ray.tuner import (
    StudyRun,
    build_tuner,
    init_ray,
    run_study,
    shutdown_ray,
    wait_for_a_node_that_fits,
)

__all__ = [
    "ATTR_OUTCOME",
    "ATTR_RETRY_OF",
    "ATTR_TUNE_ID",
    "RestoreFailed",
    "StudyCallback",
    "StudyLimiter",
    "StudyRun",
    "StudySearch",
    "build_tuner",
    "can_resume",
    "forget_ray_processes",
    "init_ray",
    "note_ray_processes",
    "optuna_trials",
    "prune_checkpoints",
    "read_records",
    "repair_snapshot",
    "run_study",
    "shutdown_ray",
    "stop_leftover_ray_processes",
    "wait_for_a_node_that_fits",
]
