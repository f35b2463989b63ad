"""What the commands print: progress bars, a line per finished trial, and tables of results.

Reads studies and results; never trains or changes a study.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict
from pathlib import Path

import optuna
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lorasweep.analysis import describe
from lorasweep.records import Gap, TrialResult, forget_of, objective_attr, study_gaps, trial_gaps, value_names
from lorasweep.replicates import REPLICATE_OF
from lorasweep.storages import dashboard_target
from lorasweep.study import best_trials, objective_of

console = Console(soft_wrap=True)  # never break a printed command or URL across lines
err_console = Console(stderr=True, soft_wrap=True)


def say(text: str, on: Console = console) -> None:
    """Print text as it is: no markup, no highlighting (paths and URLs hold brackets and colons)."""
    on.print(text, markup=False, highlight=False)


def quiet_libraries(training: bool = True) -> None:
    """Keep the terminal for lorasweep's own progress; the study records everything anyway.

    Commands that only read a study pass `training=False`: importing transformers takes seconds.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trial lines below carry failure reasons
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if not training:
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)
    # bitsandbytes warns at import, on CPUs with AVX512-BF16, that a kernel it would fetch from the
    # hub is missing; lorasweep runs 4-bit layers on the portable path (modeling._plain_cpu_4bit)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="peft")
    # paged_adamw_8bit on a CPU: bitsandbytes says it runs unpaged, as the README does
    warnings.filterwarnings("ignore", message="Paged optimizers are not supported on CPU")


def progress(on: Console = console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=on,
    )


def dashboard_command(storage: str, artifact_dir: Path) -> str:
    """The command that opens the study in optuna-dashboard (the storage's password masked)."""
    return f"optuna-dashboard {dashboard_target(storage)} --artifact-dir {artifact_dir}"


def trial_line(frozen: optuna.trial.FrozenTrial, names: list[str] | None = None) -> str:
    """One finished trial: its config, learn, forget and any third objective (`names`: the
    study's metric names), or why it did not complete."""
    attrs = frozen.user_attrs
    if frozen.state.name != "COMPLETE":
        reason = (
            attrs.get("fail_reason") or attrs.get("prune_reason") or "no reason recorded: its worker died"
        )
        return f"trial {frozen.number}: {frozen.state.name.lower()} ({reason})"
    forget = forget_of(frozen)
    replica = f"  (trial {attrs[REPLICATE_OF]}, seed {attrs.get('seed')})" if REPLICATE_OF in attrs else ""
    third = names[2] if names and len(names) > 2 and len(frozen.values) > 2 else None
    memory = f"  {third} {frozen.values[2]:,.4g}" if third else ""
    return (
        f"trial {frozen.number}: {describe(attrs.get('config', {}))}{replica}  "
        f"learn {frozen.values[0]:.3f}  forget {float('nan') if forget is None else forget:+.3f}{memory}  "
        f"({attrs.get('wall_s', 0):.0f}s)"
    )


def print_best(study: optuna.Study) -> None:
    """The best trials as a table; a trial without lorasweep's config shows its Optuna params."""
    trials = best_trials(study)
    gaps = best_gaps(study, trials)
    title = best_title(study)
    if not trials:
        say(f"{title}: no completed feasible trial yet")
    elif any(gap.attr == "config" for gap in gaps):
        table = Table(title=title)
        names = value_names(study)
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
        third = value_names(study)[2:]  # a memory objective's
        for column in ("trial", "method", "rank", "targets", "lr", "learn", "forget", *third):
            table.add_column(column, justify="left" if column in ("method", "targets") else "right")
        for t in trials:
            c = t.user_attrs["config"]
            lora = c.get("method") != "full"
            lr = c.get("learning_rate")
            forget = forget_of(t)
            table.add_row(
                str(t.number),
                str(c.get("method", "?")),
                str(c.get("rank")) if lora else "-",
                str(c.get("target_modules")) if lora else "-",
                f"{lr:.2e}" if lr is not None else "?",
                f"{t.values[0]:.3f}",
                f"{float('nan') if forget is None else forget:+.3f}",
                *(f"{v:,.4g}" for v in t.values[2:]),
            )
        console.print(table)
    for gap in gaps:
        say(f"note: {gap}")


def best_title(study: optuna.Study) -> str:
    """What `best` shows, in the study's own terms: learn and forget for a lorasweep study."""
    name, names = study.study_name, value_names(study)
    ups = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
    budget = study.user_attrs.get("memory_budget_gb")
    within = "" if budget is None else f", peak memory <= {budget:g} GiB"
    if objective_of(study) == "constrained":
        goal = f"{'max' if ups[0] else 'min'} {names[0]}"
        tolerance = study.user_attrs.get("forget_tolerance")
        if tolerance is None:  # not a lorasweep constrained study: no feasibility limit to name
            return f"Best trial of '{name}' ({goal})"
        return f"Best feasible trial of '{name}' ({goal}, forget <= {tolerance}{within})"
    goals = ", ".join(f"{n} {'up' if up else 'down'}" for n, up in zip(names, ups))
    return f"Pareto front of '{name}' ({goals}{within})"


def best_gaps(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> list[Gap]:
    """What `best` reads that a study from plain Optuna or an older lorasweep lacks."""
    shown = {"config": "the table shows Optuna's params and values"}
    return study_gaps(study, objective_attr(study)) + trial_gaps(trials, shown)


def best_summary(study: optuna.Study) -> dict:
    """`best --json`: the best trials' numbers, params, values by name and configs, and what the
    study lacks."""
    from lorasweep.verdict import summary, verdict  # scipy: only for the commands that show a verdict

    front = best_trials(study)
    trials = [
        {
            "trial": t.number,
            "params": t.params,
            "values": named_values(study, t),
            "config": t.user_attrs.get("config"),
        }
        for t in front
    ]
    missing = [asdict(gap) for gap in best_gaps(study, front)]
    return {
        "study": study.study_name,
        "objective": objective_of(study),
        "trials": trials,
        "missing": missing,
        "verdict": summary(verdict(study)),
    }


def named_values(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The trial's values by name, and forget where a constrained study records it beside them."""
    values = dict(zip(value_names(study), frozen.values))
    if "forget" not in values and "forget" in frozen.user_attrs:
        values["forget"] = frozen.user_attrs["forget"]
    return values


def print_comparison(number: int, result: TrialResult, rows: list, limit: float) -> None:
    """`reproduce`: each recorded metric beside the re-run's."""
    table = Table(title=f"trial {number} re-run on {result.device} (tolerance {limit:g})")
    for column in ("metric", "recorded", "re-run", "difference", "match"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for key, then, now, ok in rows:
        table.add_row(key, f"{then:.6f}", f"{now:.6f}", f"{now - then:+.2e}", "yes" if ok else "NO")
    console.print(table)


def print_result(title: str, result: TrialResult) -> None:
    """`run`: every scalar the trial recorded."""
    table = Table(title=title, show_header=False)
    for key, value in result.attrs().items():
        if key in ("config", "versions", "base_metrics"):
            continue
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def stop_on(code: int, message: str, bars: Progress) -> None:
    """After trials ran: the word on how they ended; a non-zero code ends the command."""
    if code in (130, 143):
        bars.stop()
    if message:
        say(message, err_console)
    if code:
        raise typer.Exit(code)
