"""The contract every shipped learner passes (float64, fixed noise): meta-gradient equal to
an independent per-task autograd reference, first order differing from second order, seeded
determinism, a finite-loss guard and a checkpoint round trip. The checks are metatune.testing's,
the same a plugin runs on its own learner; the references are tests/reference*.py."""

from __future__ import annotations

import pytest
from contract_settings import settings_for
from reference import REFERENCES

from metatune.learners import LEARNERS, is_shipped
from metatune.testing import LearnerCase, meta_gradients
from metatune.testing.pytest_learners import LearnerContractTests

# Plugins installed in this environment bring their own contract tests.
NAMES = [name for name, cls in sorted(LEARNERS.registered().items()) if is_shipped(cls)]


def case_for(name: str) -> LearnerCase:
    s = settings_for(name)
    return LearnerCase(
        learner=name, reference=REFERENCES[name], task=s["task"], model=s["model"], hparams=s["hparams"],
    )


def gradients(name: str, steps: int, first_order: bool):
    """(loss, grads, reference loss, reference grads) of a shipped learner (test_mtnet reads zeta's)."""
    return meta_gradients(case_for(name), steps=steps, first_order=first_order)


def test_every_learner_has_a_reference():
    missing = [n for n in NAMES if n not in REFERENCES]
    assert not missing, f"learners without an independent reference: {missing}"


class TestShippedLearners(LearnerContractTests):
    @pytest.fixture(params=NAMES)
    def case(self, request: pytest.FixtureRequest) -> LearnerCase:
        return case_for(request.param)
