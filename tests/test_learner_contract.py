"""The contract every shipped learner passes (float64, fixed noise): meta-gradient equal to
an independent per-task autograd reference, first order differing from second order, seeded
determinism, a finite-loss guard and a checkpoint round trip. The checks are metatune.testing's,
the same a plugin runs on its own learner; the references are tests/reference*.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from contract_settings import settings_for
from reference import REFERENCES

from metatune.errors import ConfigError
from metatune.learners import LEARNERS, is_shipped
from metatune.testing import LearnerCase, build_components, check_meta_gradient, meta_gradients
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



@pytest.mark.parametrize("name", NAMES)
def test_sum_reduction_matches_the_reference(name):
    """``loss_reduction: sum`` (Wormhole eq. 8) in every learner's inner and outer loss equals
    the reference's sum of per-example losses, meta-gradient included."""
    case = case_for(name)
    check_meta_gradient(dataclasses.replace(case, hparams={**case.hparams, "loss_reduction": "sum"}),
                        steps=2, first_order=False)


def test_sum_reduction_scales_the_reported_loss_and_the_steps():
    """The reported (query) loss is the sum, i.e. query size x the mean reading's, and a sum
    step at alpha is a mean step at support size x alpha."""
    case = case_for("maml")
    k, q = case.task["shots"], case.task["query"]

    def losses(**hp):
        comp = build_components(dataclasses.replace(case, hparams=hp), steps=1)
        gen = torch.Generator().manual_seed(3)
        meta = comp.learner.init_meta_params(generator=gen, dtype=torch.float64)
        batch = comp.task.sample(4, generator=gen).to(dtype=torch.float64)
        return comp.learner.batched(meta, batch, {}, record=True)["loss"]  # [tasks, before/after]

    mean, total = losses(inner_lr=0.01 * k), losses(inner_lr=0.01, loss_reduction="sum")
    assert torch.allclose(total, q * mean, rtol=1e-12, atol=0)
    assert not torch.allclose(mean[:, 0], mean[:, 1])  # the step moved the weights


def test_loss_reduction_is_validated():
    with pytest.raises(ConfigError, match=r"^field 'learner.loss_reduction': expected one of 'mean', 'sum'"):
        build_components(dataclasses.replace(case_for("maml"), hparams={"loss_reduction": "max"}), steps=1)
