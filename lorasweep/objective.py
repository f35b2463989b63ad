"""The Optuna objective: sample a config, run the trial, record everything on the trial.

    objective(trial) -> (learn, forget)

Every value `run_trial` returns is stored as a user attr (the resolved config included), and the
intermediate learn values become the trial's intermediate values, so learning curves show in
optuna-dashboard.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna

from lorasweep.config import ConfigError
from lorasweep.search_space import SearchSpace
from lorasweep.train import NonFiniteLoss
from lorasweep.trial import run_trial

# Failures that belong to one configuration, not to the sweep (a diverged loss, a target preset
# the architecture lacks): the trial is recorded as failed with the reason, and the study goes on.
TRIAL_FAILURES = (NonFiniteLoss, ConfigError)


def make_objective(
    space: SearchSpace,
    on_step: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
) -> Callable[[optuna.Trial], tuple[float, float]]:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        try:
            config = space.suggest(trial)
            trial.set_user_attr("method", config.method)
            result = run_trial(
                config, on_step=on_step, on_eval=lambda s, v: report(trial, s, v), cache_dir=cache_dir
            )
        except TRIAL_FAILURES as err:
            trial.set_user_attr("fail_reason", f"{err.__class__.__name__}: {err}")
            raise
        for key, value in result.items():
            if key not in ("learn", "forget"):
                trial.set_user_attr(key, value)
        return result["learn"], result["forget"]

    return objective


def report(trial: optuna.Trial, step: int, value: float) -> None:
    """Record an intermediate value, also in multi-objective studies.

    Optuna 5's `Trial.report` raises for multi-objective studies (they cannot prune), but the
    storage keeps intermediate values for any trial and the dashboard plots them, so write there.
    """
    if len(trial.study.directions) == 1:
        trial.report(value, step)
    else:
        trial.study._storage.set_trial_intermediate_value(trial._trial_id, step, value)
