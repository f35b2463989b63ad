"""The `lorasweep` command line: thin wrappers over study, objective and trial.

    lorasweep optimize                         # search_spaces/default.yaml, study "default"
    lorasweep optimize --space search_spaces/default.yaml --n-trials 12 --study mine
    lorasweep run --config trial.yaml          # one trial, no Optuna
    optuna-dashboard sqlite:///results/lorasweep.db

Bad input (space, config, storage URL) is one line on stderr and exit code 2, before any study is
created or changed. A storage that stays unreachable longer than --storage-wait is one line and
exit code 75: run the same command again once it is back.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from lorasweep import options
from lorasweep.artifacts import DEFAULT_ARTIFACT_DIR
from lorasweep.config import TrialConfig
from lorasweep.display import (
    console,
    dashboard_command,
    err_console,
    progress,
    quiet_libraries,
    say,
    stop_on,
)
from lorasweep.search_space import DEFAULT_SPACE
from lorasweep.storages import EXIT_UNAVAILABLE, GRACE_S, HEARTBEAT_S, STORAGE_WAIT_S, StorageUnavailable
from lorasweep.study import DEFAULT_STORAGE, DEFAULT_STUDY
from lorasweep.validation import ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="LoRA or full fine-tuning? Optuna studies that measure what a model learns and forgets.",
)


@contextmanager
def user_errors() -> Iterator[None]:
    """Bad input ends the command with one line on stderr and exit code 2; a storage that stayed
    unreachable, with one line and exit code 75."""
    try:
        yield
    except ConfigError as err:
        say(f"error: {err}", err_console)
        raise typer.Exit(2) from None
    except StorageUnavailable as err:
        say(f"error: {err}", err_console)
        raise typer.Exit(EXIT_UNAVAILABLE) from None


@app.command()
def optimize(
    ctx: typer.Context,
    space: options.SpaceFile = DEFAULT_SPACE,
    study: options.NewStudy = DEFAULT_STUDY,
    storage: options.Storage = DEFAULT_STORAGE,
    n_trials: options.NTrials = 12,
    timeout: options.Timeout = None,
    seed: options.Seed = 0,
    model: options.Model = None,
    domain: options.Domain = None,
    general: options.General = None,
    probes: options.Probes = None,
    trust_remote_code: options.TrustRemoteCode = False,
    artifact_dir: options.ArtifactDir = DEFAULT_ARTIFACT_DIR,
    heartbeat_interval: options.HeartbeatInterval = HEARTBEAT_S,
    grace_period: options.GracePeriod = GRACE_S,
    workers: options.Workers = 1,
    devices: options.Devices = None,
    cache_dir: options.CacheDir = None,
    replicates: options.Replicates = 2,
    storage_wait: options.StorageWait = STORAGE_WAIT_S,
) -> None:
    """Run an Optuna study of fine-tuning trials; re-running adds trials to the same study.

    --n-trials counts the trials this run adds, across all its workers: trials already in the study
    do not count; a queued baseline or a dead worker's trial run again counts like a new one.
    After them, each arm's leader and top learner are trained with --replicates more seeds (as
    `lorasweep confirm` does), and the verdict is printed with its uncertainty and saved as the
    study's note.
    """
    from lorasweep.search_space import load_space
    from lorasweep.workers import check_run, is_worker, pin_cpus, shards_of, worker_command

    pin_cpus()  # a worker started by --workers runs on its own cores
    from lorasweep.storages import open_storage, storage_label
    from lorasweep.study import queue_arm

    with user_errors():
        if replicates < 0:
            raise ConfigError(f"--replicates is {replicates}; allowed: an integer >= 0 (0: none)")
        searched = load_space(space).with_config(
            options.overrides(model, domain, general, probes, trust_remote_code)
        )
        TrialConfig.from_dict(searched.config, str(space))
        gpus = check_run(n_trials, timeout, workers, devices, shards_of(searched))
        if gpus and workers == 1:  # this process is the worker: its GPUs, before anything starts CUDA
            os.environ["CUDA_VISIBLE_DEVICES"] = gpus[0]
        quiet_libraries()
        # connect first: a bad or unreachable storage is answered in seconds, before any model loads
        store = open_storage(storage, heartbeat=(heartbeat_interval, grace_period), wait=storage_wait)
    # imported only now: bad input is answered before torch is loaded
    from lorasweep.display import print_best
    from lorasweep.replicates import waiting_replicates
    from lorasweep.sweep import conclude, replicate, session

    with user_errors(), session(searched, study, store, seed, cache_dir, artifact_dir, workers == 1) as s:
        finished = sum(t.state.is_finished() for t in s.study.trials)
        say(
            f"study {study} in {storage_label(storage)}: {finished} trials so far, adding {n_trials} "
            f"from {space}" + (f" with {min(workers, n_trials)} workers" if workers > 1 else ""),
            s.bars.console,
        )
        s.bars.update(s.task, total=n_trials, visible=True)
        command = worker_command(ctx)

        def run(n: int, seconds: float | None, before_trial) -> None:
            stop_on(*s.run(n, before_trial, command, seconds, seed, workers, gpus), s.bars)

        start = time.monotonic()
        run(n_trials, timeout, lambda study: queue_arm(study, searched))
        left = None if timeout is None else timeout - (time.monotonic() - start)
        if replicates and (left is None or left > 0):
            tolerance = searched.question.forget_tolerance
            replicate(s, tolerance, 1, replicates, lambda n: run(n, left, waiting_replicates))
    if is_worker():  # the parent prints the answer, once
        return
    with user_errors():
        print_best(s.study)
        conclude(s.study)
    say(f"\nopen the dashboard:  {dashboard_command(storage, artifact_dir)}")


@app.command()
def confirm(
    study: options.StudyName = None,
    storage: options.Storage = DEFAULT_STORAGE,
    top: options.Top = 1,
    seeds: options.Seeds = 2,
    forget_tolerance: options.ForgetTolerance = None,
    artifact_dir: options.ArtifactDir = DEFAULT_ARTIFACT_DIR,
    cache_dir: options.CacheDir = None,
    storage_wait: options.StorageWait = STORAGE_WAIT_S,
) -> None:
    """Train each arm's leaders again with more seeds; print the verdict with its uncertainty.

    The replicates are trials of the study, tagged `replicate_of`; the sampler never sees them.
    """
    from lorasweep.confirm import check
    from lorasweep.storages import open_storage
    from lorasweep.study import load_study, recorded_space

    with user_errors():
        check(top, seeds)
        quiet_libraries(training=False)
        loaded = load_study(storage, study)
        searched = recorded_space(loaded, "confirm its leaders")
        TrialConfig.from_dict(searched.config, f"study '{loaded.study_name}' config")
        store = open_storage(storage, heartbeat=(HEARTBEAT_S, GRACE_S), wait=storage_wait)
    tolerance = searched.question.forget_tolerance if forget_tolerance is None else forget_tolerance
    quiet_libraries()
    from lorasweep.replicates import waiting_replicates
    from lorasweep.sweep import conclude, replicate, session

    with user_errors(), session(searched, loaded.study_name, store, 0, cache_dir, artifact_dir) as s:

        def run(n: int) -> None:  # here, in this process: no sampler seed or workers involved
            stop_on(*s.run(n, waiting_replicates), s.bars)

        replicate(s, tolerance, top, seeds, run)
    with user_errors():
        conclude(s.study, tolerance)


@app.command()
def best(
    study: options.StudyName = None,
    storage: options.Storage = DEFAULT_STORAGE,
    json_out: options.Json = False,
) -> None:
    """Print the Pareto front (pareto) or the best feasible trial (constrained).

    A study without lorasweep's records (plain Optuna, an older lorasweep) shows what it has,
    and each missing record is named.
    """
    from lorasweep.display import best_summary, print_best
    from lorasweep.study import load_study
    from lorasweep.verdict import verdict

    with user_errors():
        quiet_libraries(training=False)
        loaded = load_study(storage, study)
        if json_out:
            print(json.dumps(best_summary(loaded), indent=2))
        else:
            print_best(loaded)
            say("\n" + "\n".join(verdict(loaded).lines))


@app.command()
def report(
    study: options.StudyName = None,
    storage: options.Storage = DEFAULT_STORAGE,
    out: options.ReportOut = None,
    forget_tolerance: options.ForgetTolerance = None,
    artifact_dir: options.ArtifactDir = DEFAULT_ARTIFACT_DIR,
) -> None:
    """Write the LoRA-vs-full-FT comparison report of a study, and attach it to the study.

    A study without some of lorasweep's records (plain Optuna, an older lorasweep) gets the
    sections it has data for; the report names each missing record and what it left out.
    """
    from lorasweep.analysis import gaps
    from lorasweep.artifacts import attach
    from lorasweep.report import default_out, write_report
    from lorasweep.study import load_study
    from lorasweep.verdict import save_note, verdict

    with user_errors():
        quiet_libraries(training=False)
        loaded = load_study(storage, study)
        target = out or default_out(loaded.study_name)
        files = write_report(loaded, target, forget_tolerance)
        attach(loaded, files, artifact_dir)
        found = verdict(loaded, forget_tolerance)
        if found.arms:  # the dashboard's note: the verdict as of this report
            save_note(loaded, found)
    say(f"wrote {target / 'report.md'} and {len(files) - 1} plots; uploaded to the study's artifacts")
    for gap in gaps(loaded, forget_tolerance):
        say(f"note: {gap}")
    say(f"dashboard:  {dashboard_command(storage, artifact_dir)}")


@app.command()
def reproduce(
    trial: options.TrialNumber = None,
    best: options.Best = False,
    study: options.StudyName = None,
    storage: options.Storage = DEFAULT_STORAGE,
    tolerance: options.Tolerance = None,
    allow_changed: options.AllowChanged = False,
    trust_remote_code: options.TrustRemoteCode = False,
    cache_dir: options.CacheDir = None,
) -> None:
    """Re-run a recorded trial and print its metrics beside the recorded ones (exit 1 if they differ)."""
    from lorasweep.display import print_comparison
    from lorasweep.reproduce import changed_inputs, compare, known_differences, rerun_target

    with user_errors():
        quiet_libraries(training=False)
        frozen, config = rerun_target(storage, study, trial, best, "reproduce", trust_remote_code)
    quiet_libraries()  # only now, as importing transformers takes seconds
    from lorasweep.prepare import prepare
    from lorasweep.trial import run_trial

    with progress() as bars:
        task = bars.add_task("base model", total=None)
        with user_errors():
            prepared = prepare(config, cache_dir, lambda s, n: bars.update(task, completed=s, total=n))
        changed, unknown = changed_inputs(frozen, prepared)
        for line in unknown:
            say(f"warning: {line}", err_console)
        if changed and not allow_changed:
            for line in changed:
                say(f"error: {line}", err_console)
            say("the re-run would not be the same trial; pass --allow-changed to run it anyway", err_console)
            raise typer.Exit(1)
        bars.update(task, description=f"trial {frozen.number}", completed=0, total=config.steps)
        with user_errors():  # a GPU too small for the trial, a sharded trial's missing GPUs
            result = run_trial(
                config, on_step=lambda s, n: bars.update(task, completed=s, total=n), cache_dir=cache_dir
            )
    limit = tolerance if tolerance is not None else (0.0 if prepared.device.type == "cpu" else 0.02)
    rows = compare(frozen, result, limit)
    print_comparison(frozen.number, result, rows, limit)
    if not all(ok for *_, ok in rows):
        say(f"trial {frozen.number} did not reproduce within {limit:g}", err_console)
        for line in known_differences(config, prepared.device):
            say(f"note: {line}", err_console)
        raise typer.Exit(1)
    say(f"trial {frozen.number} reproduced" + (" exactly" if limit == 0 else f" within {limit:g}"))


@app.command()
def export(
    out: options.ExportOut,
    trial: options.TrialNumber = None,
    best: options.Best = False,
    study: options.StudyName = None,
    storage: options.Storage = DEFAULT_STORAGE,
    merge: options.Merge = False,
    trust_remote_code: options.TrustRemoteCode = False,
    cache_dir: options.CacheDir = None,
) -> None:
    """Train a recorded trial again and write its adapter or model, trial.yaml and a model card."""
    from lorasweep.reproduce import export_trial, rerun_target

    with user_errors():
        quiet_libraries(training=False)
        frozen, config = rerun_target(storage, study, trial, best, "export", trust_remote_code)
        quiet_libraries()
        with progress() as bars:
            task = bars.add_task(f"trial {frozen.number}", total=config.steps)
            result = export_trial(
                frozen, out, merge, cache_dir, lambda s, n: bars.update(task, completed=s, total=n)
            )
    say(
        f"wrote {out}: {config.method} trial {frozen.number}, learn {result.learn:.3f} "
        f"(recorded {frozen.user_attrs.get('learn', float('nan')):.3f}), forget {result.forget:+.3f}"
    )


@app.command()
def dashboard(
    study: options.StudyName = None,
    storage: options.Storage = DEFAULT_STORAGE,
    host: options.Host = "127.0.0.1",
    port: options.Port = 8080,
    artifact_dir: options.ArtifactDir = DEFAULT_ARTIFACT_DIR,
) -> None:
    """Serve optuna-dashboard on the study, with its trial configs and report plots."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from lorasweep.storages import open_storage, storage_label
    from lorasweep.study import load_study

    with user_errors():
        quiet_libraries(training=False)
        if not 0 < port < 65536:
            raise ConfigError(f"--port is {port}; allowed: 1..65535")
        loaded = load_study(storage, study)
        # no waiting out an outage: the dashboard answers each request, or shows its error
        store = open_storage(storage, create=False, wait=None)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    study_id = store.get_study_id_from_name(loaded.study_name)
    say(
        f"study '{loaded.study_name}' in {storage_label(storage)}: "
        f"http://{host}:{port}/dashboard/studies/{study_id}  (Ctrl-C stops)"
    )
    run_server(store, host=host, port=port, artifact_store=FileSystemArtifactStore(str(artifact_dir)))


@app.command()
def run(
    config: options.ConfigFile,
    json_out: options.Json = False,
    model: options.Model = None,
    domain: options.Domain = None,
    general: options.General = None,
    probes: options.Probes = None,
    trust_remote_code: options.TrustRemoteCode = False,
    cache_dir: options.CacheDir = None,
) -> None:
    """Run one fully specified trial without Optuna and print what it learned and forgot."""
    from lorasweep.validation import load_yaml

    with user_errors():
        fields = load_yaml(config)
        if isinstance(fields, dict):
            fields = {**fields, **options.overrides(model, domain, general, probes, trust_remote_code)}
        trial_config = TrialConfig.from_dict(fields, str(config))
        quiet_libraries()
        from lorasweep.display import print_result
        from lorasweep.objective import TRIAL_FAILURES
        from lorasweep.prepare import prepare
        from lorasweep.trial import run_trial

        # with --json, stdout carries only the JSON
        with progress(err_console if json_out else console) as bars:
            task = bars.add_task("base model", total=None)
            prepare(
                trial_config,
                cache_dir,
                lambda s, n: bars.update(task, completed=s, total=n),
                lambda _docs, tokens: bars.update(task, description=f"tokenising: {tokens:,} tokens"),
            )
            bars.update(task, description="training", completed=0, total=trial_config.steps)
            try:
                result = run_trial(
                    trial_config,
                    on_step=lambda s, n: bars.update(task, completed=s, total=n),
                    cache_dir=cache_dir,
                )
            except TRIAL_FAILURES as err:  # what fails a trial in a study (diverged, OOM, a shard died)
                if isinstance(err, ConfigError):
                    raise  # bad input: one line and exit code 2, as everywhere
                say(f"error: the trial failed: {err.__class__.__name__}: {err}", err_console)
                raise typer.Exit(1) from None
    if json_out:
        print(json.dumps(result.attrs(), indent=2))
    else:
        print_result(f"trial {config}", result)
