"""Trivial baselines on the study's own test tasks, against hand computations per task."""

from __future__ import annotations

import math

import pytest
import torch

from metatune.baselines import trivial_baselines
from metatune.evaluate import heldout_tasks
from metatune.tasks import build_task


def test_regression_baselines_match_a_per_task_loop_and_the_closed_form():
    task = build_task({"name": "sine", "protocol": "metasgd", "shots": 10})
    zero, mean = trivial_baselines(task, tasks=600, shots=10, seed=1)
    batch = heldout_tasks(task, 600, seed=1, shots=10)
    by_task_zero, by_task_mean = [], []
    for i in range(600):  # the reference: one task at a time, in float64
        qy = batch.query_y[i].double()
        by_task_zero.append(float((qy**2).mean()))
        by_task_mean.append(float(((qy - batch.support_y[i].double().mean()) ** 2).mean()))
    assert zero.name == "predicting 0" and zero.loss == pytest.approx(sum(by_task_zero) / 600, rel=1e-5)
    assert mean.loss == pytest.approx(sum(by_task_mean) / 600, rel=1e-5)
    # 600 tasks of the zero predictor sit near the closed form E[A^2]/2 = 4.25 (sampling noise only).
    assert zero.loss == pytest.approx(task.trivial_baseline()[1], rel=0.05)
    # Another held-out stream gives other tasks, so another number: the baseline is of these tasks.
    assert trivial_baselines(task, tasks=600, shots=10, seed=2)[0].loss != zero.loss


def test_classification_baseline_is_chance():
    task = build_task({"name": "digits", "ways": 5, "shots": 1})
    [chance] = trivial_baselines(task, tasks=20, shots=1, seed=1)
    assert chance.loss == pytest.approx(math.log(5), rel=1e-6) and chance.accuracy == pytest.approx(0.2)
    binary = build_task({"name": "avg_threshold", "shots": 10})
    [coin] = trivial_baselines(binary, tasks=20, shots=10, seed=1)
    assert coin.loss == pytest.approx(math.log(2), rel=1e-6) and coin.accuracy == 0.5
    # loss_reduction: sum (Wormhole eq. 8) sums over the 10 query points.
    [summed] = trivial_baselines(binary, tasks=20, shots=10, seed=1, reduction="sum")
    assert summed.loss == pytest.approx(10 * math.log(2), rel=1e-6)
    assert torch.get_default_dtype() == torch.float32
