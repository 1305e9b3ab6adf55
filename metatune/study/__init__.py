"""Hyperparameter studies: a study file -> Ray Tune trials sampled by Optuna -> MLflow runs,
a Parquet row per trial, the study table and exported best configs.

Only :mod:`metatune.study._ray` imports Ray and only :mod:`metatune.study._mlflow` imports
MLflow; the rest is plain Python (and pyarrow / matplotlib for the files).
"""

from __future__ import annotations

from metatune.study.records import TrialRecord
from metatune.study.search_space import Param, SearchSpace, parse_search_space
from metatune.study.spec import Study, StudySpec, load_study, open_study, parse_study

__all__ = [
    "Param",
    "SearchSpace",
    "Study",
    "StudySpec",
    "TrialRecord",
    "load_study",
    "open_study",
    "parse_search_space",
    "parse_study",
]
