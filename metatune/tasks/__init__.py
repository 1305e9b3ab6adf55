"""Task distributions; each samples a whole meta-batch as tensors with a task dimension."""

from __future__ import annotations

from typing import Any

from metatune._fields import build
from metatune.registry import Registry
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution
from metatune.tasks.sine import Sine

__all__ = ["TASKS", "Problem", "Sine", "Split", "TaskBatch", "TaskDistribution", "build_task", "register_task"]

TASKS: Registry[TaskDistribution] = Registry("task")
register_task = TASKS.register
register_task("sine")(Sine)


def build_task(section: dict[str, Any], *, prefix: str = "task") -> TaskDistribution:
    """Make a task distribution from a config section ``{name: ..., <settings>}``."""
    settings = dict(section)
    cls = TASKS.get(settings.pop("name", None), field=f"{prefix}.name")
    return build(cls, settings, prefix=prefix)
