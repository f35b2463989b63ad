"""The Optuna objective: sample a config, run the trial, record everything on the trial.

    objective(trial) -> (learn, forget)       # objective: pareto
    objective(trial) -> (learn, forget, m)    # ... with memory_objective (peak_memory_gb or trainable_params)
    objective(trial) -> learn                 # objective: constrained (forget <= tolerance)

With `memory_budget_gb`, a trial whose peak memory exceeds the budget is infeasible (an Optuna
constraint, `memory`, so samplers steer away from it and `best` leaves it out); one whose memory
estimate (memory.py) already exceeds it is not trained: it is pruned at step 0 with the constraint
set from the estimate.

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
from lorasweep.config import TrialConfig, write_trial_yaml
from lorasweep.memory import GiB
from lorasweep.optuna_private import report
from lorasweep.pending import Kept, keep, write_result
from lorasweep.pruning import should_prune
from lorasweep.records import TrialResult
from lorasweep.replicates import is_replicate, replicate_seed
from lorasweep.search_options import MEMORY_OBJECTIVES, Question
from lorasweep.search_space import SearchSpace
from lorasweep.sharding import ShardFailed
from lorasweep.train import NonFiniteLoss
from lorasweep.trial import expected_memory, run_trial
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
) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    """(learn, forget[, memory]) for a pareto space; learn, with forget <= tolerance as a
    constraint, else (the module doc).

    With `artifact_dir`, each completed trial also gets its resolved config as a `trial.yaml`
    artifact (the file `lorasweep run --config` takes), shown by optuna-dashboard. With
    `keep_dir`, a finished trial's result is kept there until the study has it (pending.py).
    """
    question = space.question
    constrained = question.objective == "constrained"
    pruner = question.pruner

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
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
                prune(trial, step, f"{pruner['name']} pruner: learn {learn:.3f} at step {step}")
            if pruner["name"] == "dominance":
                k, warmup = pruner["k"], pruner["warmup_points"]
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
            if question.memory_budget_gb is not None:
                prune_over_budget(trial, config, question.memory_budget_gb)
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
            values=objective_values(question, result),
            constraints=constraints(question, result),
        )
        if keep_dir is not None:  # until Optuna's tell: the result outlives this process
            keep(keep_dir, kept)
        write_result(trial, kept)
        if artifact_dir is not None:
            attach_config(trial, result.config, artifact_dir)
        return kept.values[0] if constrained else tuple(kept.values)

    return objective


def objective_values(question: Question, result: TrialResult) -> list[float]:
    """What Optuna's tell records for a trial, in the order of the study's metric names."""
    if question.objective == "constrained":
        return [result.learn]
    values = [result.learn, result.forget]
    if question.memory_objective is not None:
        values.append(float(getattr(result, MEMORY_OBJECTIVES[question.memory_objective])))
    return values


def constraints(question: Question, result: TrialResult) -> dict[str, float]:
    """The trial's Optuna constraints (feasible where each is <= 0): forget over the tolerance of a
    constrained study, peak memory over the budget (GiB)."""
    found = {}
    if question.objective == "constrained":
        found["forget"] = result.forget - question.forget_tolerance
    if question.memory_budget_gb is not None:
        found["memory"] = result.peak_memory_gb - question.memory_budget_gb
    return found


def prune_over_budget(trial: optuna.Trial, config: TrialConfig, budget: float) -> None:
    """Prune, untrained, a trial whose memory estimate exceeds the budget: recorded infeasible by
    as much as the estimate exceeds it, so the sampler learns where the budget ends."""
    expected = expected_memory(config)
    if expected is None or expected.total / GiB <= budget:
        return
    trial.set_user_attr("memory_estimate_bytes", expected.total)
    trial.set_user_attr("memory_estimate", expected.parts())
    trial.set_constraint("memory", expected.total / GiB - budget)
    prune(
        trial,
        0,
        f"memory estimate {expected.total / GiB:.3g} GiB ({expected.describe()}) exceeds "
        f"memory_budget_gb {budget:g}: not trained",
    )


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
