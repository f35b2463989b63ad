"""Search efficiency: training steps to find a near-best configuration (issue 7, item 4).

    python benchmarks/search_efficiency.py grid    # every configuration, through the real CLI (~25 min)
    python benchmarks/search_efficiency.py table   # searches replayed on the grid, 3 seeds each

The question (SPACE below, on the embedded default): LoRA (rank 4/16/64, four LRs) or full FT (four
LRs), each with 0/20/40% replay, asked as `objective: constrained` (max learn with forget <= 0.1):
48 configurations. `grid` trains all of them once (a lorasweep study with every configuration
enqueued). Its best feasible learn defines the target: a search has found it when it completes a
configuration with forget <= 0.1 and learn within 0.02 of that best.

`table` then runs each search against the grid. Training on CPU is deterministic for a config and
seed (a recorded trial re-runs to the same learn and forget: tests/test_reproduce.py), so a trial
of a configuration the grid trained is replayed instead of trained again: lorasweep's own objective
runs unchanged (sampling, constraint, pruner), and only `run_trial` is answered from the grid
trial, intermediate evaluations included, so a pruner sees the learning curve the real trial
showed. A trial costs the steps it would have trained: all of them when it completes, up to the
pruning step when pruned, none when lorasweep prunes it as a duplicate of a completed trial.

Searches: lorasweep's sampler (TPE with lorasweep's defaults) without pruning, with the median
pruner and with Hyperband; Optuna's random sampler; the grid in a random order (a grid script does
not know where the best is; a seeded shuffle of the 48 is its expected case). Seeds 0, 1, 2 as the
issue asks, and 0-49 for a median that one lucky draw does not decide.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
from pathlib import Path

import optuna
import yaml
from pruning import steps as trial_steps  # benchmarks/pruning.py: how a trial's steps count

import lorasweep.objective
from lorasweep.objective import TRIAL_FAILURES, make_objective
from lorasweep.records import TrialResult, forget_of
from lorasweep.search_space import load_space
from lorasweep.study import open_study

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench"
STORAGE = f"sqlite:///{OUT / 'search_efficiency.db'}"
TOLERANCE = 0.1  # forget <= this is feasible
WITHIN = 0.02  # learn within this of the grid's best feasible counts as found
SPACE = {
    "objective": "constrained",
    "forget_tolerance": TOLERANCE,
    "config": {
        "batch_size": 16,
        "max_length": 64,
        "train_tokens": 150000,
        "schedule": "cosine",
        "warmup_ratio": 0.1,
        "alpha_ratio": 2.0,
        "target_modules": "all-linear",
    },
    "params": {
        "method": {"choices": ["lora", "full"]},
        "replay_ratio": {"low": 0.0, "high": 0.4, "step": 0.2},
        "lora_rank": {"field": "rank", "choices": [4, 16, 64], "when": {"method": "lora"}},
        "lora_learning_rate": {
            "field": "learning_rate",
            "choices": [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2],
            "when": {"method": "lora"},
        },
        "full_learning_rate": {
            "field": "learning_rate",
            "choices": [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3],
            "when": {"method": "full"},
        },
    },
}
ARMS = {  # what each search changes in SPACE
    "lorasweep TPE": {"sampler": {"name": "tpe"}, "pruner": {"name": "none"}},
    "lorasweep TPE + median": {"sampler": {"name": "tpe"}, "pruner": {"name": "median"}},
    "lorasweep TPE + hyperband": {"sampler": {"name": "tpe"}, "pruner": {"name": "hyperband"}},
    "random": {"sampler": {"name": "random"}, "pruner": {"name": "none"}},
}
MAX_TRIALS = 300  # a search that has not found the target by then is reported as not found


def space_file(name: str, changes: dict) -> Path:
    path = OUT / f"search_efficiency_{name.replace(' ', '_').replace('+', 'and')}.yaml"
    path.write_text(yaml.safe_dump({**SPACE, **changes}, sort_keys=False))
    return path


def grid_points() -> list[dict]:
    """Every configuration of SPACE, as Optuna params."""
    params = SPACE["params"]
    replay = params["replay_ratio"]
    count = round((replay["high"] - replay["low"]) / replay["step"]) + 1
    replays = [round(replay["low"] + i * replay["step"], 6) for i in range(count)]
    points = []
    for replay in replays:
        for lr in params["full_learning_rate"]["choices"]:
            points.append({"method": "full", "replay_ratio": replay, "full_learning_rate": lr})
        for rank in params["lora_rank"]["choices"]:
            for lr in params["lora_learning_rate"]["choices"]:
                points.append(
                    {"method": "lora", "replay_ratio": replay, "lora_rank": rank, "lora_learning_rate": lr}
                )
    return points


def grid(workers: int) -> None:
    """Train every configuration once: a lorasweep study with all of them enqueued."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = space_file("grid", {"sampler": {"name": "random"}, "pruner": {"name": "none"}})
    study = open_study("grid", STORAGE, load_space(path), seed=0)
    points = grid_points()
    for params in points:
        study.enqueue_trial(params, skip_if_exists=True)
    left = sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    command = ["lorasweep", "optimize", "--space", str(path), "--study", "grid", "--storage", STORAGE]
    command += ["--n-trials", str(left), "--workers", str(workers)]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def key(config: dict) -> tuple:
    """A configuration by the fields SPACE searches (rank counts for LoRA only)."""
    rank = config["rank"] if config["method"] == "lora" else None
    return config["method"], round(config["replay_ratio"], 6), rank, config["learning_rate"]


def load_grid() -> dict[tuple, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="grid", storage=STORAGE)
    done = [t for t in study.trials if t.state.is_finished()]
    if len(done) < len(grid_points()):
        raise SystemExit(f"the grid has {len(done)} of {len(grid_points())} trials: run `grid` first")
    return {key(t.user_attrs["config"]): t for t in done}


def target(table: dict[tuple, optuna.trial.FrozenTrial]) -> float:
    feasible = [
        t.values[0]
        for t in table.values()
        if t.state == optuna.trial.TrialState.COMPLETE and forget_of(t) <= TOLERANCE
    ]
    return max(feasible) - WITHIN


def found(trial: optuna.trial.FrozenTrial, goal: float) -> bool:
    return (
        trial.state == optuna.trial.TrialState.COMPLETE
        and forget_of(trial) <= TOLERANCE
        and trial.values[0] >= goal
    )


def replayed_run_trial(table: dict[tuple, optuna.trial.FrozenTrial]):
    """`run_trial`, answered from the grid trial of the same configuration."""

    def run_trial(config, on_step=None, on_eval=None, cache_dir=None):
        recorded = table[key(config.to_dict())]
        if recorded.state != optuna.trial.TrialState.COMPLETE:
            raise TRIAL_FAILURES[0](recorded.user_attrs.get("fail_reason", "failed in the grid"))
        learn, forget = recorded.user_attrs["learn_curve"], recorded.user_attrs["forget_curve"]
        for step in sorted(learn, key=int)[:-1]:  # the last point is the final evaluation
            on_eval(int(step), learn[step], forget[step])
        return TrialResult.from_attrs(recorded.user_attrs)

    return run_trial


def search(arm: str, seed: int, table: dict, goal: float) -> tuple[int | None, int]:
    """(training steps until the target was found or None, trials run) for one seeded search."""
    space = load_space(space_file(arm, ARMS[arm]))
    study = open_study(f"{arm}-{seed}", optuna.storages.InMemoryStorage(), space, seed=seed)
    objective = make_objective(space)
    steps = 0
    for _ in range(MAX_TRIALS):
        study.optimize(objective, n_trials=1, catch=TRIAL_FAILURES)
        trial = study.trials[-1]
        steps += trial_steps(trial)
        if found(trial, goal):
            return steps, len(study.trials)
    return None, len(study.trials)


def grid_search(seed: int, table: dict, goal: float) -> tuple[int, int]:
    """The grid in a seeded random order: steps and trials until the target."""
    order = list(table.values())
    random.Random(seed).shuffle(order)
    steps = 0
    for number, trial in enumerate(order, start=1):
        steps += trial_steps(trial)
        if found(trial, goal):
            return steps, number
    raise AssertionError("the grid always contains its own best")


def table(seeds: int) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    grid_trials = load_grid()
    goal = target(grid_trials)
    full_grid = sum(trial_steps(t) for t in grid_trials.values())
    near = sorted(
        (k for k, t in grid_trials.items() if found(t, goal)), key=lambda k: -grid_trials[k].values[0]
    )
    print(f"grid: {len(grid_trials)} configurations, {full_grid:,} training steps in all")
    print(f"best feasible learn {goal + WITHIN:.3f}; found = learn >= {goal:.3f} with forget <= {TOLERANCE}")
    for k in near:
        t = grid_trials[k]
        print(f"  {k}: learn {t.values[0]:.3f}, forget {t.user_attrs['forget']:+.3f}")
    lorasweep.objective.run_trial = replayed_run_trial(grid_trials)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    results = {"grid (random order)": [grid_search(s, grid_trials, goal) for s in range(seeds)]}
    for arm in ARMS:
        results[arm] = [search(arm, s, grid_trials, goal) for s in range(seeds)]

    def median(runs: list) -> float:
        return statistics.median(s if s is not None else float("inf") for s, _ in runs)

    grid3, grid_all = median(results["grid (random order)"][:3]), median(results["grid (random order)"])
    print()
    print(
        "| search | steps (trials), seeds 0 / 1 / 2 | median, 3 seeds | vs grid | "
        f"median, {seeds} seeds | vs grid |"
    )
    print("|---|---|---|---|---|---|")
    for arm, runs in results.items():
        first = " / ".join(f"{s:,} ({n})" if s is not None else f"not found ({n})" for s, n in runs[:3])
        m3, m_all = median(runs[:3]), median(runs)
        print(f"| {arm} | {first} | {m3:,.0f} | {m3 / grid3:.2f}x | {m_all:,.0f} | {m_all / grid_all:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("grid", help="train every configuration once")
    run.add_argument("--workers", type=int, default=2)
    show = sub.add_parser("table", help="replay the searches on the grid")
    show.add_argument("--seeds", type=int, default=50)
    args = parser.parse_args()
    if args.command == "grid":
        grid(args.workers)
    else:
        table(args.seeds)


if __name__ == "__main__":
    main()
