"""``optuna.divergence``: the study's searcher (Ray's OptunaSearch, our subclass) tells a diverged
trial to Optuna as PRUNED, FAIL or COMPLETE-but-infeasible, never as COMPLETE at the penalty, and
never reports the penalty as an intermediate value. Real searcher on a real SQLite record, fed
the reports a trial sends (no Ray cluster: the end-to-end run is tests/test_reliability_divergence.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from metatune.errors import ConfigError
from metatune.study._ray.searcher import ATTR_OUTCOME, ATTR_RETRY_OF, StudySearch
from metatune.study.divergence import CONSTRAINT, ENCODINGS

PENALTY = 1e6
STATE = optuna.trial.TrialState


def _space(trial: optuna.Trial) -> dict[str, Any]:
    trial.suggest_float("inner_lr", 1e-3, 10.0, log=True)
    return {"learner": "maml"}


def _searcher(tmp_path: Path, encoding: str) -> tuple[StudySearch, str]:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = StudySearch(space=_space, metric="val_loss", mode="min", sampler=optuna.samplers.RandomSampler(seed=0),
                           points_to_evaluate=None, storage_url=url, study_name="enc", divergence=encoding)
    return searcher, url


def _progress(searcher: StudySearch, tid: str, *steps: tuple[int, float]) -> None:
    for it, value in steps:
        searcher.on_trial_result(tid, {"iteration": it, "val_loss": value, "training_iteration": it // 100})


def _final(*, outcome: str, it: int, value: float, **extra: Any) -> dict[str, Any]:
    return {"outcome": outcome, "diverged": float(outcome == "diverged"), "iteration": it, "val_loss": value, **extra}


DIVERGED = _final(outcome="diverged", it=149, value=PENALTY, diverged_at=150, last_finite_loss=3.25)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_diverged_trial_reaches_optuna_as_the_study_file_says(tmp_path, encoding):
    searcher, url = _searcher(tmp_path, encoding)
    for tid in ("good", "bad"):
        assert searcher.suggest(tid) is not None
    _progress(searcher, "good", (100, 4.0), (200, 3.0))
    searcher.on_trial_complete("good", _final(outcome="completed", it=300, value=2.5))
    _progress(searcher, "bad", (100, 5.0))
    searcher.on_trial_complete("bad", DIVERGED)

    good, bad = optuna.load_study(study_name="enc", storage=url).trials
    assert good.state == STATE.COMPLETE and good.value == 2.5
    assert good.intermediate_values == {100: 4.0, 200: 3.0}
    assert bad.intermediate_values == {100: 5.0}  # the penalty at 149 is no validation loss
    assert bad.user_attrs[ATTR_OUTCOME] == "diverged"
    assert bad.user_attrs["metatune.diverged_at"] == 150 and bad.user_attrs["metatune.iteration"] == 149
    assert bad.user_attrs["metatune.last_finite_loss"] == 3.25
    if encoding == "prune":
        assert bad.state == STATE.PRUNED and bad.value == 5.0  # Optuna keeps the last finite validation
    elif encoding == "fail":
        assert bad.state == STATE.FAIL and bad.value is None
    else:
        assert bad.state == STATE.COMPLETE and bad.value == PENALTY
        assert bad.constraints == {CONSTRAINT: 1.0} and good.constraints == {CONSTRAINT: 0.0}
        assert optuna.load_study(study_name="enc", storage=url).best_trial.number == good.number
    assert not (bad.state == STATE.COMPLETE and not bad.constraints)


@pytest.mark.parametrize("encoding", ["prune", "constraint"])
def test_a_retried_trial_that_diverges_is_added_once_and_a_replay_changes_nothing(tmp_path, encoding):
    searcher, url = _searcher(tmp_path, encoding)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", None, error=True)  # the worker died: FAIL, then resume re-runs it
    searcher.on_trial_complete("t1", DIVERGED)  # ... and this time it diverged
    searcher.suggest("t2")
    searcher.on_trial_complete("t2", DIVERGED)
    searcher.on_trial_complete("t2", DIVERGED)  # the stored final report, replayed after a restore
    trials = optuna.load_study(study_name="enc", storage=url).trials
    assert [(t.number, t.user_attrs[ATTR_OUTCOME]) for t in trials] == [(0, "error"), (1, "diverged"),
                                                                         (2, "diverged")]
    assert trials[0].state == STATE.FAIL
    assert trials[1].user_attrs[ATTR_RETRY_OF] == 0 and trials[1].params == trials[0].params
    want = STATE.PRUNED if encoding == "prune" else STATE.COMPLETE
    assert trials[1].state == trials[2].state == want
    if encoding == "constraint":
        assert trials[1].constraints == trials[2].constraints == {CONSTRAINT: 1.0}


def test_a_bad_encoding_names_the_field():
    from metatune.study.resolve import parse_study

    study = {"name": "x", "task": {"name": "sine"}, "learners": ["maml"], "search_space": {"params": {"inner_lr": {}}},
             "optuna": {"divergence": "penalty"}}
    with pytest.raises(ConfigError) as err:
        parse_study(study, source="x.yaml")
    assert "optuna.divergence" in str(err.value) and "'prune', 'constraint', 'fail'" in str(err.value)
