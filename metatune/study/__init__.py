"""Hyperparameter studies: a study file -> Ray Tune trials sampled by Optuna -> MLflow runs,
a Parquet row per trial, the study table and exported best configs.

The parts, by responsibility:

- the study file: :mod:`.schema` (its sections), :mod:`.search_space`, :mod:`.resolve` (the
  rules between sections; makes a :class:`~.resolved.Study`), :mod:`.spec` (all in one import);
- :mod:`.plan`: the frozen trial plan the workers receive instead of the study file, with
  :mod:`.param_names` owning how a searched knob is named in a trial config;
- :mod:`.strategies`: the sampler and scheduler registry tables;
- :mod:`.records`: one record per trial, ``TrialStatus`` and the metric names; views of them
  in :mod:`.results` (Parquet), :mod:`.table`, :mod:`.plots`, :mod:`.export`, :mod:`.report`;
- :mod:`.monitor` (live progress) and :mod:`.status_file` (the one owner of status.json);
- adapters: only :mod:`._ray` imports Ray and only :mod:`._mlflow` imports MLflow; importing
  either changes nothing in the environment.
"""

from __future__ import annotations

from metatune.study.plan import TrialPlan
from metatune.study.records import TrialRecord, TrialStatus
from metatune.study.search_space import Param, SearchSpace, parse_search_space
from metatune.study.spec import Study, StudySpec, load_study, open_study, parse_study

__all__ = [
    "Param",
    "SearchSpace",
    "Study",
    "StudySpec",
    "TrialPlan",
    "TrialRecord",
    "TrialStatus",
    "load_study",
    "open_study",
    "parse_search_space",
    "parse_study",
]
