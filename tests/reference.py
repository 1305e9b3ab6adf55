"""Independent per-task references for every learner: a plain Python loop over tasks with
``torch.autograd.grad(create_graph=not first_order)``, written from the update rules in
algorithms.md, sharing nothing with the vmapped implementation but the backbone's forward.

A new shipped learner registers its reference here; the contract suite fails for a shipped
learner without one. (A plugin's reference lives in the plugin's own tests: metatune.testing.)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from metatune.learners import Learner
from metatune.tasks import TaskBatch
from metatune.testing import Reference, per_task_sgd

REFERENCES: dict[str, Reference] = {}


def reference(*names: str) -> Callable[[Reference], Reference]:
    def deco(fn: Reference) -> Reference:
        for n in names:
            REFERENCES[n] = fn
        return fn

    return deco


@reference("maml", "fomaml")
def maml_reference(learner: Learner, meta: dict, batch: TaskBatch, noise: dict, steps: int) -> Tensor:
    return per_task_sgd(learner, meta, batch, steps, rate=lambda key: learner.hparams["inner_lr"])


@reference("metasgd")
def metasgd_reference(learner: Learner, meta: dict, batch: TaskBatch, noise: dict, steps: int) -> Tensor:
    return per_task_sgd(learner, meta, batch, steps, rate=lambda key: meta["lr/" + key])


# References of the other learner families live beside this file and register on import.
import reference_extra  # noqa: E402,F401
import reference_mtnet  # noqa: E402,F401
