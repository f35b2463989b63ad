"""The numbers a report is made of, read from a study: one row per comparable trial, fronts,
best learning rates, correlations. No rendering here (report.py), no training anywhere.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from lorasweep.records import Gap, forget_of, has_record, objective_attr, study_gaps, trial_gaps
from lorasweep.replicates import REPLICATE_OF, REPLICATE_SEED, is_replicate
from lorasweep.search_options import MEMORY_OBJECTIVES
from lorasweep.study import best_trials, over_budget

COST_ATTRS = ("trainable_params", "peak_mem_bytes", "tokens_per_s")


@dataclass
class Row:
    """One completed configuration, as the report reads it: its trial and the trial's replicates."""

    number: int  # the trial that searched it
    method: str  # the method as the report groups it: with a LoRA init, LoRA+ or PEFT type (variant)
    learning_rate: float
    rank: int | None
    targets: str | None
    replay: float
    learn: float  # mean over its seeds
    forget: float
    # cost; None where the trial did not record it (an older lorasweep)
    trainable_params: int | None
    peak_mem_bytes: int | None
    tokens_per_s: float | None
    arm: Any = None  # its value of the compared param (compare_of)
    learn_seeds: tuple[float, ...] = ()  # each seed's learn, the searching trial's first
    forget_seeds: tuple[float, ...] = ()
    lawa_learn_seeds: tuple[float, ...] = ()  # each seed's LAWA learn, where it recorded one
    config: dict[str, Any] = field(default_factory=dict)  # the searching trial's resolved config
    peak_memory_gb: float | None = None  # what a memory objective or budget reads (trial._peak_memory_gb)

    @property
    def seeds(self) -> int:
        return max(1, len(self.learn_seeds))


def leader(rows: list[Row]) -> Row:
    """The configuration with the highest mean learn, among those with replicates if any has them
    (a single lucky seed does not outrank a measured mean)."""
    replicated = [r for r in rows if r.seeds > 1]
    return max(replicated or rows, key=lambda r: r.learn)


def rows_of(study: optuna.Study) -> list[Row]:
    """The completed configurations the comparison can read: those with a config and a forget
    value, within any memory budget, each with the seeds of its completed replicates."""
    compare = compare_of(study)
    replicas: dict[int, dict[int, optuna.trial.FrozenTrial]] = defaultdict(dict)
    for t in _compared(study):  # one per seed: two commands may have run the same seed
        if is_replicate(t):
            replicas[t.user_attrs[REPLICATE_OF]].setdefault(t.user_attrs.get(REPLICATE_SEED), t)
    rows = []
    for t in _compared(study):
        if is_replicate(t):
            continue
        a, c = t.user_attrs, t.user_attrs["config"]
        adapter = c["method"] not in ("full", "peft")  # the rank and targets of a LoRA method
        seeds = [t, *(r for seed, r in replicas[t.number].items() if seed != c.get("seed"))]
        learns, forgets = tuple(s.values[0] for s in seeds), tuple(forget_of(s) for s in seeds)
        rows.append(
            Row(
                t.number,
                variant(c),
                c["learning_rate"],
                c.get("rank") if adapter else None,
                c.get("target_modules") if adapter else None,
                c.get("replay_ratio", 0.0),
                float(np.mean(learns)),
                float(np.mean(forgets)),
                *(a.get(attr) for attr in COST_ATTRS),
                arm=arm_of(t, compare),
                learn_seeds=learns,
                forget_seeds=forgets,
                lawa_learn_seeds=tuple(
                    s.user_attrs["lawa_learn"] for s in seeds if "lawa_learn" in s.user_attrs
                ),
                config=c,
                peak_memory_gb=a.get("peak_memory_gb"),
            )
        )
    return rows


def memory_metric(study: optuna.Study) -> str | None:
    """The Row field a study's memory objective or budget reads: its third objective's, else
    peak memory where it has a budget; None where it asks neither."""
    asked = study.user_attrs.get("memory_objective")
    if asked in MEMORY_OBJECTIVES:
        return MEMORY_OBJECTIVES[asked]
    return "peak_memory_gb" if study.user_attrs.get("memory_budget_gb") is not None else None


def matched(rows: list[Row], tolerance: float | None) -> tuple[dict[Any, list[Row]], float | None]:
    """Each arm's configurations that compete at equal forgetting, and the forget bar they meet.

    Within the tolerance, each arm's top learner forgets some amount; the least of these is the
    bar, and each arm competes with its configurations that forget no more than that (an arm with
    none keeps all its own). Set top learner against top learner, a configuration that learns a
    little more at a far higher forget would face one that forgets much less; at the bar, the
    arms are compared where both have configurations.
    """
    by_arm: dict[Any, list[Row]] = defaultdict(list)
    for r in rows:
        if tolerance is None or r.forget <= tolerance:
            by_arm[r.arm].append(r)
    if len(by_arm) < 2:
        return dict(by_arm), None
    bar = min(max(group, key=lambda r: r.learn).forget for group in by_arm.values())
    return {arm: [r for r in group if r.forget <= bar] or group for arm, group in by_arm.items()}, bar


def compare_of(study: optuna.Study) -> str:
    """The param whose values the study compares: its space's `compare`, else the method."""
    space = study.user_attrs.get("space")
    return (space.get("compare") if isinstance(space, dict) else None) or "method"


def arm_of(trial: optuna.trial.FrozenTrial, compare: str) -> Any:
    """The trial's value of the compared param (a fixed config field when the space fixes it)."""
    if compare in trial.params:
        return trial.params[compare]
    config = trial.user_attrs.get("config")
    return trial.user_attrs.get("arm", config.get(compare) if isinstance(config, dict) else None)


def variant(config: dict) -> str:
    """The method a configuration trains, as the report groups and plots it: a LoRA method with its
    initialisation and LoRA+ ratio where not the default ("lora pissa lora+16"), a PEFT method by
    its type ("peft OFT"). Each has its own LR scale, so no curve or best LR mixes them; plain LoRA
    is "lora", which the published claims are about."""
    method = config.get("method")
    if method == "peft":
        return f"peft {(config.get('peft_config') or {}).get('peft_type')}"
    init, ratio = config.get("init_lora_weights"), config.get("loraplus_lr_ratio")
    return " ".join(
        [str(method)]
        + ([init] if init not in (None, "default") else [])
        # at ratio 1 LoRA+ trains every LoRA matrix at the one LR, as plain LoRA does
        + ([f"lora+{ratio:g}"] if ratio not in (None, 1.0) else [])
    )


def describe(config: dict) -> str:
    """A configuration in a few words: method, rank, alpha, targets, learning rate."""
    if config.get("method") == "full":
        return f"full lr={config.get('learning_rate', 0):.1e}"
    if config.get("method") == "peft":
        options = {k: v for k, v in (config.get("peft_config") or {}).items() if k != "peft_type"}
        given = " ".join(f"{k}={v}" for k, v in options.items())
        return f"{(config.get('peft_config') or {}).get('peft_type')} {given} lr={config.get('learning_rate', 0):.1e}"
    extras = "".join(
        f" {name}={config[key]}"
        for key, name in (("init_lora_weights", "init"), ("loraplus_lr_ratio", "lora+"))
        if config.get(key) not in (None, "default")
    )
    return (
        f"{config.get('method')} r={config.get('rank')} a={config.get('alpha') or 0:g} "
        f"{config.get('target_modules')}{extras} lr={config.get('learning_rate', 0):.1e}"
    )


def _configured(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in complete if has_record(t, "config")]


def _compared(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The completed trials the comparison reads: with a forget value, and within any memory
    budget where they searched a configuration (a replicate is a seed of its configuration, which
    its searching trial's memory judges)."""
    return [
        t for t in _configured(study) if forget_of(t) is not None and (is_replicate(t) or not over_budget(t))
    ]


def gaps(study: optuna.Study, tolerance: float | None = None) -> list[Gap]:
    """What the report reads that the study lacks, each with what the report does without it."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    wanted = objective_attr(study) | {"base_metrics": "the base model's own metrics are left out"}
    if tolerance is None:
        wanted["forget_tolerance"] = "best LRs are taken over all trials (--forget-tolerance sets one)"
    found = study_gaps(study, wanted)
    found += trial_gaps(complete, {"config": "left out of the comparison (it names method, rank, LR)"})
    if len(study.directions) == 1:
        found += trial_gaps(_configured(study), {"forget": "left out of the comparison"})
    cost = {attr: "left out of the cost medians" for attr in COST_ATTRS}
    return found + trial_gaps(_compared(study), cost)


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (no ties correction needed for what the report asks of it)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def best_lr(rows: list[Row], tolerance: float | None) -> tuple[float, float] | None:
    """(learning rate, learn) of the trial that learned most within the forgetting tolerance."""
    feasible = [r for r in rows if tolerance is None or r.forget <= tolerance]
    if not feasible:
        return None
    top = max(feasible, key=lambda r: r.learn)
    return top.learning_rate, top.learn


def front(rows: list[Row], cost: str = "forget") -> list[Row]:
    """The (learn up, `cost` down) Pareto front of `rows` (forget, or a memory field), by learn."""
    rows = [r for r in rows if getattr(r, cost) is not None]
    ordered = sorted(rows, key=lambda r: (getattr(r, cost), -r.learn))
    kept, best = [], -math.inf
    for r in ordered:
        if r.learn > best:
            kept.append(r)
            best = r.learn
    return sorted(kept, key=lambda r: r.learn)


def study_front(study: optuna.Study, rows: list[Row]) -> list[Row]:
    """The rows of the study's own best trials (its Pareto front, or its best feasible trial)."""
    numbers = {t.number for t in best_trials(study)}
    return [r for r in rows if r.number in numbers]


def critical_mixture_ratio(rows: list[Row], tolerance: float | None) -> float | None:
    """Largest domain share (1 - replay) among trials whose forget stays within the tolerance."""
    if tolerance is None:
        return None
    ok = [1 - r.replay for r in rows if r.forget <= tolerance]
    return max(ok) if ok else None


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
