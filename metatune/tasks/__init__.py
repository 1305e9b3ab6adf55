"""Task distributions; each samples a whole meta-batch as tensors with a task dimension."""

from __future__ import annotations

from typing import Any

from metatune._fields import build
from metatune.registry import Registry
from metatune.tasks.avg_threshold import AvgThreshold
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution
from metatune.tasks.digits import Digits
from metatune.tasks.episodes import ClassPool, EpisodicTask
from metatune.tasks.image_folder import ImageFolder
from metatune.tasks.mnist import MNIST
from metatune.tasks.polynomial import Polynomial
from metatune.tasks.sine import Sine
from metatune.tasks.wavelet import Wavelet

__all__ = [
    "MNIST", "TASKS", "AvgThreshold", "ClassPool", "Digits", "EpisodicTask", "ImageFolder", "Polynomial",
    "Problem", "Sine", "Split", "TaskBatch", "TaskDistribution", "Wavelet", "build_task", "register_task",
]

TASKS: Registry[TaskDistribution] = Registry("task")
register_task = TASKS.register
register_task("sine")(Sine)
register_task("polynomial")(Polynomial)
register_task("avg_threshold")(AvgThreshold)
register_task("wavelet")(Wavelet)
register_task("digits")(Digits)
register_task("image_folder")(ImageFolder)
register_task("mnist")(MNIST)


def build_task(section: dict[str, Any], *, prefix: str = "task") -> TaskDistribution:
    """Make a task distribution from a config section ``{name: ..., <settings>}``."""
    settings = dict(section)
    cls = TASKS.get(settings.pop("name", None), field=f"{prefix}.name")
    return build(cls, settings, prefix=prefix)
