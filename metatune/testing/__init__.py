"""Test helpers for metatune learners and tasks, for plugin authors as for metatune itself.

- :func:`check_learner` and the ``check_*`` functions: the learner contract (meta-gradient
  against the per-task reference you supply, first vs second order, seeded determinism, the
  divergence guard, the checkpoint round trip) on a :class:`LearnerCase`;
  :class:`metatune.testing.pytest_learners.LearnerContractTests` runs it as pytest tests.
- :func:`per_task_sgd` and :func:`inner_grad`: building blocks for a reference.
- :func:`check_task_shapes`: the task contract.
"""

from __future__ import annotations

from metatune.testing.learner_contract import (
    DEFAULT_HPARAMS,
    DEFAULT_MODEL,
    DEFAULT_TASK,
    LearnerCase,
    build_components,
    check_checkpoint_round_trip,
    check_finite_loss_guard,
    check_first_order_differs,
    check_learner,
    check_meta_gradient,
    check_seeded_determinism,
    meta_gradients,
)
from metatune.testing.references import Reference, inner_grad, per_task_sgd, task_loss
from metatune.testing.tasks import check_task_shapes

__all__ = [
    "DEFAULT_HPARAMS", "DEFAULT_MODEL", "DEFAULT_TASK", "LearnerCase", "Reference", "build_components",
    "check_checkpoint_round_trip", "check_finite_loss_guard", "check_first_order_differs", "check_learner",
    "check_meta_gradient", "check_seeded_determinism", "check_task_shapes", "inner_grad", "meta_gradients",
    "per_task_sgd", "task_loss",
]
