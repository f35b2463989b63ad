"""What lorasweep records on a study and its trials, and how a command says what a study lacks.

A study written by plain Optuna, or by an older lorasweep, carries only part of lorasweep's user
attrs. The commands that only read a study (best, report) show what they can and name each attr
they had to do without, with what they did instead; the commands that train a trial again
(reproduce, export) need its recorded config and metrics and stop with one line naming the
missing attr. All of them ask this module, so every command names a missing attr the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import optuna

from lorasweep.config import ConfigError
from lorasweep.study import objective_of

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
