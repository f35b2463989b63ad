"""Soak: a sweep with workers SIGKILLed at random instants and its database restarted (BENCHMARKS.md).

    python benchmarks/reliability.py                       # SQLite, kills only, results/bench/

    # PostgreSQL with restarts: a private cluster (as root, prefix initdb and pg_ctl with
    # `runuser -u postgres --` and give that user the directory)
    initdb -D /tmp/pg -U lorasweep --auth=trust
    pg_ctl -D /tmp/pg -o "-p 5433 -k /tmp -c listen_addresses=127.0.0.1" -l /tmp/pg.log -w start
    python benchmarks/reliability.py --storage postgresql://lorasweep@127.0.0.1:5433/postgres \\
        --restart-command "pg_ctl -D /tmp/pg -m fast -w restart" --restarts 2

Runs `lorasweep optimize --workers W --n-trials N` on a small generated world (trials of a few
seconds: this measures the harness, not learning) while a seeded schedule SIGKILLs a random worker
every 1-6 s (`--kills`; at any instant of a trial's life, or between trials) and runs
`--restart-command` `--restarts` times in between. Then it reads the study and reports: the trials
the run asked for and those in the study, complete, failed (and of those, run again: all must
be), recorded from a killed worker's kept result, lost (asked but not counted: must be 0),
duplicated (a configuration completed twice by accident: must be 0), RUNNING or WAITING left
(must be 0), and the longest pause between two finished trials.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
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


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (the workers of a `--workers` run)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def inject(parent: subprocess.Popen, args, rng: random.Random) -> tuple[int, int]:
    """SIGKILL a random worker every 1-6 s, `--kills` times, with the restarts spread among them."""
    kills = restarts = 0
    restart_at = {round((k + 1) * args.kills / (args.restarts + 1)) for k in range(args.restarts)}
    while kills < args.kills and parent.poll() is None:
        time.sleep(rng.uniform(1, 6))
        workers = children(parent.pid)
        if not workers or parent.poll() is not None:
            continue
        os.kill(rng.choice(workers), signal.SIGKILL)
        kills += 1
        if kills in restart_at and args.restart_command:
            # not captured: the server it starts would hold the pipes open
            subprocess.run(shlex.split(args.restart_command), check=True, stdout=subprocess.DEVNULL)
            restarts += 1
    return kills, restarts


def main() -> None:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", default=f"sqlite:///{OUT / 'reliability.db'}")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--n-trials", type=int, default=100)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument(
        "--restart-command", help="restarts the database, e.g. pg_ctl -D DIR -m fast -w restart"
    )
    parser.add_argument("--restarts", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="of the fault schedule")
    parser.add_argument("--heartbeat-interval", type=int, default=2)
    parser.add_argument("--grace-period", type=int, default=10)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    name = f"soak-{int(time.time())}"
    with tempfile.TemporaryDirectory() as tmp:
        space = Path(tmp) / "space.yaml"
        space.write_text(yaml.safe_dump(SPACE, sort_keys=False))
        command = [sys.executable, "-m", "lorasweep", "optimize", "--space", str(space), "--study", name]
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
        command += ["--replicates", "0"]
        started = time.monotonic()
        parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        kills, restarts = inject(parent, args, random.Random(args.seed))
        _, stderr = parent.communicate()
        wall = time.monotonic() - started
    study = optuna.load_study(study_name=name, storage=args.storage)
    trials = study.trials
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    # every failed trial (a killed worker's) must have been run again: it is in a retry's history
    run_again = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    failed = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL]
    recovered = sum("result_recovered_by" in t.user_attrs for t in complete)
    # a configuration completed twice (the sampler's own repeats are pruned as duplicates)
    duplicated = len(complete) - len({tuple(sorted(t.params.items())) for t in complete})
    counted, _ = tally(study, trials[0].user_attrs["run"])
    ends = sorted(t.datetime_complete.timestamp() for t in trials if t.datetime_complete)
    pause = max(b - a for a, b in itertools.pairwise(ends))
    errors = [line for line in stderr.splitlines() if "Traceback" in line or line.startswith("error")]
    print(f"exit {parent.returncode}; {len(errors)} error lines; stderr:\n{stderr.strip()}")
    print(
        "| storage | workers | trials asked | in study | complete | failed (run again) | recorded from a "
        "kept result | lost | duplicated | RUNNING/WAITING left | SIGKILLs | DB restarts | longest pause (s) "
        "| wall (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.storage.split(':', 1)[0]} | {args.workers} | {args.n_trials} | {len(trials)} | "
        f"{states['COMPLETE']} | {len(failed)} ({len(run_again & set(failed))}) | {recovered} | {args.n_trials - counted} | {duplicated} | "
        f"{states['RUNNING']}/{states['WAITING']} | {kills} | {restarts} | {pause:.0f} | {wall:.0f} |"
    )


if __name__ == "__main__":
    main()
