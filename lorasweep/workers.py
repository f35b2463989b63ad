"""Several worker processes on one study: `lorasweep optimize --workers N [--devices 0,1,...]`.

    lorasweep optimize --workers 4 --devices 0,1,2,3          # one worker per GPU
    lorasweep optimize --workers 2                             # two CPU workers, a core set each
    lorasweep optimize --storage postgresql://... --workers 8  # the same command on every machine

Each worker is the same `lorasweep optimize` command run as a child process on the shared Optuna
storage, with its share of `--n-trials`, its own sampler seed, its own CPU cores (two torch
processes on the same cores slow each other down ~10x) and, with `--devices`, its own GPU
(`CUDA_VISIBLE_DEVICES`). The parent only starts them, prints the study's trials as they finish
and passes Ctrl-C and SIGTERM on; heartbeats (study.py) take care of a worker that dies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import optuna

SEED_STRIDE = 1_000_003  # worker i samples with seed + i * SEED_STRIDE: no two workers draw alike
CPUS_ENV = "LORASWEEP_CPUS"  # the cores a worker pins itself to (`pin_cpus`), e.g. "0,1"


def pin_cpus() -> None:
    """In a worker: run on the cores the parent gave it (torch then uses that many threads)."""
    cpus = os.environ.get(CPUS_ENV)
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def shares(n_trials: int, workers: int) -> list[int]:
    """Trials per worker: `n_trials` in all, as even as possible."""
    return [n_trials // workers + (i < n_trials % workers) for i in range(workers)]


def cpu_sets(workers: int, cores: Sequence[int] | None = None) -> list[list[int]]:
    """Disjoint core sets, one per worker; with more workers than cores, cores are shared in turn."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    return [cores[i * len(cores) // workers : (i + 1) * len(cores) // workers] for i in range(workers)]


def run_workers(
    command: Sequence[str],
    n_trials: int,
    workers: int,
    seed: int,
    devices: Sequence[str] | None,
    study: optuna.Study,
    on_trial: Callable[[optuna.trial.FrozenTrial], None],
) -> tuple[int, str]:
    """Run `command` (an optimize command) as `workers` processes sharing `n_trials`, to the end.

    Returns (exit code, stderr of a failed worker); 130/143 when Ctrl-C/SIGTERM was passed on.
    """
    commands = [
        [*command, "--n-trials", str(share), "--seed", str(seed + i * SEED_STRIDE)]
        for i, share in enumerate(shares(n_trials, workers))
        if share
    ]
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    with ExitStack() as stack:
        logdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logs = [stack.enter_context((logdir / f"worker{i}.log").open("w+")) for i in range(len(commands))]
        procs = []
        for i, (argv, cpus, log) in enumerate(zip(commands, cpu_sets(len(commands)), logs)):
            env = {**os.environ, CPUS_ENV: ",".join(map(str, cpus))}
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = devices[i]
            # a new session: Ctrl-C reaches the parent only, which passes it on once
            procs.append(
                subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            )
        return _watch(procs, logs, study, seen, on_trial)


def _watch(procs, logs, study, seen, on_trial) -> tuple[int, str]:
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            running = [p for p in procs if p.poll() is None]
            for t in study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    on_trial(t)
            if not running:
                break
            time.sleep(1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        return (143 if received[0] == signal.SIGTERM else 130), ""
    for proc, log in zip(procs, logs):
        if proc.returncode != 0:
            log.seek(0)
            return proc.returncode, log.read()
    return 0, ""
