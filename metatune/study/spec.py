"""The study file, in one import: its schema (:mod:`.schema`), the resolved study
(:mod:`.resolved`) and how a file becomes one (:mod:`.resolve`). The trial plan the workers
receive is :mod:`.plan`."""

from __future__ import annotations

from metatune.study.resolve import load_study, open_study, parse_study, warm_start_source
from metatune.study.resolved import Study
from metatune.study.schema import (
    DEFAULT_ROOT,
    FROZEN_FILE,
    TUNE_NAME,
    ResourcesSpec,
    RunExtras,
    SamplerSpec,
    SchedulerSpec,
    StudySpec,
    TableSpec,
    TrackingSpec,
    check_tracking_uri,
    is_uri,
)

__all__ = [
    "DEFAULT_ROOT",
    "FROZEN_FILE",
    "TUNE_NAME",
    "ResourcesSpec",
    "RunExtras",
    "SamplerSpec",
    "SchedulerSpec",
    "Study",
    "StudySpec",
    "TableSpec",
    "TrackingSpec",
    "check_tracking_uri",
    "is_uri",
    "load_study",
    "open_study",
    "parse_study",
    "warm_start_source",
]
