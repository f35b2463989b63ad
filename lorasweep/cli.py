"""The `lorasweep` command line: thin wrappers over study, objective and trial.

    lorasweep optimize                         # search_spaces/default.yaml, study "default"
    lorasweep optimize --space search_spaces/default.yaml --n-trials 12 --study mine
    lorasweep run --config trial.yaml          # one trial, no Optuna
    optuna-dashboard sqlite:///results/lorasweep.db

Bad input (space, config, storage URL) is one line on stderr and exit code 2, before any study is
created or changed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lorasweep.config import ConfigError, TrialConfig

# lorasweep never downloads: models and hub datasets come from the local Hugging Face cache (read
# by huggingface_hub when it is imported, so set before any command imports it)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="LoRA or full fine-tuning? Optuna studies that measure what a model learns and forgets.",
)
console = Console(soft_wrap=True)  # never break a printed command or URL across lines
err_console = Console(stderr=True, soft_wrap=True)

DEFAULT_SPACE = Path("search_spaces/default.yaml")
CacheDir = Annotated[
    Path | None,
    typer.Option(help="Where base models are cached (default: $LORASWEEP_CACHE_DIR or results/cache)."),
]


ArtifactDir = Annotated[
    Path,
    typer.Option(help="Artifact store for trial configs and report plots (optuna-dashboard --artifact-dir)."),
]
Model = Annotated[
    str | None,
    typer.Option(
        help="Base model: a local Hugging Face directory or a hub id in the local cache (default: the embedded world's)."
    ),
]
Domain = Annotated[
    str | None,
    typer.Option(help="Domain text to inject: .jsonl/.json/.csv/.parquet/.txt or hub:NAME?split=S."),
]
General = Annotated[str | None, typer.Option(help="General text: replay pool and the forgetting measure.")]
Probes = Annotated[
    str | None, typer.Option(help="Probes on the domain: rows {question, answer} or {prompt, answer}.")
]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Run Python code shipped with the model.")
]


def _overrides(
    model: str | None, domain: str | None, general: str | None, probes: str | None, trust: bool
) -> dict:
    """Config fields given on the command line; they replace the space's or the config file's."""
    given = {"model": model, "domain": domain, "general": general, "probes": probes}
    return {k: v for k, v in given.items() if v is not None} | ({"trust_remote_code": True} if trust else {})


@contextmanager
def user_errors():
    """Bad input ends the command with one line on stderr and exit code 2."""
    try:
        yield
    except ConfigError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False)
        raise typer.Exit(2) from None


def _quiet_libraries(training: bool = True) -> None:
    """Keep the terminal for lorasweep's own progress; the study records everything anyway.

    Commands that only read a study pass `training=False`: importing transformers takes seconds.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial lines below carry failure reasons
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not training:
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="peft")


def _progress(on: Console = console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=on,
    )


@app.command()
def optimize(
    space: Annotated[Path, typer.Option(help="Search-space YAML file.")] = DEFAULT_SPACE,
    study: Annotated[str, typer.Option(help="Study name.")] = "default",
    storage: Annotated[str, typer.Option(help="Optuna storage URL.")] = "sqlite:///results/lorasweep.db",
    n_trials: Annotated[
        int, typer.Option(help="Trials this run adds to the study, across its workers.")
    ] = 12,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after SECONDS.")] = None,
    seed: Annotated[int, typer.Option(help="Sampler seed (offset by the trials already run).")] = 0,
    model: Model = None,
    domain: Domain = None,
    general: General = None,
    probes: Probes = None,
    trust_remote_code: TrustRemoteCode = False,
    artifact_dir: ArtifactDir = Path("results/artifacts"),
    heartbeat_interval: Annotated[
        int, typer.Option(help="Seconds between a running trial's heartbeats.")
    ] = 30,
    grace_period: Annotated[
        int, typer.Option(help="Seconds without a heartbeat after which a trial's worker counts as dead.")
    ] = 120,
    workers: Annotated[
        int, typer.Option(help="Worker processes on this machine, sharing --n-trials and the cores.")
    ] = 1,
    devices: Annotated[
        str | None, typer.Option(help="GPUs, one per worker, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES).")
    ] = None,
    cache_dir: CacheDir = None,
) -> None:
    """Run an Optuna study of fine-tuning trials; re-running adds trials to the same study.

    --n-trials counts the trials this run adds, across all its workers: trials already in the study
    do not count; a queued baseline or a dead worker's trial run again counts like a new one.
    """
    from lorasweep.search_space import load_space
    from lorasweep.workers import pin_cpus, run_trials, run_workers

    pin_cpus()  # a worker started by --workers runs on its own cores
    from lorasweep.study import dashboard_target, open_study, storage_label
    from lorasweep.study import storage as open_storage

    with user_errors():
        if n_trials < 1:
            raise ConfigError(f"--n-trials is {n_trials}; allowed: an integer >= 1")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"--timeout is {timeout}; allowed: a number of seconds > 0")
        if not 0 < heartbeat_interval < grace_period:
            raise ConfigError(
                f"--heartbeat-interval {heartbeat_interval} and --grace-period {grace_period}: "
                "allowed: 0 < interval < grace period"
            )
        if workers < 1:
            raise ConfigError(f"--workers is {workers}; allowed: an integer >= 1")
        gpus = devices.split(",") if devices else None
        if gpus is not None and (len(gpus) != workers or not all(g.strip().isdigit() for g in gpus)):
            raise ConfigError(
                f"--devices '{devices}': allowed: {workers} GPU indices, one per worker, e.g. 0,1"
            )
        searched = load_space(space).with_config(
            _overrides(model, domain, general, probes, trust_remote_code)
        )
        fixed = TrialConfig.from_dict(searched.config, str(space))
        _quiet_libraries()
        # connect first: a bad or unreachable storage is answered in seconds, before any model loads
        store = open_storage(storage, heartbeat=(heartbeat_interval, grace_period))
    # imported only now: bad input is answered before torch is loaded
    from lorasweep.objective import TRIAL_FAILURES, make_objective
    from lorasweep.trial import prepare

    with _progress() as progress:
        build = progress.add_task("base model", total=None)

        def on_build_step(step: int, total: int) -> None:
            progress.update(build, completed=step, total=total, description="building base model")

        # the base model and data load before the study is touched: a bad model or data path
        # leaves no study behind
        with user_errors():
            prepared = prepare(fixed, cache_dir, on_build_step)
            opened = open_study(study, store, searched, seed)
        progress.update(build, visible=False)
        finished = sum(t.state.is_finished() for t in opened.trials)
        progress.console.print(
            f"study [bold]{study}[/] in {storage_label(storage)}: {finished} trials so far, "
            f"adding {n_trials} from {space}"
            + (f" with {min(workers, n_trials)} workers" if workers > 1 else ""),
            highlight=False,
        )
        if "base_metrics" not in opened.user_attrs:
            opened.set_user_attr("base_metrics", prepared.base_metrics)
        trials = progress.add_task("trials", total=n_trials)

        def on_trial(_study, frozen) -> None:
            progress.advance(trials)
            progress.console.print(_trial_line(frozen), highlight=False)

        if workers > 1:
            # the same command, less --workers/--devices, as each worker runs it
            command = [sys.executable, "-m", "lorasweep", "optimize", "--space", str(space), "--study", study]
            command += ["--storage", storage, "--artifact-dir", str(artifact_dir)]
            command += ["--heartbeat-interval", str(heartbeat_interval), "--grace-period", str(grace_period)]
            given = {"--timeout": timeout, "--model": model, "--domain": domain, "--general": general}
            for option, value in {**given, "--probes": probes, "--cache-dir": cache_dir}.items():
                if value is not None:
                    command += [option, str(value)]
            command += ["--trust-remote-code"] if trust_remote_code else []
            code, message = run_workers(
                command, n_trials, workers, seed, gpus, opened, lambda t: on_trial(None, t)
            )
            if code in (130, 143):
                progress.stop()
                err_console.print("interrupted: the running trials are marked failed; run again to resume")
            elif message:
                err_console.print(message, markup=False, highlight=False)
            if code:
                raise typer.Exit(code)
        else:
            steps = progress.add_task("steps", total=None)

            def on_step(step: int, total: int) -> None:
                progress.update(steps, completed=step, total=total)

            # SIGTERM (a scheduler, `kill`) ends the run like Ctrl-C: the running trial is marked
            # failed with the reason, and the study stays consistent for the next optimize. Ctrl-C
            # raises our KeyboardInterrupt subclass too: after a plain KeyboardInterrupt, even one
            # caught, CPython may end the process by SIGINT (-2) instead of exiting 130 (it marks
            # one raised inside exec'd source as unhandled; about half of our test interrupts)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, _interrupt)
            try:
                run_trials(
                    opened,
                    make_objective(searched, on_step, cache_dir, artifact_dir),
                    n_trials,
                    timeout,
                    callbacks=[on_trial],
                    catch=TRIAL_FAILURES,
                )
            except KeyboardInterrupt as err:
                progress.stop()
                err_console.print("interrupted: the running trial is marked failed; run again to resume")
                raise typer.Exit(143 if str(err) == "SIGTERM" else 130) from None
    _print_best(opened)
    dashboard = (
        f"optuna-dashboard {dashboard_target(storage)} --artifact-dir {artifact_dir}"  # password masked
    )
    console.print(f"\nopen the dashboard:  {dashboard}", markup=False, highlight=False)


def _interrupt(signum: int, _frame) -> None:
    from lorasweep.objective import Interrupted

    raise Interrupted(signal.Signals(signum).name)


def _trial_line(frozen) -> str:
    attrs = frozen.user_attrs
    if frozen.state.name != "COMPLETE":
        reason = (
            attrs.get("fail_reason") or attrs.get("prune_reason") or "no reason recorded: its worker died"
        )
        return f"trial {frozen.number}: {frozen.state.name.lower()} ({reason})"
    return (
        f"trial {frozen.number}: {_describe(attrs.get('config', {}))}  "
        f"learn {frozen.values[0]:.3f}  forget {_forget(frozen):+.3f}  ({attrs.get('wall_s', 0):.0f}s)"
    )


def _forget(frozen) -> float:
    """forget is the second objective of a pareto study and a user attr of a constrained one."""
    return frozen.values[1] if len(frozen.values) > 1 else frozen.user_attrs.get("forget", float("nan"))


def _describe(config: dict) -> str:
    if config.get("method") == "full":
        return f"full lr={config.get('learning_rate', 0):.1e}"
    return (
        f"{config.get('method')} r={config.get('rank')} a={config.get('alpha') or 0:g} "
        f"{config.get('target_modules')} lr={config.get('learning_rate', 0):.1e}"
    )


def _print_best(study) -> None:
    """The best trials as a table; a trial without lorasweep's config shows its Optuna params."""
    from lorasweep.records import value_names
    from lorasweep.study import best_trials

    trials = best_trials(study)
    gaps = _best_gaps(study, trials)
    title = _best_title(study)
    if not trials:
        console.print(f"{title}: no completed feasible trial yet", markup=False)
    elif any(gap.attr == "config" for gap in gaps):
        names = value_names(study)
        table = Table(title=title)
        for column in ("trial", "params", *names):
            table.add_column(column, justify="left" if column == "params" else "right")
        for t in trials:
            params = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
            )
            table.add_row(str(t.number), params or "-", *(f"{v:.4g}" for v in t.values))
        console.print(table)
    else:
        table = Table(title=title)
        for column in ("trial", "method", "rank", "targets", "lr", "learn", "forget"):
            table.add_column(column, justify="left" if column in ("method", "targets") else "right")
        for t in trials:
            c = t.user_attrs["config"]
            lora = c.get("method") != "full"
            lr = c.get("learning_rate")
            table.add_row(
                str(t.number),
                str(c.get("method", "?")),
                str(c.get("rank")) if lora else "-",
                str(c.get("target_modules")) if lora else "-",
                f"{lr:.2e}" if lr is not None else "?",
                f"{t.values[0]:.3f}",
                f"{_forget(t):+.3f}",
            )
        console.print(table)
    for gap in gaps:
        console.print(f"note: {gap}", markup=False, highlight=False)


def _best_title(study) -> str:
    """What `best` shows, in the study's own terms: learn and forget for a lorasweep study."""
    import optuna

    from lorasweep.records import value_names
    from lorasweep.study import objective_of

    name, names = study.study_name, value_names(study)
    ups = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    if objective_of(study) == "constrained":
        goal = f"{'max' if ups[0] else 'min'} {names[0]}"
        tolerance = study.user_attrs.get("forget_tolerance")
        if tolerance is None:  # not a lorasweep constrained study: no feasibility limit to name
            return f"Best trial of '{name}' ({goal})"
        return f"Best feasible trial of '{name}' ({goal}, forget <= {tolerance})"
    goals = ", ".join(f"{n} {'up' if up else 'down'}" for n, up in zip(names, ups))
    return f"Pareto front of '{name}' ({goals})"


def _best_gaps(study, trials) -> list:
    """What `best` reads that a study from plain Optuna or an older lorasweep lacks."""
    from lorasweep.records import objective_attr, study_gaps, trial_gaps

    shown = {"config": "the table shows Optuna's params and values"}
    return study_gaps(study, objective_attr(study)) + trial_gaps(trials, shown)


def _named_values(study, frozen) -> dict[str, float]:
    """The trial's values by name, and forget where a constrained study records it beside them."""
    from lorasweep.records import value_names

    values = dict(zip(value_names(study), frozen.values))
    if "forget" not in values and "forget" in frozen.user_attrs:
        values["forget"] = frozen.user_attrs["forget"]
    return values


@app.command()
def best(
    study: Annotated[str | None, typer.Option(help="Study name (optional if the storage holds one).")] = None,
    storage: Annotated[str, typer.Option(help="Optuna storage URL.")] = "sqlite:///results/lorasweep.db",
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Print the Pareto front (pareto) or the best feasible trial (constrained).

    A study without lorasweep's records (plain Optuna, an older lorasweep) shows what it has,
    and each missing record is named.
    """
    from dataclasses import asdict

    from lorasweep.study import best_trials, load_study, objective_of

    with user_errors():
        _quiet_libraries(training=False)
        loaded = load_study(storage, study)
    if not json_out:
        _print_best(loaded)
        return
    front = best_trials(loaded)
    trials = [
        {
            "trial": t.number,
            "params": t.params,
            "values": _named_values(loaded, t),
            "config": t.user_attrs.get("config"),
        }
        for t in front
    ]
    summary = {"study": loaded.study_name, "objective": objective_of(loaded), "trials": trials}
    print(json.dumps(summary | {"missing": [asdict(g) for g in _best_gaps(loaded, front)]}, indent=2))


@app.command()
def report(
    study: Annotated[str | None, typer.Option(help="Study name (optional if the storage holds one).")] = None,
    storage: Annotated[str, typer.Option(help="Optuna storage URL.")] = "sqlite:///results/lorasweep.db",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: results/<study>).")] = None,
    forget_tolerance: Annotated[
        float | None, typer.Option(help="Forgetting tolerance (default: the study's own, if it has one).")
    ] = None,
    artifact_dir: ArtifactDir = Path("results/artifacts"),
) -> None:
    """Write the LoRA-vs-full-FT comparison report of a study, and attach it to the study.

    A study without some of lorasweep's records (plain Optuna, an older lorasweep) gets the
    sections it has data for; the report names each missing record and what it left out.
    """
    from lorasweep.report import default_out, gaps, upload, write_report
    from lorasweep.study import dashboard_target, load_study

    with user_errors():
        _quiet_libraries(training=False)
        loaded = load_study(storage, study)
        target = out or default_out(loaded.study_name)
    files = write_report(loaded, target, forget_tolerance)
    upload(loaded, files, artifact_dir)
    console.print(
        f"wrote {target / 'report.md'} and {len(files) - 1} plots; uploaded to the study's artifacts",
        markup=False,
        highlight=False,
    )
    for gap in gaps(loaded, forget_tolerance):
        console.print(f"note: {gap}", markup=False, highlight=False)
    dashboard = f"optuna-dashboard {dashboard_target(storage)} --artifact-dir {artifact_dir}"
    console.print(f"dashboard:  {dashboard}", markup=False, highlight=False)  # password masked


StudyName = Annotated[
    str | None, typer.Option("--study", help="Study name (optional if the storage holds one).")
]
Storage = Annotated[str, typer.Option("--storage", help="Optuna storage URL.")]
TrialNumber = Annotated[int | None, typer.Option("--trial", help="Trial number.")]
Best = Annotated[
    bool,
    typer.Option("--best", help="The best feasible trial (constrained) or the Pareto front's top learner."),
]


def _recorded(
    storage: str, study: str | None, number: int | None, best: bool, purpose: str, trust_remote_code: bool
):
    """The chosen trial of the study and the config it recorded, checked before anything loads."""
    from lorasweep.reproduce import recorded_trial, trial_config
    from lorasweep.study import load_study

    _quiet_libraries(training=False)
    frozen = recorded_trial(load_study(storage, study), number, best, purpose)
    config = trial_config(frozen)
    if config.trust_remote_code and not trust_remote_code:
        # the study may come from someone else: its record alone does not run a model's own code
        raise ConfigError(
            f"trial {frozen.number} recorded trust_remote_code: true (its model ships Python code); "
            f"pass --trust-remote-code to {purpose} it"
        )
    _quiet_libraries()  # only now, as importing transformers takes seconds
    return frozen, config


@app.command()
def reproduce(
    trial: TrialNumber = None,
    best: Best = False,
    study: StudyName = None,
    storage: Storage = "sqlite:///results/lorasweep.db",
    tolerance: Annotated[
        float | None,
        typer.Option(help="Largest accepted difference per metric (default: 0 on CPU, 0.02 on a GPU)."),
    ] = None,
    allow_changed: Annotated[
        bool, typer.Option("--allow-changed", help="Re-run even if the data or base weights changed.")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
    cache_dir: CacheDir = None,
) -> None:
    """Re-run a recorded trial and print its metrics beside the recorded ones (exit 1 if they differ)."""
    from lorasweep.reproduce import changed_inputs, compare

    with user_errors():
        frozen, config = _recorded(storage, study, trial, best, "reproduce", trust_remote_code)
    from lorasweep.trial import prepare, run_trial

    with _progress() as progress:
        task = progress.add_task("base model", total=None)
        with user_errors():
            prepared = prepare(config, cache_dir, lambda s, n: progress.update(task, completed=s, total=n))
        changed, unknown = changed_inputs(frozen, prepared)
        for line in unknown:
            err_console.print(f"warning: {line}", markup=False, highlight=False)
        if changed and not allow_changed:
            for line in changed:
                err_console.print(f"error: {line}", markup=False, highlight=False)
            err_console.print("the re-run would not be the same trial; pass --allow-changed to run it anyway")
            raise typer.Exit(1)
        progress.update(task, description=f"trial {frozen.number}", completed=0, total=config.steps)
        result = run_trial(
            config, on_step=lambda s, n: progress.update(task, completed=s, total=n), cache_dir=cache_dir
        )
    limit = tolerance if tolerance is not None else (0.0 if prepared.device.type == "cpu" else 0.02)
    rows = compare(frozen.user_attrs, result, limit)
    table = Table(title=f"trial {frozen.number} re-run on {result['device']} (tolerance {limit:g})")
    for column in ("metric", "recorded", "re-run", "difference", "match"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, then, now, ok in rows:
        table.add_row(key, f"{then:.6f}", f"{now:.6f}", f"{now - then:+.2e}", "yes" if ok else "NO")
    console.print(table)
    if not all(ok for *_, ok in rows):
        err_console.print(f"trial {frozen.number} did not reproduce within {limit:g}")
        raise typer.Exit(1)
    console.print(f"trial {frozen.number} reproduced" + (" exactly" if limit == 0 else f" within {limit:g}"))


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="Directory to write the model, trial.yaml and README.md into.")],
    trial: TrialNumber = None,
    best: Best = False,
    study: StudyName = None,
    storage: Storage = "sqlite:///results/lorasweep.db",
    merge: Annotated[
        bool, typer.Option("--merge", help="Merge the adapter into the base; save a full model.")
    ] = False,
    trust_remote_code: TrustRemoteCode = False,
    cache_dir: CacheDir = None,
) -> None:
    """Train a recorded trial again and write its adapter or model, trial.yaml and a model card."""
    from lorasweep.reproduce import export_trial

    with user_errors():
        frozen, config = _recorded(storage, study, trial, best, "export", trust_remote_code)
        with _progress() as progress:
            task = progress.add_task(f"trial {frozen.number}", total=config.steps)
            result = export_trial(
                frozen, out, merge, cache_dir, lambda s, n: progress.update(task, completed=s, total=n)
            )
    console.print(
        f"wrote {out}: {config.method} trial {frozen.number}, learn {result['learn']:.3f} "
        f"(recorded {frozen.user_attrs.get('learn', float('nan')):.3f}), forget {result['forget']:+.3f}",
        markup=False,
        highlight=False,
    )


@app.command()
def dashboard(
    study: StudyName = None,
    storage: Storage = "sqlite:///results/lorasweep.db",
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 exposes the dashboard to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8080,
    artifact_dir: ArtifactDir = Path("results/artifacts"),
) -> None:
    """Serve optuna-dashboard on the study, with its trial configs and report plots."""
    from optuna.artifacts import FileSystemArtifactStore
    from optuna_dashboard import run_server

    from lorasweep.study import load_study, storage_label
    from lorasweep.study import storage as open_storage

    with user_errors():
        _quiet_libraries(training=False)
        if not 0 < port < 65536:
            raise ConfigError(f"--port is {port}; allowed: 1..65535")
        loaded = load_study(storage, study)
        store = open_storage(storage, create=False)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"study '{loaded.study_name}' in {storage_label(storage)}: "
        f"http://{host}:{port}/dashboard/studies/{store.get_study_id_from_name(loaded.study_name)}  (Ctrl-C stops)",
        markup=False,
        highlight=False,
    )
    run_server(store, host=host, port=port, artifact_store=FileSystemArtifactStore(str(artifact_dir)))


@app.command()
def run(
    config: Annotated[Path, typer.Option(help="Trial config YAML (the format every trial records).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    model: Model = None,
    domain: Domain = None,
    general: General = None,
    probes: Probes = None,
    trust_remote_code: TrustRemoteCode = False,
    cache_dir: CacheDir = None,
) -> None:
    """Run one fully specified trial without Optuna and print what it learned and forgot."""
    from lorasweep.config import load_yaml
    from lorasweep.trial import prepare, run_trial

    with user_errors():
        fields = load_yaml(config)
        if isinstance(fields, dict):
            fields = {**fields, **_overrides(model, domain, general, probes, trust_remote_code)}
        trial_config = TrialConfig.from_dict(fields, str(config))
        _quiet_libraries()
        # with --json, stdout carries only the JSON
        with _progress(err_console if json_out else console) as progress:
            task = progress.add_task("base model", total=None)
            prepare(trial_config, cache_dir, lambda s, n: progress.update(task, completed=s, total=n))
            progress.update(task, description="training", completed=0, total=trial_config.steps)
            result = run_trial(
                trial_config,
                on_step=lambda s, n: progress.update(task, completed=s, total=n),
                cache_dir=cache_dir,
            )
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"trial {config}", show_header=False)
    for key, value in result.items():
        if key in ("config", "versions", "base_metrics"):
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
