"""Task distributions; each samples a whole meta-batch as tensors with a task dimension.

Add a task with one file in this folder: a keyword-only frozen dataclass subclassing
:class:`TaskDistribution`, decorated with ``@register_task("name")``. The package imports every
module here itself; a separate package registers tasks through the ``metatune.tasks``
entry-point group instead (README, "Extending metatune").
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from metatune._fields import build
from metatune.registry import Registry
from metatune.tasks.base import Problem, Split, TaskBatch, TaskDistribution

# The registry exists before any task module is imported, so a module here can import
# ``register_task`` from this package while the package is still initialising.
TASKS: Registry[TaskDistribution] = Registry(
    "task", base=TaskDistribution, entry_point_group="metatune.tasks"
)
register_task = TASKS.register

from metatune.tasks.avg_threshold import AvgThreshold  # noqa: E402
from metatune.tasks.digits import Digits  # noqa: E402
from metatune.tasks.episodes import ClassPool, EpisodicTask  # noqa: E402
from metatune.tasks.image_folder import ImageFolder  # noqa: E402
from metatune.tasks.mnist import MNIST  # noqa: E402
from metatune.tasks.polynomial import Polynomial  # noqa: E402
from metatune.tasks.sine import Sine  # noqa: E402
from metatune.tasks.wavelet import Wavelet  # noqa: E402

__all__ = [
    "MNIST", "TASKS", "AvgThreshold", "ClassPool", "Digits", "EpisodicTask", "ImageFolder", "Polynomial",
    "Problem", "Sine", "Split", "TaskBatch", "TaskDistribution", "Wavelet", "build_task", "register_task",
]

# The modules above predate self-registration; registering the same class again is a no-op.
register_task("sine")(Sine)
register_task("polynomial")(Polynomial)
register_task("avg_threshold")(AvgThreshold)
register_task("wavelet")(Wavelet)
register_task("digits")(Digits)
register_task("image_folder")(ImageFolder)
register_task("mnist")(MNIST)

# Every other module of this folder registers itself on import (``_private`` ones are helpers).
for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
del _module


def build_task(section: dict[str, Any], *, prefix: str = "task") -> TaskDistribution:
    """Make a task distribution from a config section ``{name: ..., <settings>}``."""
    settings = dict(section)
    cls = TASKS.get(settings.pop("name", None), field=f"{prefix}.name")
    return build(cls, settings, prefix=prefix)
