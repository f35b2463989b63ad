"""The Optuna study: its sampler, metric names, baselines and arms, on a storage (storages.py).

A study is multi-objective: learn (maximize) and forget (minimize), and with a space's
`memory_objective` peak memory or trainable parameters (minimize). Everything needed to read it
later is recorded on it: the search space as read, the sampler with all its options, the base
model's own metrics. Running `optimize` again on the same study adds trials to it (resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from lorasweep import __version__
from lorasweep.replicates import WithoutReplicates, is_replicate
from lorasweep.search_space import SearchSpace, parse_space
from lorasweep.storages import GRACE_S, HEARTBEAT_S, open_storage, storage_label
from lorasweep.validation import ConfigError

DEFAULT_STORAGE = "sqlite:///results/lorasweep.db"
DEFAULT_STUDY = "default"


def open_study(
    name: str,
    url: str | optuna.storages.BaseStorage,
    space: SearchSpace,
    seed: int,
    heartbeat: tuple[int, int] = (HEARTBEAT_S, GRACE_S),
    base_metrics: dict[str, float] | None = None,
) -> optuna.Study:
    """Create the study, or load it to add trials; a study keeps the space it was created with.

    `url` may also be a storage already opened (with its heartbeat settings). `base_metrics`, the
    base model's own, are recorded once: every trial's forget is relative to them.
    """
    store = url if isinstance(url, optuna.storages.BaseStorage) else open_storage(url, heartbeat=heartbeat)
    exists = name in optuna.get_all_study_names(store)
    if exists:
        study = optuna.load_study(study_name=name, storage=store)
        recorded = study.user_attrs.get("space")
        if recorded is not None and _searched(recorded) != _searched(space.raw):
            raise ConfigError(
                f"--space {space.path}: study '{name}' was created with a different search space "
                f"({study.user_attrs.get('space_path')}); use another --study name"
            )
    else:
        question = space.question
        metrics = question.metrics()  # learn is maximised, forget and memory minimised
        directions = ["maximize"] + ["minimize"] * (len(metrics) - 1)
        study = optuna.create_study(study_name=name, storage=store, directions=directions)
        study.set_metric_names(metrics)
        study.set_user_attr("objective", question.objective)
        study.set_user_attr("forget_tolerance", question.forget_tolerance)
        for key in ("memory_objective", "memory_budget_gb"):  # only where asked: older studies lack them
            if getattr(question, key) is not None:
                study.set_user_attr(key, getattr(question, key))
        study.set_user_attr("space", space.raw)
        study.set_user_attr("space_path", str(space.path))
        study.set_user_attr("lorasweep_version", __version__)
        for params in space.baselines:
            arm = {"arm": params[space.compare]} if space.compare else {}
            study.enqueue_trial(params, user_attrs={"baseline": True, **arm}, skip_if_exists=True)
    # Offset the seed by the trials already run, so a resumed study does not redraw its first
    # random points; the seed actually used is recorded per run.
    started = sum(t.state != optuna.trial.TrialState.WAITING for t in study.trials)
    sampler_seed = seed + started
    study.sampler = WithoutReplicates(space.make_sampler(sampler_seed))
    study.pruner = space.make_pruner()
    runs = list(study.user_attrs.get("sampler_runs", []))
    runs.append({**space.sampler, "seed": sampler_seed, "first_trial": started})
    study.set_user_attr("sampler", space.sampler)
    study.set_user_attr("pruner", space.question.pruner)
    study.set_user_attr("sampler_runs", runs)
    if base_metrics is not None and "base_metrics" not in study.user_attrs:
        study.set_user_attr("base_metrics", base_metrics)
    return study


def over_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's peak memory (or, untrained, its estimate) exceeded the study's budget."""
    return trial.constraints.get("memory", 0.0) > 0


def out_of_budget(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Whether an arm's trials say it can never fit the memory budget: two or more finished, every
    one over it, all with the same memory estimate (what the arm samples does not change its
    memory: its fixed fields alone exceed the budget, e.g. full FT's weights and states)."""
    done = [t for t in trials if t.state.is_finished()]
    estimates = {t.user_attrs.get("memory_estimate_bytes") for t in done}
    return len(done) >= 2 and all(over_budget(t) for t in done) and len(estimates) == 1


def queue_arm(study: optuna.Study, space: SearchSpace) -> bool:
    """Queue the next trial's arm (value of the space's `compare` param), the rest to be sampled.

    The rule: the arm with the fewest trials goes next, ties in the order of its choices. Every
    trial of an arm counts, whatever its state (baselines and pruned duplicates included), except
    a failed one that heartbeats queued again (its retry counts instead). An arm whose finished
    trials were all over the memory budget at one estimate (two or more) gets no more
    (out_of_budget). Nothing is queued while
    trials wait in Optuna's queue (baselines, retries): they run first and count when they do.
    Call it where no other process can start a trial in between (workers.run_trials holds the
    claim lock). Returns True: a search run always has a trial to start.
    """
    arms = space.arms()
    trials = study.get_trials(deepcopy=False)
    if not arms or any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        return True
    retried = {n for t in trials for n in optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t)}
    of_arm: dict[Any, list[optuna.trial.FrozenTrial]] = {a: [] for a in arms}
    for t in trials:
        arm = t.user_attrs.get("arm", t.params.get(space.compare))
        retry = t.state == optuna.trial.TrialState.FAIL and t.number in retried
        if arm in of_arm and not retry and not is_replicate(t):
            of_arm[arm].append(t)
    fitting = [a for a in arms if not out_of_budget(of_arm[a])]
    if not fitting:  # no arm fits the budget: the sampler alone chooses
        return True
    arm = min(fitting, key=lambda a: len(of_arm[a]))  # min keeps the first of equal counts
    study.enqueue_trial({space.compare: arm}, user_attrs={"arm": arm})
    return True


def _searched(raw: dict[str, Any]) -> tuple:
    """What makes two spaces the same study: the question asked, fixed config, searched params."""
    keys = ("objective", "forget_tolerance", "memory_objective", "memory_budget_gb", "config", "params")
    return tuple(raw.get(k) for k in keys)


def load_study(url: str, name: str | None) -> optuna.Study:
    """An existing study, for commands that read one; the name may be omitted if it is the only one."""
    store = open_storage(url, create=False)
    names = optuna.get_all_study_names(store)
    label = storage_label(url)
    if not names:
        raise ConfigError(f"--storage '{label}': holds no study yet (run lorasweep optimize first)")
    if name is None:
        if len(names) > 1:
            raise ConfigError(f"--study is needed: '{label}' holds {len(names)} studies: {', '.join(names)}")
        name = names[0]
    if name not in names:
        raise ConfigError(f"--study '{name}': not in '{label}' (studies there: {', '.join(names)})")
    return optuna.load_study(study_name=name, storage=store)


def recorded_space(study: optuna.Study, purpose: str) -> SearchSpace:
    """The search space the study was created with (recorded by open_study)."""
    raw = study.user_attrs.get("space")
    if not isinstance(raw, dict):
        raise ConfigError(
            f"study '{study.study_name}' has no recorded search space (study attr 'space'): "
            f"it was not created by lorasweep optimize, cannot {purpose}"
        )
    return parse_space(raw, Path(study.user_attrs.get("space_path", "recorded space")))


def objective_of(study: optuna.Study) -> str:
    """The study's objective mode; a study without lorasweep's attrs is read by its directions."""
    return study.user_attrs.get("objective", "pareto" if len(study.directions) >= 2 else "constrained")


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The Pareto front, by its first value (pareto), or the best trial (constrained), of the
    feasible trials (constraints met) among the configurations searched: a replicate (another
    seed of one of them) is not one.
    """
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feasible = [t for t in complete if not is_replicate(t) and all(c <= 0 for c in t.constraints.values())]
    # lorasweep maximizes learn and minimizes forget; a plain Optuna study may go either way
    signs = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in study.directions]
    if objective_of(study) == "constrained":
        return [max(feasible, key=lambda t: signs[0] * t.values[0])] if feasible else []

    def dominates(a: optuna.trial.FrozenTrial, b: optuna.trial.FrozenTrial) -> bool:
        pairs = [(s * x, s * y) for s, x, y in zip(signs, a.values, b.values)]
        return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)

    front = [t for t in feasible if not any(dominates(u, t) for u in feasible)]
    return sorted(front, key=lambda t: -signs[0] * t.values[0])
