"""What lorasweep records on a study and its trials, and how a command says what a study lacks.

A study written by plain Optuna, or by an older lorasweep, carries only part of lorasweep's user
attrs. The commands that only read a study (best, report) show what they can and name each attr
they had to do without, with what they did instead; the commands that train a trial again
(reproduce, export) need its recorded config and metrics and stop with one line naming the
missing attr. All of them ask this module, so every command names a missing attr the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import optuna

from lorasweep.study import objective_of
from lorasweep.validation import ConfigError


@dataclass
class TrialResult:
    """What one trial measured and ran with. Each field is a user attr of its Optuna trial, by the
    same name; a field a trial has no value for (None) is not recorded."""

    learn: float  # exact match on the domain probes
    forget: float  # general held-out loss minus the base model's (evaluate.forget)
    method: str
    general_loss: float
    domain_loss: float | None  # the world's held-out paraphrases; a user's data has none
    general_qa_acc: float | None  # the world's general QA
    general_qa_delta: float | None  # general_qa_acc minus the base model's
    lawa_learn: float | None  # LAWA's averaged weights (lawa_k > 0)
    lawa_forget: float | None
    lawa_snapshots: int | None
    lawa_snapshot_bytes: int | None
    base_metrics: dict[str, float]
    learn_curve: dict[str, float]  # step (as text, for JSON) -> learn at that evaluation
    forget_curve: dict[str, float]
    target_modules_resolved: list[str]
    quantization: str
    trainable_params: int
    total_params: int
    trainable_pct: float
    peak_mem_bytes: int  # measured: CUDA allocated, or the process's resident memory on a CPU
    peak_memory_gb: float  # what memory_objective and memory_budget_gb read, in GiB (trial._peak_memory_gb)
    peak_memory_source: str  # measured (CUDA allocated), estimated (on a CPU), or resident
    memory_estimate_bytes: int | None  # estimated before loading, per device (memory.py)
    memory_estimate: dict[str, int] | None  # its parts (memory.MemoryEstimate.parts)
    optimizer_state_bytes: int | None  # the optimizer's state tensors, over every shard
    model_bytes: int
    peak_lr: float
    train_steps: int
    train_tokens: int
    train_loss: float
    tokens_per_s: float
    train_s: float
    init_s: float | None  # building the trial's model from the base, a data-driven init included
    eval_s: float
    wall_s: float
    seed: int
    threads: int
    base_model: str
    base_fingerprint: str
    data_fingerprint: str
    corpus_tokens: int  # of the domain text trained on, as tokenised (token_store.py)
    token_store: str  # the fingerprint of that text's token store
    device: str
    dtype: str
    config: dict[str, Any]  # the resolved TrialConfig, the file `lorasweep run --config` takes
    versions: dict[str, str]

    def attrs(self) -> dict[str, Any]:
        """The user attrs the trial records."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> TrialResult:
        """The result a trial recorded (None for what it did not); other attrs are left out."""
        return cls(**{f.name: attrs.get(f.name) for f in fields(cls)})


def forget_of(frozen: optuna.trial.FrozenTrial) -> float | None:
    """A recorded trial's forget: the second value of a study with two objectives (pareto), else
    the user attr of a constrained study; None where neither holds it (a one-objective study
    without the attr, a trial that did not complete)."""
    if frozen.values is not None and len(frozen.values) > 1:
        return frozen.values[1]
    value = frozen.user_attrs.get("forget")
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def recorded_metrics(frozen: optuna.trial.FrozenTrial, names: Iterable[str]) -> dict[str, float]:
    """The trial's recorded metrics among `names`, those it holds."""
    found = {}
    for name in names:
        value = forget_of(frozen) if name == "forget" else frozen.user_attrs.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[name] = float(value)
    return found


# what a trial attr holds, as an error message names it (others are named by the attr alone)
RECORDED_AS = {"config": "config", "learn": "metrics"}
# what reproduce and export need of a trial: the config to train, the metrics to compare with
RERUN_ATTRS = ("config", "learn")


@dataclass
class Gap:
    """One lorasweep attr a study lacks: on the study itself (`trials` None) or on some trials."""

    attr: str
    trials: list[int] | None
    instead: str  # what the command does without it

    def __str__(self) -> str:
        where = "study attr" if self.trials is None else "trial attr"
        on = "" if self.trials is None else f" on {_numbers(self.trials)}"
        return f"{where} '{self.attr}'{on} not recorded: {self.instead}"


def study_gaps(study: optuna.Study, attrs: dict[str, str]) -> list[Gap]:
    """The study attrs (name -> what the command does without it) that the study lacks."""
    return [Gap(attr, None, instead) for attr, instead in attrs.items() if attr not in study.user_attrs]


def trial_gaps(trials: Iterable[optuna.trial.FrozenTrial], attrs: dict[str, str]) -> list[Gap]:
    """The trial attrs (name -> what the command does without it) that some of `trials` lack."""
    trials = list(trials)
    gaps = []
    for attr, instead in attrs.items():
        lacking = sorted(t.number for t in trials if not has_record(t, attr))
        if lacking:
            gaps.append(Gap(attr, lacking, instead))
    return gaps


def objective_attr(study: optuna.Study) -> dict[str, str]:
    """The `objective` study attr, with how a study without it is read: by its directions."""
    n = len(study.directions)
    return {"objective": f"read as {objective_of(study)} from its {n} direction{'s' if n > 1 else ''}"}


def require(study_name: str, frozen: optuna.trial.FrozenTrial, attrs: Iterable[str], purpose: str) -> None:
    """A one-line ConfigError naming the first of `attrs` the trial lacks, and the likely reason."""
    for attr in attrs:
        if not has_record(frozen, attr):
            raise ConfigError(
                f"trial {frozen.number} of study '{study_name}' has no recorded "
                f"{RECORDED_AS.get(attr, attr)} (user attr '{attr}'): {_why(frozen)}, cannot {purpose}"
            )


def has_record(frozen: optuna.trial.FrozenTrial, attr: str) -> bool:
    """Whether the trial holds lorasweep's `attr`; a config must be a mapping naming the method and
    learning rate, as another tool may use the name `config` for something else."""
    if attr == "config":
        config = frozen.user_attrs.get("config")
        return isinstance(config, dict) and {"method", "learning_rate"} <= config.keys()
    return attr in frozen.user_attrs


def value_names(study: optuna.Study) -> list[str]:
    """The objectives' names: the study's metric names (lorasweep sets them), else value or value 0, 1..."""
    if study.metric_names:
        return list(study.metric_names)
    n = len(study.directions)
    return ["value"] if n == 1 else [f"value {i}" for i in range(n)]


def _why(frozen: optuna.trial.FrozenTrial) -> str:
    """Why a trial may lack an attr lorasweep records: its state, or it was not lorasweep's."""
    state = frozen.state
    if state == optuna.trial.TrialState.COMPLETE:
        # lorasweep has recorded the config and the metrics of every trial since its first version
        return "the trial was not written by lorasweep optimize (plain Optuna or another tool)"
    return {
        optuna.trial.TrialState.RUNNING: "the trial is still running (or its worker died)",
        optuna.trial.TrialState.WAITING: "the trial is queued and has not run",
        optuna.trial.TrialState.PRUNED: "the trial was pruned",
        optuna.trial.TrialState.FAIL: "the trial failed",
    }[state]


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:8])) + (", ..." if len(numbers) > 8 else "")
    return f"trial {shown}" if len(numbers) == 1 else f"{len(numbers)} trials ({shown})"
