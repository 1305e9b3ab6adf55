"""How a diverged trial (non-finite meta-loss) reaches Optuna: ``optuna.divergence`` in a study file.

- ``prune``: PRUNED. Optuna keeps the last finite validation as its value (none if it diverged
  before the first one); TPE ranks pruned trials below every COMPLETE one, so it learns the region
  is bad without a made-up number on the history plot.
- ``constraint``: COMPLETE at the finite penalty, with the constraint ``diverged = 1`` (> 0:
  infeasible; every other finished trial gets 0). TPE puts infeasible trials below every feasible
  one; ``study.best_trial`` never picks one.
- ``fail``: FAIL. TPE ignores failed trials altogether, so it may sample the region again.

Both the study's searcher and ``benchmarks/divergence_encoding.py`` tell Optuna through here,
so the benchmark measures what a study does. Public Optuna API only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    import optuna

__all__ = ["CONSTRAINT", "DEFAULT_ENCODING", "ENCODINGS", "Encoding", "diverged_trial", "tell_diverged",
           "tell_finished"]

Encoding = Literal["prune", "constraint", "fail"]
ENCODINGS: Final[tuple[str, ...]] = ("prune", "constraint", "fail")
#: The default: found a good configuration in the fewest trials (docs/studies.md, "Divergence").
DEFAULT_ENCODING: Final = "prune"
#: Name of Optuna's constraint under ``constraint``: 1 for a diverged trial, 0 for any other.
CONSTRAINT: Final = "diverged"


def _state(encoding: str) -> optuna.trial.TrialState:
    import optuna  # on use: reading a study file needs no Optuna

    return optuna.trial.TrialState.FAIL if encoding == "fail" else optuna.trial.TrialState.PRUNED


def tell_diverged(
    study: optuna.Study, trial: optuna.Trial, *, encoding: str, penalty: float
) -> optuna.trial.FrozenTrial:
    """Finish the running ``trial`` of ``study`` as diverged."""
    if encoding == "constraint":
        trial.set_constraint(CONSTRAINT, 1.0)  # before tell: the sampler reads it when told
        return study.tell(trial, penalty)
    return study.tell(trial, state=_state(encoding))


def tell_finished(study: optuna.Study, trial: optuna.Trial, *, encoding: str, value: float) -> None:
    """Finish the running ``trial`` as COMPLETE at ``value`` (feasible under ``constraint``)."""
    if encoding == "constraint":
        trial.set_constraint(CONSTRAINT, 0.0)
    study.tell(trial, value)


def diverged_trial(
    *,
    encoding: str,
    params: Mapping[str, Any],
    distributions: Mapping[str, Any],
    penalty: float,
    user_attrs: Mapping[str, Any],
) -> optuna.trial.FrozenTrial:
    """A finished diverged trial to add to a study (a retried trial that diverged this time)."""
    import optuna

    if encoding == "constraint":
        return optuna.trial.create_trial(
            params=dict(params), distributions=dict(distributions), value=penalty,
            user_attrs=dict(user_attrs), constraints={CONSTRAINT: 1.0},
        )
    return optuna.trial.create_trial(
        params=dict(params), distributions=dict(distributions), user_attrs=dict(user_attrs),
        state=_state(encoding),
    )
