"""The learner contract as a pytest test class, for a plugin's own test suite (the way
``optuna.testing`` ships its sampler tests)::

    import pytest
    from metatune.testing import LearnerCase
    from metatune.testing.pytest_learners import LearnerContractTests

    class TestANIL(LearnerContractTests):
        @pytest.fixture
        def case(self) -> LearnerCase:
            return LearnerCase(learner="anil", reference=anil_reference)

The class name does not start with ``Test``, so pytest collects only the subclasses.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from metatune.testing.learner_contract import (
    LearnerCase,
    check_checkpoint_round_trip,
    check_finite_loss_guard,
    check_first_order_differs,
    check_meta_gradient,
    check_seeded_determinism,
)

__all__ = ["LearnerContractTests"]


class LearnerContractTests:
    """Subclass it and define a ``case`` fixture returning the :class:`LearnerCase` (a
    parametrised fixture checks several learners)."""

    @pytest.fixture
    def case(self) -> LearnerCase:
        raise NotImplementedError("define a `case` fixture returning a metatune.testing.LearnerCase")

    @pytest.mark.parametrize("steps", [1, 3])
    @pytest.mark.parametrize("first_order", [False, True])
    def test_meta_gradient_matches_per_task_reference(
        self, case: LearnerCase, steps: int, first_order: bool,
    ) -> None:
        check_meta_gradient(case, steps=steps, first_order=first_order)

    def test_first_order_differs_from_second_order(self, case: LearnerCase) -> None:
        check_first_order_differs(case)

    def test_seeded_determinism(self, case: LearnerCase) -> None:
        check_seeded_determinism(case)

    def test_finite_loss_guard(self, case: LearnerCase) -> None:
        check_finite_loss_guard(case)

    def test_checkpoint_round_trip(self, case: LearnerCase, tmp_path: Path) -> None:
        check_checkpoint_round_trip(case, folder=tmp_path)
