"""Which configurations get replicates, and with which seeds.

    lorasweep confirm                     # each arm's leader, topped up to 2 replicates
    lorasweep confirm --top 3 --seeds 4   # each arm's 3 leaders, topped up to 4 replicates each
    lorasweep optimize --replicates 2     # the same for each arm's leader, after the search

An arm's leaders are its configurations on the (learn up, forget down) front, within the forget
tolerance when there is one, by learn, compared at equal forgetting: an arm whose top learner
forgets more than another arm's top learner is led by its best learner that forgets no more
than that one (analysis.matched). The arm's top learner is replicated too: it is the arm's best
configuration, and its forget sets the bar. A configuration
already replicated is ranked by its mean over seeds, so confirming again after a leader's mean fell
moves on to the next one. `--seeds S` tops each leader up to S replicates: running it twice adds
nothing; raising S adds the difference. Seeds are the smallest not yet used for that configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from lorasweep.analysis import Row, front, matched, rows_of
from lorasweep.replicates import REPLICATE_OF, REPLICATE_SEED, diverged, replicate_seed
from lorasweep.validation import ConfigError


@dataclass
class Replicate:
    """One queued replicate: the trial it repeats and the seed it trains with."""

    of: int
    seed: int


def check(top: int, seeds: int) -> None:
    if top < 1:
        raise ConfigError(f"--top is {top}; allowed: an integer >= 1")
    if seeds < 1:
        raise ConfigError(f"--seeds is {seeds}; allowed: an integer >= 1")


def leaders(study: optuna.Study, tolerance: float | None, top: int) -> list[Row]:
    """Each arm's `top` leaders at equal forgetting (analysis.matched), and its top learner (which
    sets the bar and is the arm's best configuration), arm by arm in the order their first trials
    ran."""
    rows = rows_of(study)
    groups, _ = matched(rows, tolerance)
    chosen = []
    for arm, group in groups.items():
        at_bar = sorted(front(group), key=lambda r: -r.learn)[:top]
        within = [r for r in rows if r.arm == arm and (tolerance is None or r.forget <= tolerance)]
        best = max(within, key=lambda r: r.learn)
        chosen += at_bar + ([best] if best.number not in {r.number for r in at_bar} else [])
    return chosen


def measured(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a replicate holds (or will hold) its seed's outcome: queued, running, complete, or
    diverged. One interrupted or failed otherwise is run again with the same seed."""
    if trial.state == TrialState.FAIL:
        return diverged(trial)
    return trial.state != TrialState.PRUNED


def queue_replicates(study: optuna.Study, rows: list[Row], seeds: int) -> list[Replicate]:
    """Queue what tops each configuration of `rows` up to `seeds` replicates; returns those of
    them still to run: the new ones and any queued before that have not started (an earlier
    confirm interrupted). Call it under the study's claim lock, so that two commands finishing at
    once do not queue the same seeds."""
    trials = study.get_trials(deepcopy=False)
    pending = []
    for row in rows:
        leader = trials[row.number]
        own = [t for t in trials if t.user_attrs.get(REPLICATE_OF) == row.number and measured(t)]
        used = {leader.user_attrs["config"].get("seed", 0), *(replicate_seed(t) for t in own)}
        pending += [Replicate(row.number, replicate_seed(t)) for t in own if t.state == TrialState.WAITING]
        new = [s for s in range(len(used) + seeds) if s not in used][: max(0, seeds - len(own))]
        for seed in new:
            arm = {} if row.arm is None else {"arm": row.arm}
            study.enqueue_trial(
                leader.params, user_attrs={REPLICATE_OF: row.number, REPLICATE_SEED: seed, **arm}
            )
            pending.append(Replicate(row.number, seed))
    return pending
