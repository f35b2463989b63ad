"""Replicates: a configuration trained again with another seed, as a trial of the same study.

A replicate is queued with the params of the trial it replicates and two user attrs,
`replicate_of` (that trial's number) and `replicate_seed` (the training seed it runs with); the
objective trains it with that seed. The dashboard shows replicates as trials like any other; the
sampler never sees them (`WithoutReplicates`), so a configuration measured three times counts once
in its history, as do the arm balance (study.queue_arm), the duplicate check and the dominance
pruner. Which trials get replicates, and how many: confirm.py.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

REPLICATE_OF = "replicate_of"
REPLICATE_SEED = "replicate_seed"
DIVERGED = "NonFiniteLoss"  # the fail_reason of a trial whose loss diverged


def is_replicate(trial: FrozenTrial) -> bool:
    return REPLICATE_OF in trial.user_attrs


def diverged(trial: FrozenTrial) -> bool:
    """A failed replicate whose loss diverged: it measured its seed (the configuration is unstable)."""
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get("fail_reason", "")).startswith(
        DIVERGED
    )


def waiting_replicates(study: optuna.Study) -> int:
    """Replicates queued and not yet started."""
    return sum(is_replicate(t) for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def replicate_seed(trial: FrozenTrial) -> int | None:
    """The training seed a replicate runs with (None for a trial that is not one)."""
    return trial.user_attrs.get(REPLICATE_SEED)


class _StudyWithoutReplicates:
    """The study as a sampler reads it: every trial but the replicates; all else is the study's.

    A pruned trial of a multi-objective study shows no intermediate values: lorasweep records them
    there for the dashboard's learning curves (optuna_private.report), but Optuna's samplers read a
    pruned trial's curve by the study's single direction, which such a study has not (TPE raised
    RuntimeError at its first dominance-pruned trial after the startup trials).
    """

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states: Sequence[TrialState] | None = None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        multi = len(self._study.directions) > 1
        return [_without_curve(t) if multi else t for t in trials if not is_replicate(t)]

    def get_trials(
        self, deepcopy: bool = True, states: Sequence[TrialState] | None = None
    ) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def _without_curve(trial: FrozenTrial) -> FrozenTrial:
    """A pruned trial as a multi-objective study's sampler reads it: without intermediate values."""
    if trial.state != TrialState.PRUNED or not trial.intermediate_values:
        return trial
    shown = copy.copy(trial)  # the study's cached trial stays as it is
    shown.intermediate_values = {}
    return shown


class WithoutReplicates(optuna.samplers.BaseSampler):
    """Optuna's sampler, reading the study without its replicates.

    A replicate repeats a configuration the sampler has seen; shown to TPE it would weigh that
    configuration once per seed, count toward the startup trials and move the split between good
    and bad trials. Replicates run with all their params fixed, so the sampler has nothing to
    draw for them either.
    """

    def __init__(self, sampler: optuna.samplers.BaseSampler) -> None:
        self.sampler = sampler

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if is_replicate(trial):
            return {}
        return self.sampler.infer_relative_search_space(_StudyWithoutReplicates(study), trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return self.sampler.sample_relative(_StudyWithoutReplicates(study), trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.sampler.sample_independent(
            _StudyWithoutReplicates(study), trial, param_name, param_distribution
        )

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(_StudyWithoutReplicates(study), trial)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(_StudyWithoutReplicates(study), trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
