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
from lorasweep.optuna_private import heartbeats_enabled, set_waiting_attrs
from lorasweep.search_space import SearchSpace
from lorasweep.storages import EXIT_UNAVAILABLE, StorageUnavailable
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


def check_run(
    n_trials: int, timeout: float | None, workers: int, devices: str | None, shards: int = 1
) -> list[str] | None:
    """A one-line ConfigError for a run's options that no type check catches; with --devices, the
    GPUs of each worker (`shards` of them: the most devices one trial of the space takes)."""
    if n_trials < 1:
        raise ConfigError(f"--n-trials is {n_trials}; allowed: an integer >= 1")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout is {timeout}; allowed: a number of seconds > 0")
    if workers < 1:
        raise ConfigError(f"--workers is {workers}; allowed: an integer >= 1")
    if devices is None:
        return None
    gpus = [g.strip() for g in devices.split(",")]
    if len(gpus) != workers * shards or not all(g.isdigit() for g in gpus):
        each = "one per worker" if shards == 1 else f"{shards} per worker (fsdp_shards {shards})"
        example = ",".join(map(str, range(workers * shards)))
        raise ConfigError(
            f"--devices '{devices}': allowed: {workers * shards} GPU indices, {each}, e.g. {example}"
        )
    return [",".join(gpus[i * shards : (i + 1) * shards]) for i in range(workers)]


def shards_of(space: SearchSpace) -> int:
    """The most devices one trial of the space takes: its fsdp_shards, fixed or searched."""
    values = [space.config.get("fsdp_shards", 1)]
    for param in space.params:
        if param.field == "fsdp_shards":
            values += param.choices if param.kind == "categorical" else [param.high]
    return int(max(values))


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
    callbacks = [*optimize_kwargs.pop("callbacks", ()), lambda _study, frozen: on_trial(frozen)]
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
    recover: Callable[[optuna.Study], None] | None = None,
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
    False, the run has nothing to start (its replicates were all taken). `recover(study)` runs
    under the lock first, before stale trials are failed: it records the results that stopped
    processes left on this machine (pending.record_kept), so their trials are not trained again.
    """
    run = os.environ.get(RUN_ENV) or uuid.uuid4().hex[:12]
    tags = {"run": run, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    heartbeats = heartbeats_enabled(study)
    start = time.monotonic()
    while timeout is None or time.monotonic() - start < timeout:
        with claim_lock(study) as release:
            if recover is not None:
                recover(study)
            if heartbeats:
                optuna.storages.fail_stale_trials(study)  # a dead worker's trial, queued again
            counted, running = tally(study, run)
            if counted < n_trials and (before_trial is None or before_trial(study)):
                tag_next(study, tags)

                def claimed(trial: optuna.Trial, release=release) -> Any:
                    for key, value in tags.items():  # another process took the trial tagged
                        if trial.user_attrs.get(key) != value:  # (a lock lost in an outage)
                            trial.set_user_attr(key, value)
                    release()  # the trial counts now: the next process may claim
                    return objective(trial)

                try:
                    study.optimize(claimed, n_trials=1, **optimize_kwargs)
                except Exception as err:
                    outage = _outage_within(err)
                    if outage is None:
                        raise
                    raise outage from None
                continue
        if not (heartbeats and running):
            return
        time.sleep(POLL_S)


def _outage_within(err: BaseException) -> StorageUnavailable | None:
    """The storage outage behind `err`, if any. When a storage call in Optuna's tell outlasts the
    wait, Optuna's own clean-up (a `finally` that reads a result never assigned) raises an
    UnboundLocalError over our StorageUnavailable: the outage is what the user must hear about."""
    while err is not None:
        if isinstance(err, StorageUnavailable):
            return err
        err = err.__context__
    return None


def tag_next(study: optuna.Study, attrs: dict[str, str]) -> None:
    """Tag the trial this process starts next with `attrs` (its run and worker) while it still
    waits in Optuna's queue, which `study.ask` empties oldest first; queue a blank one if none
    waits (a plain WAITING trial, not `enqueue_trial`'s fixed params, so samplers treat it as a
    new trial). So from the instant a trial is RUNNING it names its run: if its worker dies then,
    the run counts it, waits for the heartbeat to fail it, and runs it again. (Tagged after
    `ask`, a worker killed in between left a trial no run waited for.)
    """
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting:
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs=attrs))
        return
    set_waiting_attrs(study, waiting[0], attrs)


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

    A worker SIGKILLed by someone else (the kernel's OOM killer, an operator, a scheduler) is
    replaced, with a sampler seed of its own, while the run still lacks trials or waits for
    running ones, up to `n_trials` times: the run keeps its workers and its pace. One that exits
    with an error or crashes is not (it would again). Returns (exit code, what to tell the user):
    130/143 when Ctrl-C/SIGTERM was passed on; 0 once the run has its trials, with a word on any
    worker killed on the way; 75 when the storage stayed unreachable before that; else the exit
    code and log of a failed worker.
    """
    run = uuid.uuid4().hex[:12]
    workers = min(workers, n_trials)
    started = time.monotonic()
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    starts = [0] * workers  # processes started in each worker's place

    def start(i: int, log) -> subprocess.Popen | None:
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if left is not None and left <= 0:
            return None
        env = {**os.environ, CPUS_ENV: ",".join(map(str, cpu_sets(workers)[i])), RUN_ENV: run}
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = devices[i]
        worker_seed = seed + (i + workers * starts[i]) * SEED_STRIDE  # a replacement draws anew
        argv = [*command, "--n-trials", str(n_trials), "--seed", str(worker_seed), "--replicates", "0"]
        argv += ["--timeout", f"{left:g}"] if left is not None else []
        starts[i] += 1
        # a new session: Ctrl-C reaches the parent only, which passes it on once
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)

    def replace(i: int, log) -> subprocess.Popen | None:
        counted, running = tally(study, run)
        if sum(starts) - workers >= n_trials or not (counted < n_trials or running):
            return None
        try:
            return start(i, log)
        except OSError:  # no memory or processes left for one: the other workers go on
            return None

    with ExitStack() as stack:
        logdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        logs = [stack.enter_context((logdir / f"worker{i}.log").open("w+")) for i in range(workers)]
        procs = [start(i, log) for i, log in enumerate(logs)]
        received, unavailable = _watch(procs, logs, study, seen, on_trial, replace)
        if received:
            return (143 if received[0] == signal.SIGTERM else 130), INTERRUPTED.format("trials are")
        if unavailable is not None:  # the study cannot be read: whether the run is done is unknown
            return EXIT_UNAVAILABLE, f"error: {unavailable}"
        killed = sum(starts) - workers
        replaced = f"{killed} killed worker{'s' * (killed > 1)} replaced" if killed else ""
        failed = [(i, p.returncode, log) for i, (p, log) in enumerate(zip(procs, logs)) if p.returncode]
        if not failed:
            return 0, replaced
        i, code, log = failed[0]
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        if tally(study, run)[0] >= n_trials:
            took_over = f"worker {i} stopped ({how}); the other workers took over its trials"
            return 0, "; ".join(filter(None, [took_over, replaced]))
        if code == EXIT_UNAVAILABLE:
            return code, f"error: {_last_error(log)}"
        log.seek(0)
        return (code if code > 0 else 1), f"worker {i} failed ({how}):\n{log.read().strip()[-2000:]}"


def _last_error(log) -> str:
    """A worker's last `error:` line (the one line it printed before it stopped)."""
    log.seek(0)
    errors = [line.removeprefix("error: ") for line in log.read().splitlines() if line.startswith("error:")]
    return errors[-1] if errors else "a worker stopped with exit 75: its storage stayed unreachable"


def _watch(procs, logs, study, seen, on_trial, replace) -> tuple[list[int], StorageUnavailable | None]:
    """Print trials as they finish, replacing killed workers, until every worker has ended.

    Returns the signals passed on, and the storage's outage if the study could not be read for
    longer than its wait at the last look (the workers, on the same storage, stop by themselves).
    """
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        received.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    unavailable = None
    try:
        while True:
            try:
                for i, proc in enumerate(procs):
                    if proc.poll() == -signal.SIGKILL and not received:
                        procs[i] = replace(i, logs[i]) or proc
                        if procs[i] is not proc:  # above the progress bars, as trial lines are
                            print(f"worker {i} killed by SIGKILL; replaced", file=sys.stderr, flush=True)
                for t in study.get_trials(deepcopy=False):
                    if t.state.is_finished() and t.number not in seen:
                        seen.add(t.number)
                        on_trial(t)
                unavailable = None
            except StorageUnavailable as err:
                unavailable = err
            if all(p.poll() is not None for p in procs):
                return received, unavailable
            time.sleep(1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
