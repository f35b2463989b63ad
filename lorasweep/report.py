"""The comparison report: what a study says about LoRA vs full fine-tuning, from its own trials.

    lorasweep report [--study NAME] [--storage URL] [--out DIR]

Writes `report.md`, PNG plots (matplotlib) and HTML plots (optuna.visualization) into
`results/<study>/`; the command attaches them to the study as Optuna artifacts, so the dashboard
(`--artifact-dir results/artifacts`) shows them. It reads only the study: the numbers come from
analysis.py, the claims' verdicts from findings.py (each explained in docs/claims.md); this module
renders them. Failed and pruned trials are counted, not plotted. A study without some of
lorasweep's attrs (plain Optuna, an older lorasweep) gets the sections it has data for, and a list
of what is missing and what it left out.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import optuna

from lorasweep.analysis import (
    Row,
    best_lr,
    critical_mixture_ratio,
    gaps,
    memory_metric,
    plural,
    rows_of,
    study_front,
)
from lorasweep.findings import Finding, findings
from lorasweep.plots import MEMORY_LABELS, plot, write_html
from lorasweep.records import value_names
from lorasweep.replicates import is_replicate
from lorasweep.search_options import MEMORY_OBJECTIVES
from lorasweep.study import objective_of, over_budget
from lorasweep.validation import ConfigError
from lorasweep.verdict import verdict

MIN_TRIALS_FOR_IMPORTANCE = 8


def default_out(study_name: str) -> Path:
    """results/<study>; Optuna allows any study name, and one that is not a plain directory name
    (a slash, '..', an absolute path) would write outside results/."""
    if study_name in ("", ".", "..") or Path(study_name).name != study_name or "\\" in study_name:
        raise ConfigError(f"study name '{study_name}' is not a plain directory name: give --out DIR")
    return Path("results") / study_name


def write_report(study: optuna.Study, out: Path, tolerance: float | None = None) -> list[Path]:
    """Write report.md and its plots into `out`; returns every file written."""
    out.mkdir(parents=True, exist_ok=True)
    tolerance = study.user_attrs.get("forget_tolerance") if tolerance is None else tolerance
    states = Counter(t.state.name.lower() for t in study.trials)
    rows = rows_of(study)
    memory = memory_metric(study)
    lines = _summary(study, tolerance, states)
    files = write_html(study, out) if states["complete"] else []
    if not rows:
        # what needs no lorasweep record: Optuna's own plots of the values, and the importances
        lines += [
            "No completed trial with lorasweep's records (user attr `config`) yet: nothing to compare.",
            "Studies written by plain Optuna, or still without a finished trial, get this report.",
        ]
        if states["complete"]:
            lines += [
                "",
                "Optuna's plots of the values: " + ", ".join(f"[{f.name}]({f.name})" for f in files),
            ]
            lines += ["", "## Parameter importances", "", *_importances(study)]
    else:
        budget = study.user_attrs.get("memory_budget_gb")
        files = plot(rows, out, memory, budget) + files
        lines += ["## Verdict", "", *verdict(study, tolerance).lines, ""]
        lines += _findings(findings(rows, tolerance))
        lines += ["", "## Pareto front", "", "![learn / forget](pareto.png)", ""]
        if memory is not None:
            lines += [f"![learn / {MEMORY_LABELS[memory]}](memory.png)", ""]
        lines += _table(
            ["trial", "method", "rank", "targets", "lr", "replay", "learn", "forget"]
            + ([MEMORY_LABELS[memory]] if memory else [])
            + ["seeds"],
            [_cells(r, memory) for r in sorted(study_front(study, rows), key=lambda r: -r.learn)],
        )
        lines += _learning_rates(rows, tolerance)
        lines += _targets_and_ranks(rows)
        lines += ["", "## Parameter importances", "", *_importances(study)]
        lines += _replay(rows, tolerance)
        lines += _cost(rows)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return [out / "report.md", *files]


def _summary(study: optuna.Study, tolerance: float | None, states: Counter) -> list[str]:
    """The title, the question the study asks, its trials by state, the base model, what it lacks."""
    lines = [f"# lorasweep report: study `{study.study_name}`", ""]
    replicas = sum(is_replicate(t) for t in study.trials)
    lines.append(
        f"Objective: {objective_of(study)}; forgetting tolerance: "
        f"{'none set' if tolerance is None else f'{tolerance} nats/token'}. Trials: "
        + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none")
        + (
            f", {plural(replicas, 'replicate')} among them (other seeds of a configuration)."
            if replicas
            else "."
        )
    )
    base = study.user_attrs.get("base_metrics")
    if isinstance(base, dict) and {"learn", "general_loss", "general_qa_acc"} <= base.keys():
        lines.append(
            f"Base model: learn {base['learn']:.3f}, general held-out loss {base['general_loss']:.3f}, "
            f"general QA {base['general_qa_acc']:.3f}."
        )
    lines += _memory_question(study)
    lines.append("")
    missing = gaps(study, tolerance)
    if missing:
        lines += [
            "## Missing records",
            "",
            "This study lacks some of what lorasweep records (plain Optuna or an older lorasweep wrote it):",
            "",
            *(f"- {gap}" for gap in missing),
            "",
        ]
    return lines


def _memory_question(study: optuna.Study) -> list[str]:
    """What the study asks of memory: a third objective, a budget and the trials over it."""
    lines = []
    if study.user_attrs.get("memory_objective") in MEMORY_OBJECTIVES:
        name = MEMORY_OBJECTIVES[study.user_attrs["memory_objective"]]
        lines.append(f"Third objective: {MEMORY_LABELS[name]}, minimised; the front below is over all three.")
    budget = study.user_attrs.get("memory_budget_gb")
    sources = Counter(t.user_attrs.get("peak_memory_source") for t in study.trials if t.state.is_finished())
    sources.pop(None, None)
    if (lines or budget is not None) and (len(sources) > 1 or "resident" in sources):
        lines.append(
            "Peak memory here comes from "
            + ", ".join(f"{n} {source}" for source, n in sorted(sources.items()))
            + " (trial attr peak_memory_source): measured on a GPU, estimated on a CPU, and a CPU's "
            "resident memory where there was no estimate, which measures the process, not the method."
        )
    if budget is not None:
        over = [t for t in study.trials if over_budget(t) and not is_replicate(t)]
        untrained = sum(t.state == optuna.trial.TrialState.PRUNED for t in over)
        lines.append(
            f"Memory budget: {budget:g} GiB per device (peak memory: measured on a GPU, estimated on a "
            f"CPU); {plural(len(over), 'trial')} over it, left out of the comparison"
            + (f" ({untrained} not trained: their estimate was over)." if untrained else ".")
        )
    return lines


def _findings(found: list[Finding]) -> list[str]:
    """The claims' table; docs/claims.md in the lorasweep repository explains each verdict."""
    return ["## Findings", ""] + _table(
        ["claim (docs/claims.md)", "verdict", "evidence", "uncertainty"],
        [[f"{f.claim} ({f.source})", f.verdict, f.evidence, f.uncertainty or "-"] for f in found],
    )


def _learning_rates(rows: list[Row], tolerance: float | None) -> list[str]:
    table = []
    for m in sorted({r.method for r in rows}):
        b = best_lr([r for r in rows if r.method == m], tolerance)
        table.append([m, f"{b[0]:.2e}" if b else "-", f"{b[1]:.3f}" if b else "no feasible trial"])
    return ["", "## Learning rate", "", "![LR](lr.png)", ""] + _table(
        ["method", "best LR within tolerance", "learn"], table
    )


def _targets_and_ranks(rows: list[Row]) -> list[str]:
    groups = defaultdict(list)
    for r in rows:
        if r.rank is not None:
            groups[(r.method, r.targets, r.rank)].append(r)
    table = [
        [m, t, str(k), f"{max(r.learn for r in g):.3f}", str(len(g))]
        for (m, t, k), g in sorted(groups.items(), key=lambda x: (x[0][0], x[0][1], x[0][2]))
    ]
    return ["", "## Targets and rank (LoRA variants: best learn, trials)", ""] + _table(
        ["method", "targets", "rank", "best learn", "trials"],
        table or [["-", "-", "-", "no adapter trials", "0"]],
    )


def _replay(rows: list[Row], tolerance: float | None) -> list[str]:
    if len({r.replay for r in rows}) < 2:
        return []
    cmr = critical_mixture_ratio(rows, tolerance)
    if cmr is not None:
        estimate = f"{cmr:.2f}"
    elif tolerance is not None:
        estimate = "no trial within tolerance"
    else:
        estimate = "set a forgetting tolerance (--forget-tolerance)"
    return [
        "",
        "## Replay",
        "",
        "![replay](replay.png)",
        "",
        f"Estimated critical mixture ratio (largest domain share with forget within tolerance): {estimate}",
    ]


def _cost(rows: list[Row]) -> list[str]:
    table = []
    for m in sorted({r.method for r in rows}):
        g = [r for r in rows if r.method == m]
        table.append(
            [
                m,
                _median([r.trainable_params for r in g]),
                _median([r.peak_mem_bytes for r in g], 2**20),
                _median([r.tokens_per_s for r in g]),
                str(len(g)),
            ]
        )
    return ["", "## Cost (median per method)", ""] + _table(
        ["method", "trainable params", "measured peak MiB (resident on a CPU)", "tokens/s", "trials"], table
    )


def _importances(study: optuna.Study) -> list[str]:
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if complete < MIN_TRIALS_FOR_IMPORTANCE:
        return [
            (
                f"Not enough trials: {plural(complete, 'completed trial')}, "
                f"importances need {MIN_TRIALS_FOR_IMPORTANCE} or more."
            )
        ]
    lines = []
    for i, name in enumerate(value_names(study)):
        try:
            imp = optuna.importance.get_param_importances(study, target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError):
            imp = {}
        text = ", ".join(f"{p} {v:.2f}" for p, v in imp.items()) or "not enough trials"
        lines.append(f"- {name}: {text}")
    return lines


def _median(values: list[float | None], unit: float = 1) -> str:
    """Median over the trials that recorded the value (in `unit`s), or say that none did."""
    recorded = [v for v in values if v is not None]
    return f"{np.median(recorded) / unit:,.0f}" if recorded else "not recorded"


def _cells(r: Row, memory: str | None = None) -> list[str]:
    value = getattr(r, memory) if memory else None
    shown = [] if memory is None else ["-" if value is None else f"{value:,.3g}"]
    return [
        str(r.number),
        r.method,
        str(r.rank or "-"),
        r.targets or "-",
        f"{r.learning_rate:.2e}",
        f"{r.replay:g}",
        f"{r.learn:.3f}",
        f"{r.forget:+.3f}",
        *shown,
        str(r.seeds),
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]
