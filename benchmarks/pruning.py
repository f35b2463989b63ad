"""Pruning: what it saves and what it costs, on the embedded default (the figures in BENCHMARKS.md).

    python benchmarks/pruning.py run          # the five studies below, through the real CLI
    python benchmarks/pruning.py table        # the tables, from results/bench/pruning.db

The question of search_spaces/mixture.yaml (method, replay ratio, learning rate), asked two ways:
- constrained (max learn, forget <= 0.1), TPE with seed 0: no pruner vs median vs Hyperband;
- pareto (learn up, forget down), random sampler with seed 0: no pruner vs the dominance pruner.
The random sampler draws the same configurations in both pareto studies, so the pruned study can
be checked trial by trial: no trial on the unpruned study's Pareto front may have been pruned.

Training steps are counted per trial: all of them for a completed or failed trial, up to the
pruning step for a pruned one. `run` skips studies that already have their trials.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import yaml

from lorasweep.records import forget_of

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench"
STORAGE = f"sqlite:///{OUT / 'pruning.db'}"
TRIALS = 24
TOLERANCE = 0.1
ARMS = {
    "constrained-none": {"objective": "constrained", "pruner": {"name": "none"}},
    "constrained-median": {"objective": "constrained", "pruner": {"name": "median"}},
    "constrained-hyperband": {"objective": "constrained", "pruner": {"name": "hyperband"}},
    "pareto-none": {"pruner": {"name": "none"}, "sampler": {"name": "random"}},
    "pareto-dominance": {"pruner": {"name": "dominance"}, "sampler": {"name": "random"}},
}


def space_file(arm: str) -> Path:
    space = yaml.safe_load((ROOT / "search_spaces" / "mixture.yaml").read_text())
    space.update(ARMS[arm])
    if space.get("objective") == "constrained":
        space["forget_tolerance"] = TOLERANCE
    path = OUT / f"{arm}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for arm in ARMS:
        done = 0
        if arm in optuna.get_all_study_names(STORAGE):
            done = sum(
                t.state.is_finished() for t in optuna.load_study(study_name=arm, storage=STORAGE).trials
            )
        if done >= TRIALS:
            continue
        command = ["lorasweep", "optimize", "--space", str(space_file(arm)), "--study", arm]
        command += ["--storage", STORAGE, "--n-trials", str(TRIALS - done), "--seed", "0"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)


def steps(trial: optuna.trial.FrozenTrial) -> int:
    attrs = trial.user_attrs
    if trial.state == optuna.trial.TrialState.PRUNED:
        return int(attrs["pruned_at_step"])
    if "train_steps" in attrs:
        return int(attrs["train_steps"])
    config = attrs["config"]  # a failed trial: count its whole budget
    return round(config["train_tokens"] / (config["batch_size"] * config["max_length"]))


def feasible_learn(trials: list[optuna.trial.FrozenTrial]) -> float:
    learns = [t.values[0] for t in trials if t.state.name == "COMPLETE" and forget_of(t) <= TOLERANCE]
    return max(learns, default=float("nan"))


def pareto_numbers(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return {
        t.number
        for t in complete
        if not any(
            o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values
            for o in complete
        )
    }


def table() -> None:
    studies = {arm: optuna.load_study(study_name=arm, storage=STORAGE).trials for arm in ARMS}
    reference = sum(steps(t) for t in studies["constrained-none"])
    print(f"### constrained (max learn, forget <= {TOLERANCE}), TPE seed 0, {TRIALS} trials\n")
    print("| pruner | complete | pruned | failed | training steps | vs no pruning | best feasible learn |")
    print("|---|---|---|---|---|---|---|")
    for arm in ("constrained-none", "constrained-median", "constrained-hyperband"):
        print(row(arm, studies[arm], reference) + f" {feasible_learn(studies[arm]):.3f} |")
    reference = sum(steps(t) for t in studies["pareto-none"])
    print(f"\n### pareto (learn, forget), random sampler seed 0, {TRIALS} trials\n")
    print("| pruner | complete | pruned | failed | training steps | vs no pruning | Pareto front |")
    print("|---|---|---|---|---|---|---|")
    for arm in ("pareto-none", "pareto-dominance"):
        front = sorted(pareto_numbers(studies[arm]))
        print(row(arm, studies[arm], reference) + f" trials {front} |")
    unpruned, pruned = studies["pareto-none"], studies["pareto-dominance"]
    same = all(a.params == b.params for a, b in zip(unpruned, pruned, strict=True))
    lost = [n for n in pareto_numbers(unpruned) if pruned[n].state.name != "COMPLETE"]
    print(
        f"\nsame configurations in both pareto studies: {same}; unpruned front trials pruned: {lost or 'none'}"
    )


def row(arm: str, trials: list[optuna.trial.FrozenTrial], reference: int) -> str:
    states = [t.state.name for t in trials]
    total = sum(steps(t) for t in trials)
    name = arm.split("-", 1)[1]
    return (
        f"| {name} | {states.count('COMPLETE')} | {states.count('PRUNED')} | {states.count('FAIL')} "
        f"| {total:,} | {total / reference:.2f}x |"
    )


if __name__ == "__main__":
    {"run": run, "table": table}[sys.argv[1] if len(sys.argv) > 1 else "run"]()
