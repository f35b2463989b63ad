"""Several worker processes on one study: `lorasweep optimize --workers N [--devices 0,1,...]`.

    lorasweep optimize --workers 4 --devices 0,1,2,3          # one worker per GPU
    lorasweep optimize --workers 2                             # two CPU workers, a core set each
    lorasweep optimize --storage postgresql://... --workers 8  # the same command on every machine

Each worker is the same `lorasweep optimize` command run as a child process on the shared Optuna
storage, with its own sampler seed, its own CPU cores (two torch processes on the same cores slow
each other down ~10x) and, with `--devices`, its own GPU (`CUDA_VISIBLE_DEVICES`). The parent only
starts them, prints the study's trials as they finish and passes Ctrl-C and SIGTERM on.

`--n-trials` is what one run adds to the study, across its workers: every trial is tagged with its
run, and the workers take trials until the run has that many (`run_trials`). A worker that dies
mid-trial leaves its trial RUNNING; heartbeats (study.py) fail it after the grace period and queue
it again, and the other workers wait for that before they stop, so the run still reaches its total.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import optuna
import typer
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lorasweep.claim_lock import claim_lock
from lorasweep.optuna_private import heartbeats_enabled
from lorasweep.validation import ConfigError

SEED_STRIDE = 1_000_003  # worker i samples with seed + i * SEED_STRIDE: no two workers draw alike
CPUS_ENV = "LORASWEEP_CPUS"  # the cores a worker pins itself to (`pin_cpus`), e.g. "0,1"
RUN_ENV = "LORASWEEP_RUN"  # the run whose trials a worker counts (its parent's)
POLL_S = 2.0  # how often a worker that has nothing left to start looks at the study


INTERRUPTED = "interrupted: the running {} marked failed; run again to resume"
# options the parent sets per worker (or that only the parent reads), never passed on as given;
# replicates: workers only run trials, the parent queues the replicates after the search
PER_WORKER = ("workers", "devices", "n_trials", "seed", "replicates", "timeout")


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a trial: Optuna marks the trial failed, the command exits cleanly."""


def check_run(n_trials: int, timeout: float | None, workers: int, devices: str | None) -> list[str] | None:
    """A one-line ConfigError for a run's options that no type check catches; the GPUs of --devices."""
    if n_trials < 1:
        raise ConfigError(f"--n-trials is {n_trials}; allowed: an integer >= 1")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout is {timeout}; allowed: a number of seconds > 0")
    if workers < 1:
        raise ConfigError(f"--workers is {workers}; allowed: an integer >= 1")
    gpus = devices.split(",") if devices else None
    if gpus is not None and (len(gpus) != workers or not all(g.strip().isdigit() for g in gpus)):
        raise ConfigError(f"--devices '{devices}': allowed: {workers} GPU indices, one per worker, e.g. 0,1")
    return gpus


def worker_command(ctx: typer.Context) -> list[str]:
    """The optimize command a worker runs: this one, with every option as given, less PER_WORKER.

    Built from the command's own options, so an option added to `optimize` reaches the workers.
    """
    argv = [sys.executable, "-m", "lorasweep", ctx.command.name]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name != "option" or param.name in PER_WORKER or value is None:
            continue
        if param.is_flag:
            argv += param.opts[:1] if value else param.secondary_opts[:1]
        else:
            argv += [param.opts[0], str(value)]
    return argv


def run_sweep(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    command: Sequence[str],
    n_trials: int,
    timeout: float | None,
    seed: int,
    workers: int,
    devices: Sequence[str] | None,
    on_trial: Callable[[optuna.trial.FrozenTrial], None],
    **optimize_kwargs: Any,
) -> tuple[int, str]:
    """This run's `n_trials` trials: here, or in `workers` processes that run `command` (`--workers`).

    Returns (exit code, what to tell the user), as `run_workers` does.
    """
    if workers > 1:
        return run_workers(command, n_trials, timeout, workers, seed, devices, study, on_trial)
    callbacks = [lambda _study, frozen: on_trial(frozen)]
    code = run_here(study, objective, n_trials, timeout, callbacks=callbacks, **optimize_kwargs)
    return code, INTERRUPTED.format("trial is") if code else ""


def run_here(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    timeout: float | None,
    **optimize_kwargs: Any,
) -> int:
    """`run_trials` in this process; returns 0, or 130/143 when Ctrl-C/SIGTERM ended it.

    SIGTERM (a scheduler, `kill`) ends the run like Ctrl-C: the running trial is marked failed
    with the reason, and the study stays consistent for the next optimize. Ctrl-C raises our
    KeyboardInterrupt subclass too: after a plain KeyboardInterrupt, even one caught, CPython may
    end the process by SIGINT (-2) instead of exiting 130 (it marks one raised inside exec'd source
    as unhandled; about half of our test interrupts).
    """

    def interrupt(signum: int, _frame) -> None:
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_trials(study, objective, n_trials, timeout, **optimize_kwargs)
    except KeyboardInterrupt as err:
        return 143 if str(err) == "SIGTERM" else 130
    finally:  # a caller's own handlers (the CLI run in-process, a notebook) come back
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(sig, handler)
    return 0


def is_worker() -> bool:
    """Whether this process is a worker that `run_workers` started (its parent reports)."""
    return RUN_ENV in os.environ


def pin_cpus() -> None:
    """In a worker: run on the cores the parent gave it (torch then uses that many threads)."""
    cpus = os.environ.get(CPUS_ENV)
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})


def cpu_sets(workers: int, cores: Sequence[int] | None = None) -> list[list[int]]:
    """Disjoint core sets, one per worker; with more workers than cores, cores are shared in turn."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    return [cores[i * len(cores) // workers : (i + 1) * len(cores) // workers] for i in range(workers)]


def tally(study: optuna.Study, run: str) -> tuple[int, int]:
    """(trials that count toward `run`, those of them still running).

    A trial counts once it is claimed by the run; a failed trial that heartbeats queued again
    counts no more (its retry counts for the run that runs it).
    """
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    mine = [t for t in trials if t.user_attrs.get("run") == run and t.state != TrialState.WAITING]
    counted = [t for t in mine if not (t.state == TrialState.FAIL and t.number in retried)]
    return len(counted), sum(t.state == TrialState.RUNNING for t in mine)


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    timeout: float | None = None,
    before_trial: Callable[[optuna.Study], bool] | None = None,
    **optimize_kwargs: Any,
) -> None:
    """Optuna's `study.optimize`, one trial at a time, until this run has `n_trials` trials.

    The run is the parent's (`LORASWEEP_RUN`) in a worker, a new one otherwise. A trial taken
    from Optuna's queue (a baseline, a dead worker's trial) counts like a new one. Processes claim
    trials under the study's claim lock (claim_lock.py), so a run's workers never start more than
    `n_trials` between them, and processes of other runs, here or on other machines, see every
    trial the one before them created; with
    heartbeats on, a worker with nothing left to start waits while the run's other trials are
    running, to take over any whose worker dies. `before_trial(study)` runs under the same lock
    just before each trial starts (study.queue_arm: which arm it belongs to); when it returns
    False, the run has nothing to start (its replicates were all taken).
    """
    run = os.environ.get(RUN_ENV) or uuid.uuid4().hex[:12]
    worker = f"{socket.gethostname()}:{os.getpid()}"
    heartbeats = heartbeats_enabled(study)
    start = time.monotonic()
    while timeout is None or time.monotonic() - start < timeout:
        with claim_lock(study) as release:
            counted, running = tally(study, run)
            if counted < n_trials and (before_trial is None or before_trial(study)):

                def claimed(trial: optuna.Trial, release=release) -> Any:
                    trial.set_user_attr("run", run)
                    trial.set_user_attr("worker", worker)
                    release()  # the trial counts now: the next process may claim
                    return objective(trial)

                study.optimize(claimed, n_trials=1, **optimize_kwargs)
                continue
        if not (heartbeats and running):
            return
        time.sleep(POLL_S)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trial, queued again


def run_workers(
    command: Sequence[str],
    n_trials: int,
    timeout: float | None,
    workers: int,
    seed: int,
    devices: Sequence[str] | None,
    study: optuna.Study,
    on_trial: Callable[[optuna.trial.FrozenTrial], None],
) -> tuple[int, str]:
    """Run `command` (an optimize command) as `workers` processes that add `n_trials` between them.

    Returns (exit code, what to tell the user): 130/143 when Ctrl-C/SIGTERM was passed on; 0 once
    the run has its trials, with a word on any worker that died on the way; else the exit code and
    log of a failed worker.
    """
    run = uuid.uuid4().hex[:12]
    workers = min(workers, n_trials)
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    with ExitStack() as stack:
        logdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logs = [stack.enter_context((logdir / f"worker{i}.log").open("w+")) for i in range(workers)]
        procs = []
        for i, (cpus, log) in enumerate(zip(cpu_sets(workers), logs)):
            env = {**os.environ, CPUS_ENV: ",".join(map(str, cpus)), RUN_ENV: run}
            if devices:
                env["CUDA_VISIBLE_DEVICES"] = devices[i]
            argv = [*command, "--n-trials", str(n_trials), "--seed", str(seed + i * SEED_STRIDE)]
            argv += ["--replicates", "0"] + (["--timeout", str(timeout)] if timeout is not None else [])
            # a new session: Ctrl-C reaches the parent only, which passes it on once
            procs.append(
                subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
            )
        received = _watch(procs, study, seen, on_trial)
        if received:
            return (143 if received[0] == signal.SIGTERM else 130), INTERRUPTED.format("trials are")
        failed = [
            (i, proc.returncode, log) for i, (proc, log) in enumerate(zip(procs, logs)) if proc.returncode
        ]
        if not failed:
            return 0, ""
        i, code, log = failed[0]
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        if tally(study, run)[0] >= n_trials:
            return 0, f"worker {i} stopped ({how}); the other workers took over its trials"
        log.seek(0)
        return (code if code > 0 else 1), f"worker {i} failed ({how}):\n{log.read().strip()[-2000:]}"


def _watch(procs, study, seen, on_trial) -> list[int]:
    """Print trials as they finish until every worker has ended; the signals passed on."""
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
                return received
            time.sleep(1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
