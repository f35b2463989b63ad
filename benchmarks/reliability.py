"""Reliability: workers killed mid-trial, and what the study looks like afterwards (BENCHMARKS.md).

    python benchmarks/reliability.py                                   # SQLite, results/bench/
    python benchmarks/reliability.py --storage postgresql://USER@HOST:PORT/DB

Runs `lorasweep optimize --workers W --n-trials N` on a small generated world (trials of a few
seconds: this measures the harness, not learning) and SIGKILLs one worker in the middle of a
trial, `--kills` times in a row (each after the previous kill's trial was taken over). Reports the
trials run, the faults injected, the trials lost (the run's total minus the trials that count:
must be 0), RUNNING leftovers, and for each kill the recovery time: from the kill to the start of
its retry on another worker (about the grace period, plus the wait for a worker to be free).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
import yaml

from lorasweep.workers import tally

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench"
WORLD = {"n_general": 60, "n_domain": 16, "hidden_size": 64, "n_layers": 2, "n_heads": 4, "max_length": 32}
SPACE = {
    "config": {"batch_size": 8, "max_length": 32, "train_tokens": 40_000, "eval_points": 2, "world": WORLD},
    "params": {
        "method": {"choices": ["lora", "full"]},
        "rank": {"type": "int", "low": 2, "high": 16, "log": True, "when": {"method": "lora"}},
        "learning_rate": {"low": 3.0e-4, "high": 3.0e-2, "log": True},
    },
    "sampler": {"name": "random"},
}


def running_claimed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    return [t for t in running if "worker" in t.user_attrs]


def main() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", default=f"sqlite:///{OUT / 'reliability.db'}")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--n-trials", type=int, default=18)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--heartbeat-interval", type=int, default=5)
    parser.add_argument("--grace-period", type=int, default=20)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    study_name = f"reliability-{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.yaml"
        space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
        command = [
            sys.executable,
            "-m",
            "lorasweep",
            "optimize",
            "--space",
            str(space),
            "--study",
            study_name,
        ]
        command += [
            "--storage",
            args.storage,
            "--workers",
            str(args.workers),
            "--n-trials",
            str(args.n_trials),
        ]
        command += [
            "--heartbeat-interval",
            str(args.heartbeat_interval),
            "--grace-period",
            str(args.grace_period),
        ]
        started = time.monotonic()
        parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        recoveries = []
        for _ in range(args.kills):
            victim = None
            while victim is None and parent.poll() is None:
                time.sleep(0.2)
                try:
                    study = optuna.load_study(study_name=study_name, storage=args.storage)
                except KeyError:
                    continue
                # a trial that has been training for a second, run by a worker not killed before
                victim = next(
                    (t for t in running_claimed(study) if time.time() - t.datetime_start.timestamp() > 1),
                    None,
                )
            if victim is None:
                break
            os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
            killed = time.time()
            retry = None
            while retry is None and parent.poll() is None:
                time.sleep(0.2)
                retry = next(
                    (
                        t
                        for t in study.get_trials(deepcopy=False)
                        if t.user_attrs.get("retry_of") == victim.number and t.datetime_start
                    ),
                    None,
                )
            if retry is not None:
                recoveries.append(retry.datetime_start.timestamp() - killed)
        _, stderr = parent.communicate()
        wall = time.monotonic() - started
    study = optuna.load_study(study_name=study_name, storage=args.storage)
    trials = study.trials
    states = [t.state.name for t in trials]
    # what the run counts, as its workers count it (a killed trial that was retried counts no more)
    counted, _ = tally(study, trials[0].user_attrs["run"])
    scheme = args.storage.split(":", 1)[0]
    print(f"exit {parent.returncode}; {stderr.strip().splitlines()[-1] if stderr.strip() else ''}")
    print(
        "| storage | workers | trials asked | trials in study | complete | faults injected | trials lost | RUNNING left | recovery (s) | wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {scheme} | {args.workers} | {args.n_trials} | {len(trials)} | {states.count('COMPLETE')} | "
        f"{len(recoveries)} SIGKILL mid-trial | {args.n_trials - counted} | {states.count('RUNNING')} | "
        f"{', '.join(f'{r:.0f}' for r in recoveries)} | {wall:.0f} |"
    )


if __name__ == "__main__":
    main()
