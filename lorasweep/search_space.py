"""Search spaces: which trial-config fields a study fixes, which it searches, and its baselines.

A space is a YAML file (schema in search_spaces/README.md):

    config:            # fixed TrialConfig fields for every trial
      train_tokens: 150000
    params:            # searched, in order; a param may depend on earlier categorical ones
      method: {choices: [lora, full]}
      rank: {type: int, low: 4, high: 64, log: true, when: {method: lora}}
      lora_learning_rate: {field: learning_rate, low: 3.0e-4, high: 1.0e-2, log: true,
                           when: {method: lora}}
    baselines:         # trials enqueued first, in config-field terms
      - {method: full, learning_rate: 3.0e-4}
    sampler: {name: tpe, n_startup_trials: 6, multivariate: true, group: true, constant_liar: true}

Conditional parameters get their own Optuna names (Optuna's idiom for conditional spaces), and
`field` maps them onto the config field they set, so the LR of LoRA and of full FT can have
different ranges without TPE mixing their distributions.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from lorasweep.config import TrialConfig
from lorasweep.peft_methods import check_keys
from lorasweep.search_options import Question, make_pruner, make_sampler, parse_objective, parse_sampler
from lorasweep.validation import ConfigError, coerce, did_you_mean, field_kind, load_yaml, unknown

DEFAULT_SPACE = Path("search_spaces/default.yaml")
SPACE_KEYS = (
    "objective",
    "forget_tolerance",
    "pruner",
    "config",
    "params",
    "baselines",
    "sampler",
    "compare",
    "memory_objective",
    "memory_budget_gb",
)
PEFT_KEY = "peft_config."  # a searched key of a PEFT method's own config (peft_methods.py)
PARAM_KEYS = ("type", "field", "low", "high", "log", "step", "choices", "when")


@dataclass
class Param:
    name: str  # Optuna parameter name
    field: str  # TrialConfig field it sets
    kind: str  # float, int or categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)
    when: dict[str, list[Any]] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        """Whether this param applies, given the values of the params before it."""
        return all(name in values and values[name] in allowed for name, allowed in self.when.items())

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(map(str, self.choices))
        return f"{self.kind} in [{self.low}, {self.high}]" + (" (log)" if self.log else "")

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)


@dataclass
class SearchSpace:
    path: Path
    raw: dict[str, Any]  # the file as read, recorded with the study
    config: dict[str, Any]
    params: list[Param]
    baselines: list[dict[str, Any]]  # as Optuna params, ready to enqueue
    sampler: dict[str, Any]
    question: Question = field(default_factory=Question)  # objectives, constraints, pruner
    compare: str | None = None  # the categorical param whose values (arms) share the trials evenly

    def arms(self) -> list[Any]:
        """The compared param's values, in the order the file gives them (none: no `compare`)."""
        return next((p.choices for p in self.params if p.name == self.compare), [])

    def with_config(self, overrides: dict[str, Any]) -> SearchSpace:
        """The space with fixed config fields set from the command line (--model, --domain, ...).

        They become part of the space a study records, so a study never mixes models or data.
        """
        if overrides:
            self.config = {**self.config, **overrides}
            self.raw = {**self.raw, "config": self.config}
            TrialConfig.from_dict(self.config, f"{self.path} config")
        return self

    def trial_config(self, values: dict[str, Any]) -> TrialConfig:
        """The config of a trial whose Optuna params are `values` (`peft_config.KEY`: that key)."""
        fields: dict[str, Any] = {}
        for param in self.params:
            if param.name not in values:
                continue
            if param.field.startswith(PEFT_KEY):
                peft = fields.setdefault("peft_config", dict(self.config.get("peft_config") or {}))
                peft[param.field[len(PEFT_KEY) :]] = values[param.name]
            else:
                fields[param.field] = values[param.name]
        return TrialConfig.from_dict({**self.config, **fields}, str(self.path))

    def suggest(self, trial: optuna.Trial) -> TrialConfig:
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.name] = param.suggest(trial)
        return self.trial_config(values)

    def make_sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        return make_sampler(self.sampler, seed)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return make_pruner(self.question.pruner)


def load_space(path: Path) -> SearchSpace:
    """Read and validate a search-space file; every problem is a one-line ConfigError."""
    return parse_space(load_yaml(Path(path)), Path(path))


def parse_space(raw: Any, path: Path) -> SearchSpace:
    """A search space from its mapping (a file as read, or the copy a study records)."""
    src = str(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: a search space must be a mapping with keys {', '.join(SPACE_KEYS)}")
    for key in raw:
        if key not in SPACE_KEYS:
            raise ConfigError(f"{src}: {unknown('key', key, SPACE_KEYS)}")
    config = raw.get("config") or {}
    TrialConfig.from_dict(config, f"{src} config")  # fixed fields alone must already be valid
    params = _parse_params(raw.get("params") or {}, config, src)
    if not params:
        raise ConfigError(f"{src}: 'params' is empty; a search space searches at least one field")
    space = SearchSpace(path, raw, config, params, [], parse_sampler(raw.get("sampler") or {}, src))
    space.question = parse_objective(raw, src)
    space.compare = _parse_compare(raw.get("compare"), params, src)
    baselines = raw.get("baselines") or []
    if not isinstance(baselines, list):
        raise ConfigError(f"{src}: 'baselines' must be a list of mappings of field: value")
    space.baselines = [_baseline(space, b, f"{src} baseline {i + 1}") for i, b in enumerate(baselines)]
    return space


def _parse_params(raw: Any, config: dict[str, Any], src: str) -> list[Param]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: 'params' must be a mapping of name: distribution")
    hints = typing.get_type_hints(TrialConfig)
    params: list[Param] = []
    type_searched = any(  # wherever it is listed: the PEFT keys' checks depend on it
        (spec.get("field", name) if isinstance(spec, dict) else name) == f"{PEFT_KEY}peft_type"
        for name, spec in raw.items()
    )
    for name, spec in raw.items():
        where = f"{src}: param '{name}'"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be a mapping (choices, or low/high); fix values under 'config'")
        for key in spec:
            if key not in PARAM_KEYS:
                raise ConfigError(f"{where}: {unknown('key', key, PARAM_KEYS)}")
        target = spec.get("field", name)
        if isinstance(target, str) and target.startswith(PEFT_KEY):
            param = _parse_peft_param(name, target, spec, config, type_searched, where)
            param.when = _parse_when(spec.get("when"), params, where)
            params.append(param)
            continue
        if not isinstance(target, str) or target not in hints or target == "world":
            searchable = [h for h in hints if h != "world"]
            raise ConfigError(
                f"{where}: '{target}' is not a trial-config field{did_you_mean(target, searchable)} "
                f"(searchable: {', '.join(searchable)})"
            )
        if target in config:
            raise ConfigError(f"{where}: field '{target}' is both fixed under 'config' and searched")
        kind = field_kind(hints[target])
        param = _parse_distribution(name, target, kind, spec, where)
        # every choice and both bounds must be valid values of the field on their own
        for value in param.choices or [param.low, param.high]:
            TrialConfig.from_dict({**config, target: value}, where)
        param.when = _parse_when(spec.get("when"), params, where)
        params.append(param)
    _check_exclusive(params, src)
    _check_peft_keys(params, config, src)
    return params


def _check_peft_keys(params: list[Param], config: dict[str, Any], src: str) -> None:
    """Where a space searches `peft_config.peft_type`: each method it chooses is one lorasweep runs,
    and knows every key fixed under `peft_config` and every searched key that may go with it (the
    values are PEFT's to judge, trial by trial: they may hold only in combination)."""
    fixed = config.get("peft_config") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{src}: field 'peft_config' must be a mapping with peft_type")
    for kinds in (p for p in params if p.field == f"{PEFT_KEY}peft_type"):
        goes_with = _goes_with(params, kinds)
        for kind in kinds.choices:
            where = f"{src}: param '{kinds.name}' choice {kind!r}"
            if not isinstance(kind, str):
                raise ConfigError(f"{where}: a peft_type is a name, e.g. OFT")
            try:
                check_keys(kind, [k for k in fixed if k != "peft_type"])
                for p in params:
                    if p.field.startswith(PEFT_KEY) and p is not kinds and kind in goes_with[p.name]:
                        where = f"{src}: param '{p.name}' with peft_type {kind}"
                        check_keys(kind, [p.field[len(PEFT_KEY) :]])
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None


def _goes_with(params: list[Param], kinds: Param) -> dict[str, set]:
    """Per param, the choices of `kinds` (a searched peft_type) it can be active with: those its
    `when` allows, through the params its `when` names (a `when` names only earlier params)."""
    found: dict[str, set] = {}
    for p in params:
        allowed = set(kinds.choices)
        for name, values in p.when.items():
            allowed &= set(values) if name == kinds.name else found.get(name, set(kinds.choices))
        found[p.name] = allowed
    return found


def _parse_peft_param(
    name: str, target: str, spec: dict, config: dict[str, Any], type_searched: bool, where: str
) -> Param:
    """A searched key of `peft_config` (peft_methods.py): `peft_config.r`, `peft_config.peft_type`.

    Its values are checked by PEFT's config class here when the space fixes one PEFT method
    (`peft_config` with its peft_type under 'config', peft_type not searched); where it searches
    the method, its name is checked against each method it may go with (_check_peft_keys) and its
    values by each trial's config as it is made (a bad combination fails that trial).
    """
    if "choices" in spec:
        param = Param(name, target, "categorical", choices=list(spec["choices"] or []))
        if not param.choices or "low" in spec or "high" in spec:
            raise ConfigError(f"{where}: give a non-empty 'choices' list, or 'low' and 'high'")
    else:
        number = float if spec.get("type") == "float" else int
        param = _parse_distribution(name, target, number, spec, where)
    fixed = config.get("peft_config")
    if (
        isinstance(fixed, dict)
        and "peft_type" in fixed
        and config.get("method") == "peft"
        and not type_searched
    ):
        for value in param.choices or [param.low, param.high]:
            TrialConfig.from_dict({**config, "peft_config": {**fixed, target[len(PEFT_KEY) :]: value}}, where)
    return param


def _parse_distribution(name: str, target: str, kind: type, spec: dict, where: str) -> Param:
    if "choices" in spec:
        choices = spec["choices"]
        extra = [k for k in ("low", "high", "log", "step") if k in spec]
        if extra:
            raise ConfigError(f"{where}: '{extra[0]}' does not go with 'choices'")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list")
        choices = [coerce(c, kind, where, target) for c in choices]
        return Param(name, target, "categorical", choices=choices)
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: give 'choices', or both 'low' and 'high'")
    declared = spec.get("type", "int" if kind is int else "float")
    if declared not in ("int", "float") or (declared == "float" and kind is not float):
        allowed = "int" if kind is int else "int, float"
        raise ConfigError(f"{where}: type '{declared}' does not fit field '{target}' (allowed: {allowed})")
    number = int if declared == "int" else float
    low = coerce(spec["low"], number, where, "low")
    high = coerce(spec["high"], number, where, "high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' is {log!r}; expected true or false")
    if low > high:
        raise ConfigError(f"{where}: low {low} is greater than high {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0 (got {low})")
    step = spec.get("step")
    if step is not None:
        step = coerce(step, number, where, "step")
        if step <= 0 or log:
            raise ConfigError(f"{where}: 'step' must be > 0 and cannot be combined with log")
        if declared == "float" and (high - low) / step > 1e15:
            # Optuna divides the range by the step in 28-digit decimals: beyond that (low 1,
            # high 1e30, step 1) it fails in the middle of the study, at the first trial
            raise ConfigError(
                f"{where}: step {step} divides [{low}, {high}] into too many values (at most 1e15)"
            )
    return Param(name, target, declared, low=low, high=high, log=log, step=step)


def _parse_when(raw: Any, earlier: list[Param], where: str) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: 'when' must be a mapping of earlier param: value or [values]")
    conditions = {}
    by_name = {p.name: p for p in earlier}
    for name, values in raw.items():
        parent = by_name.get(name)
        if parent is None or parent.kind != "categorical":
            known = ", ".join(p.name for p in earlier if p.kind == "categorical") or "none"
            raise ConfigError(
                f"{where}: 'when' refers to '{name}', not an earlier categorical param (earlier: {known})"
            )
        values = values if isinstance(values, list) else [values]
        for value in values:
            if value not in parent.choices:
                allowed = ", ".join(map(str, parent.choices))
                raise ConfigError(f"{where}: 'when' value {value!r} is not a choice of '{name}' ({allowed})")
        conditions[name] = values
    return conditions


def _check_exclusive(params: list[Param], src: str) -> None:
    """Params that set the same field must never be active in the same trial."""
    for i, a in enumerate(params):
        for b in params[i + 1 :]:
            if a.field != b.field:
                continue
            disjoint = any(name in b.when and not set(a.when[name]) & set(b.when[name]) for name in a.when)
            if not disjoint:
                raise ConfigError(
                    f"{src}: params '{a.name}' and '{b.name}' both set '{a.field}' and can be active "
                    "together; give them 'when' conditions on one param with different values"
                )


def _parse_compare(raw: Any, params: list[Param], src: str) -> str | None:
    """`compare: NAME`: a categorical param that every trial has (no `when`)."""
    if raw is None:
        return None
    arms = [p.name for p in params if p.kind == "categorical" and not p.when]
    if raw not in arms:
        allowed = ", ".join(arms) or "none in this space"
        raise ConfigError(
            f"{src}: 'compare' is {raw!r}; allowed: a categorical param every trial has ({allowed})"
        )
    return raw


def _baseline(space: SearchSpace, raw: Any, where: str) -> dict[str, Any]:
    """A baseline given as config fields, turned into the Optuna params that reproduce it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a mapping of field: value")
    values: dict[str, Any] = {}
    used = set()
    for param in space.params:
        if not param.active(values):
            continue
        if param.field not in raw:
            raise ConfigError(f"{where}: no value for '{param.field}' (param '{param.name}' is active)")
        value = raw[param.field]
        if param.kind != "categorical":
            value = coerce(value, float if param.kind == "float" else int, where, param.field)
        if not param.contains(value):
            raise ConfigError(
                f"{where}: '{param.field}' is {value!r}; param '{param.name}' is {param.describe()}"
            )
        values[param.name] = value
        used.add(param.field)
    unused = [k for k in raw if k not in used]
    if unused:
        raise ConfigError(f"{where}: '{unused[0]}' is not a param active in this baseline")
    space.trial_config(values)
    return values
