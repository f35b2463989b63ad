"""How a search space searches: its objective, sampler and pruner (the keys `objective`,
`forget_tolerance`, `pruner` and `sampler` of a space file; search_spaces/README.md).

Optuna's defaults drift between versions, so lorasweep states its own and a study records them.
"""

from __future__ import annotations

from typing import Any

import optuna

from lorasweep.validation import ConfigError, coerce, unknown

OBJECTIVES = ("pareto", "constrained")
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


def parse_objective(raw: dict[str, Any], src: str) -> tuple[str, float | None, dict[str, Any]]:
    """A space's objective, forget tolerance and pruner (with lorasweep's defaults filled in)."""
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
    return objective, tolerance, pruner


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
