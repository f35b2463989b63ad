"""The Optuna objective: sample a config, run the trial, record everything on the trial.

    objective(trial) -> (learn, forget)       # objective: pareto
    objective(trial) -> learn                 # objective: constrained (forget <= tolerance)

Every field of the `TrialResult` that `run_trial` returns is stored as a user attr of the same name
(the resolved config included; a field the trial has no value for is left out), and the
intermediate learn values become the trial's intermediate values, so learning curves show in
optuna-dashboard. With `objective: constrained`, a pruner may stop a trial at an intermediate
evaluation; with `objective: pareto`, the dominance pruner (lorasweep/pruning.py) may. A pruned
trial records the step and the reason.

A configuration the study has already completed is not trained again: a sampler that proposes it
once more (TPE does, often, on a space of choices) gets the trial pruned at step 0 as a duplicate
(`duplicate_of`). Pruned rather than given the earlier result, as Optuna's FAQ advises, so the
sampler moves on instead of proposing it again and again; the earlier trial keeps the result.
A replicate (replicates.py) is that configuration trained on purpose with another seed: it runs
with its `replicate_seed`, to the end (no pruner stops it), and is no one's duplicate.
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna
import torch

from lorasweep.artifacts import attach
from lorasweep.config import write_trial_yaml
from lorasweep.optuna_private import report
from lorasweep.pending import Kept, keep, write_result
from lorasweep.pruning import should_prune
from lorasweep.replicates import is_replicate, replicate_seed
from lorasweep.search_space import SearchSpace
from lorasweep.sharding import ShardFailed
from lorasweep.train import NonFiniteLoss
from lorasweep.trial import run_trial
from lorasweep.validation import ConfigError

# Failures that belong to one configuration, not to the sweep (a diverged loss, a target preset
# the architecture lacks, a batch too big for the memory, a shard process that died): the trial is recorded as failed with
# the reason, its memory is released, and the study goes on.
TRIAL_FAILURES = (NonFiniteLoss, ConfigError, torch.OutOfMemoryError, ShardFailed)


def make_objective(
    space: SearchSpace,
    on_step: Callable[[int, int], None] | None = None,
    cache_dir: Path | None = None,
    artifact_dir: Path | None = None,
    keep_dir: Path | None = None,
) -> Callable[[optuna.Trial], float | tuple[float, float]]:
    """(learn, forget) for a pareto space; learn, with forget <= tolerance as a constraint, else.

    With `artifact_dir`, each completed trial also gets its resolved config as a `trial.yaml`
    artifact (the file `lorasweep run --config` takes), shown by optuna-dashboard. With
    `keep_dir`, a finished trial's result is kept there until the study has it (pending.py).
    """
    constrained = space.objective == "constrained"
    dominance = space.pruner["name"] == "dominance"

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        evaluations = 0
        frozen = trial.study.get_trials(deepcopy=False)[trial.number]
        seed = replicate_seed(frozen)

        def on_eval(step: int, learn: float, forget: float) -> None:
            nonlocal evaluations
            index, evaluations = evaluations, evaluations + 1
            report(trial, step, learn)
            if seed is not None:  # a replicate measures its configuration to the end
                return
            if constrained and trial.should_prune():
                prune(trial, step, f"{space.pruner['name']} pruner: learn {learn:.3f} at step {step}")
            if dominance:
                k, warmup = space.pruner["k"], space.pruner["warmup_points"]
                if should_prune((learn, forget), index, completed_curves(trial.study), k, warmup):
                    trial.set_user_attr(
                        "pruned_point", {"learn": learn, "forget": forget, "evaluation": index}
                    )
                    prune(
                        trial,
                        step,
                        f"dominance pruner: (learn {learn:.3f}, forget {forget:+.3f}) at "
                        f"evaluation {index + 1} (step {step}) dominated by >= {k} completed trials",
                    )

        retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retried is not None:  # a dead worker's trial, run again: shown in the dashboard
            trial.set_user_attr("retry_of", retried)
            history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)
            trial.set_user_attr("retry_history", history)
        try:
            config = space.suggest(trial)
            if seed is not None:
                config = dataclasses.replace(config, seed=seed)
            trial.set_user_attr("method", config.method)
            trial.set_user_attr("config", config.to_dict())  # replaced by the resolved one below
            earlier = None if seed is not None else completed_with_same_params(trial)
            if earlier is not None:
                trial.set_user_attr("duplicate_of", earlier.number)
                prune(
                    trial,
                    0,
                    f"duplicate of trial {earlier.number}: a completed configuration is not trained again",
                )
            result = run_trial(config, on_step=on_step, on_eval=on_eval, cache_dir=cache_dir)
        except TRIAL_FAILURES as err:
            trial.set_user_attr("fail_reason", f"{err.__class__.__name__}: {err}")
            release_memory()
            raise
        except KeyboardInterrupt as err:
            trial.set_user_attr("fail_reason", f"interrupted by {str(err) or 'SIGINT'}")
            raise
        kept = Kept(
            number=trial.number,
            step=result.train_steps,  # the last point of the learning curve
            learn=result.learn,
            attrs=result.attrs(),
            values=[result.learn] if constrained else [result.learn, result.forget],
            constraint=result.forget - space.forget_tolerance if constrained else None,
        )
        if keep_dir is not None:  # until Optuna's tell: the result outlives this process
            keep(keep_dir, kept)
        write_result(trial, kept)
        if artifact_dir is not None:
            attach_config(trial, result.config, artifact_dir)
        return kept.values[0] if constrained else tuple(kept.values)

    return objective


def release_memory() -> None:
    """Free what a failed trial left behind before the next one starts."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def attach_config(trial: optuna.Trial, config: dict, artifact_dir: Path) -> None:
    """The trial's resolved config as its `trial.yaml` artifact."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.yaml"
        write_trial_yaml(config, path)
        attach(trial, [path], artifact_dir)


def prune(trial: optuna.Trial, step: int, reason: str) -> None:
    trial.set_user_attr("pruned_at_step", step)
    trial.set_user_attr("prune_reason", reason)
    raise optuna.TrialPruned(reason)


def completed_with_same_params(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The first completed trial of the study that was given the same parameters, if any."""
    for earlier in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if earlier.params == trial.params and not is_replicate(earlier):
            return earlier
    return None


def completed_curves(study: optuna.Study) -> list[list[tuple[float, float]]]:
    """(learn, forget) at each evaluation point of every completed configuration, in step order."""
    curves = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if is_replicate(t):
            continue
        learn, forget = t.user_attrs.get("learn_curve"), t.user_attrs.get("forget_curve")
        if learn and forget:
            steps = sorted(learn, key=int)
            curves.append([(learn[s], forget[s]) for s in steps])
    return curves
