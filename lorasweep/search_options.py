"""How a search space searches: its objectives, sampler and pruner (the keys `objective`,
`forget_tolerance`, `memory_objective`, `memory_budget_gb`, `pruner` and `sampler` of a space
file; search_spaces/README.md).

Optuna's defaults drift between versions, so lorasweep states its own and a study records them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import optuna

from lorasweep.validation import ConfigError, coerce, unknown

OBJECTIVES = ("pareto", "constrained")
# a third objective of a pareto study, minimised beside (learn, forget): the trial attr it reads
MEMORY_OBJECTIVES = {"peak_memory": "peak_memory_gb", "trainable_params": "trainable_params"}
# Optuna's pruners act on the intermediate learn values and cannot prune multi-objective studies,
# so they need `objective: constrained`; the dominance pruner (pruning.py) is for pareto studies.
PRUNERS = {
    "none": {},
    "median": {"n_startup_trials": int, "n_warmup_steps": int},
    "hyperband": {"min_resource": int, "reduction_factor": int},
    "dominance": {"k": int, "warmup_points": int},
}
PRUNER_DEFAULTS = {
    "none": {},
    "median": {"n_startup_trials": 4, "n_warmup_steps": 0},
    "hyperband": {"min_resource": 1, "reduction_factor": 3},
    "dominance": {"k": 2, "warmup_points": 1},
}
PRUNER_OBJECTIVE = {"median": "constrained", "hyperband": "constrained", "dominance": "pareto"}
SAMPLERS = {
    "tpe": {
        "n_startup_trials": int,
        "n_ei_candidates": int,
        "multivariate": bool,
        "group": bool,
        "constant_liar": bool,
    },
    "random": {},
}
# Optuna 5 changed TPE's defaults; lorasweep states its own so a study's sampler never drifts.
SAMPLER_DEFAULTS = {
    "tpe": {
        "n_startup_trials": 8,
        "n_ei_candidates": 24,
        "multivariate": True,
        "group": True,
        "constant_liar": True,
    },
    "random": {},
}


def make_sampler(sampler: dict[str, Any], seed: int) -> optuna.samplers.BaseSampler:
    options = {k: v for k, v in sampler.items() if k != "name"}
    if sampler["name"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, **options)


def make_pruner(pruner: dict[str, Any]) -> optuna.pruners.BasePruner:
    options = {k: v for k, v in pruner.items() if k != "name"}
    if pruner["name"] == "median":
        return optuna.pruners.MedianPruner(**options)
    if pruner["name"] == "hyperband":
        return optuna.pruners.HyperbandPruner(**options)
    return optuna.pruners.NopPruner()  # none, or dominance: applied by the objective itself


@dataclass
class Question:
    """What a space asks of its trials: the objectives, the constraints, and how to prune."""

    objective: str = "pareto"  # pareto: (learn up, forget down); constrained: learn up, forget <= tolerance
    forget_tolerance: float | None = None
    memory_objective: str | None = None  # pareto only: a third objective, minimised (MEMORY_OBJECTIVES)
    memory_budget_gb: float | None = None  # peak memory above this (GiB) makes a trial infeasible
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})

    def metrics(self) -> list[str]:
        """The study's metric names, one per objective."""
        if self.objective == "constrained":
            return ["learn"]
        third = [MEMORY_OBJECTIVES[self.memory_objective]] if self.memory_objective else []
        return ["learn", "forget", *third]


def parse_objective(raw: dict[str, Any], src: str) -> Question:
    """A space's objectives, constraints and pruner (with lorasweep's defaults filled in)."""
    objective = raw.get("objective", "pareto")
    if objective not in OBJECTIVES:
        raise ConfigError(f"{src}: objective '{objective}' is unknown (allowed: {', '.join(OBJECTIVES)})")
    tolerance = raw.get("forget_tolerance")
    if tolerance is not None:
        tolerance = coerce(tolerance, float, src, "forget_tolerance")
        if tolerance < 0:
            raise ConfigError(f"{src}: field 'forget_tolerance' is {tolerance}; allowed: a number >= 0")
    if objective == "constrained" and tolerance is None:
        raise ConfigError(f"{src}: objective 'constrained' needs forget_tolerance (nats/token)")
    memory = raw.get("memory_objective")
    if memory is not None and (not isinstance(memory, str) or memory not in MEMORY_OBJECTIVES):
        raise ConfigError(
            f"{src}: memory_objective '{memory}' is unknown (allowed: {', '.join(MEMORY_OBJECTIVES)})"
        )
    if memory is not None and objective != "pareto":
        raise ConfigError(
            f"{src}: memory_objective needs objective: pareto (a constrained study has the one "
            "objective learn); to cap memory in a constrained study, set memory_budget_gb"
        )
    budget = raw.get("memory_budget_gb")
    if budget is not None:
        budget = coerce(budget, float, src, "memory_budget_gb")
        if budget <= 0:
            raise ConfigError(f"{src}: field 'memory_budget_gb' is {budget}; allowed: a number of GiB > 0")
    pruner = raw.get("pruner") or {"name": "none"}
    pruner = _parse_options(
        pruner if isinstance(pruner, dict) else {"name": pruner}, PRUNERS, PRUNER_DEFAULTS, "pruner", src
    )
    needs = PRUNER_OBJECTIVE.get(pruner["name"], objective)
    if needs != objective:
        why = " (Optuna cannot prune multi-objective studies)" if needs == "constrained" else ""
        raise ConfigError(f"{src}: pruner '{pruner['name']}' needs objective: {needs}{why}")
    if pruner["name"] == "dominance" and (pruner["k"] < 1 or pruner["warmup_points"] < 0):
        raise ConfigError(f"{src}: dominance pruner needs k >= 1 and warmup_points >= 0")
    if pruner["name"] == "dominance" and memory is not None:
        raise ConfigError(
            f"{src}: pruner 'dominance' compares (learn, forget) points and cannot weigh a third "
            "objective; use pruner: none with memory_objective"
        )
    return Question(objective, tolerance, memory, budget, pruner)


def parse_sampler(raw: Any, src: str) -> dict[str, Any]:
    return _parse_options(raw, SAMPLERS, SAMPLER_DEFAULTS, "sampler", src)


def _parse_options(
    raw: Any, kinds: dict[str, dict[str, type]], defaults: dict[str, dict[str, Any]], what: str, src: str
) -> dict[str, Any]:
    """`{name: ..., option: value}` for a sampler or pruner, with lorasweep's defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: '{what}' must be a mapping with a name and options")
    name = raw.get("name", next(iter(kinds)))
    if not isinstance(name, str) or name not in kinds:
        raise ConfigError(f"{src}: {what} name '{name}' is unknown (allowed: {', '.join(kinds)})")
    options = dict(defaults[name])
    for key, value in raw.items():
        if key == "name":
            continue
        if key not in kinds[name]:
            raise ConfigError(f"{src}: {unknown(f'{what} option', key, kinds[name], of=f' for {name}')}")
        options[key] = coerce(value, kinds[name][key], f"{src} {what}", key)
    return {"name": name, **options}
