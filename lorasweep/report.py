"""The comparison report: what a study says about LoRA vs full fine-tuning, from its own trials.

    lorasweep report [--study NAME] [--storage URL] [--out DIR]

Writes `report.md`, PNG plots (matplotlib) and HTML plots (optuna.visualization) into
`results/<study>/` and uploads them to the study as Optuna artifacts, so the dashboard (`--artifact-dir results/artifacts`) shows them. It reads
only the study: every number comes from the trials' values and user attrs, never from training.
Failed and pruned trials are counted, not plotted. A study without some of lorasweep's attrs
(plain Optuna, an older lorasweep) gets the sections it has data for, and a list of what is
missing and what it left out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna

from lorasweep.config import ConfigError
from lorasweep.records import Gap, has_record, objective_attr, study_gaps, trial_gaps, value_names
from lorasweep.study import best_trials, objective_of


@dataclass
class Row:
    """One completed trial, as the report reads it."""

    number: int
    method: str
    learning_rate: float
    rank: int | None
    targets: str | None
    replay: float
    learn: float
    forget: float
    # cost; None where the trial did not record it (an older lorasweep)
    trainable_params: int | None
    peak_mem_bytes: int | None
    tokens_per_s: float | None


COST_ATTRS = ("trainable_params", "peak_mem_bytes", "tokens_per_s")


def rows_of(study: optuna.Study) -> list[Row]:
    """The completed trials the comparison can read: those with a config and a forget value."""
    rows = []
    for t in _compared(study):
        a, c = t.user_attrs, t.user_attrs["config"]
        adapter = c["method"] != "full"
        rows.append(
            Row(
                t.number,
                c["method"],
                c["learning_rate"],
                c.get("rank") if adapter else None,
                c.get("target_modules") if adapter else None,
                c.get("replay_ratio", 0.0),
                t.values[0],
                t.values[1] if len(t.values) > 1 else a["forget"],
                *(a.get(attr) for attr in COST_ATTRS),
            )
        )
    return rows


def _configured(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [t for t in complete if has_record(t, "config")]


def _compared(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    # forget is the second value of a pareto study, a user attr of a constrained one
    return [t for t in _configured(study) if len(t.values) > 1 or has_record(t, "forget")]


def gaps(study: optuna.Study, tolerance: float | None = None) -> list[Gap]:
    """What the report reads that the study lacks, each with what the report does without it."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    wanted = objective_attr(study) | {"base_metrics": "the base model's own metrics are left out"}
    if tolerance is None:
        wanted["forget_tolerance"] = "best LRs are taken over all trials (--forget-tolerance sets one)"
    found = study_gaps(study, wanted)
    found += trial_gaps(complete, {"config": "left out of the comparison (it names method, rank, LR)"})
    if len(study.directions) == 1:
        found += trial_gaps(_configured(study), {"forget": "left out of the comparison"})
    cost = {attr: "left out of the cost medians" for attr in COST_ATTRS}
    return found + trial_gaps(_compared(study), cost)


def spearman(x: list[float], y: list[float]) -> float:
    """Rank correlation (no ties correction needed for what the report asks of it)."""
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    if np.std(rx) == 0 or np.std(ry) == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def best_lr(rows: list[Row], tolerance: float | None) -> tuple[float, float] | None:
    """(learning rate, learn) of the trial that learned most within the forgetting tolerance."""
    feasible = [r for r in rows if tolerance is None or r.forget <= tolerance]
    if not feasible:
        return None
    top = max(feasible, key=lambda r: r.learn)
    return top.learning_rate, top.learn


def front(rows: list[Row]) -> list[Row]:
    """The (learn up, forget down) Pareto front of `rows`, by learn."""
    ordered = sorted(rows, key=lambda r: (r.forget, -r.learn))
    kept, best = [], -math.inf
    for r in ordered:
        if r.learn > best:
            kept.append(r)
            best = r.learn
    return sorted(kept, key=lambda r: r.learn)


def findings(rows: list[Row], tolerance: float | None) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for each DESIGN.md section 2 claim this study has data for."""
    by_method: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_method[r.method].append(r)
    out = []
    nope = "not enough trials"

    # all-linear vs q,v at equal rank, each at its own best LR
    lora = by_method.get("lora", [])
    ranks = {r.rank for r in lora if r.targets == "all-linear"} & {r.rank for r in lora if r.targets == "qv"}
    claim = "All-linear LoRA learns more than q,v-only at equal rank (LoRA Without Regret)"
    if ranks:
        pairs = []
        for rank in sorted(ranks):
            a = max(r.learn for r in lora if r.rank == rank and r.targets == "all-linear")
            q = max(r.learn for r in lora if r.rank == rank and r.targets == "qv")
            pairs.append((rank, a, q))
        verdict = "confirms" if all(a > q for _, a, q in pairs) else "contradicts"
        out.append((claim, verdict, "; ".join(f"rank {k}: {a:.3f} vs {q:.3f}" for k, a, q in pairs)))
    else:
        out.append((claim, nope, "needs LoRA trials on all-linear and qv at a shared rank"))

    # higher LR learns more and forgets more within a method (until divergence)
    for method, group in sorted(by_method.items()):
        claim = f"Within {method}, a higher LR forgets more (2308.04014)"
        if len({r.learning_rate for r in group}) < 4:
            out.append((claim, nope, f"{_count(len(group), 'trial')}; needs 4 or more learning rates"))
            continue
        rho = spearman([r.learning_rate for r in group], [r.forget for r in group])
        verdict = "confirms" if rho > 0.3 else "contradicts"
        peak = max(group, key=lambda r: r.learn).learning_rate
        rising = [r for r in group if r.learning_rate <= peak]
        learn_rho = spearman([r.learning_rate for r in rising], [r.learn for r in rising])
        out.append(
            (
                claim,
                verdict,
                (
                    f"Spearman(lr, forget) = {_rho(rho)} over {len(group)} trials; "
                    f"Spearman(lr, learn) up to the best LR = {_rho(learn_rho)}"
                ),
            )
        )

    # best LoRA LR about 10x best full-FT LR
    claim = "Best LoRA LR is about 10x the best full-FT LR (LoRA Without Regret)"
    best_l, best_f = best_lr(lora, tolerance), best_lr(by_method.get("full", []), tolerance)
    swept = all(len({r.learning_rate for r in g}) >= 3 for g in (lora, by_method.get("full", [])))
    if best_l and best_f and swept:
        ratio = best_l[0] / best_f[0]
        verdict = "confirms" if 3 <= ratio <= 30 else "contradicts"
        out.append((claim, verdict, f"LoRA {best_l[0]:.2e} / full {best_f[0]:.2e} = {ratio:.1f}x"))
    else:
        out.append((claim, nope, "needs feasible LoRA and full-FT trials at 3 or more learning rates each"))

    # LoRA forgets less at equal learning
    claim = "At equal learning, LoRA forgets less than full FT (Biderman et al.)"
    lora_front, full_front = front(lora), front(by_method.get("full", []))
    comparable = [(f, [r for r in lora_front if r.learn >= f.learn]) for f in full_front]
    comparable = [(f, min(c, key=lambda r: r.forget)) for f, c in comparable if c]
    if len(comparable) >= 2:
        wins = sum(c.forget < f.forget for f, c in comparable)
        verdict = "confirms" if wins * 2 > len(comparable) else "contradicts"
        out.append(
            (
                claim,
                verdict,
                (
                    f"LoRA forgets less at {wins} of {len(comparable)} full-FT front points "
                    "(matched at learn >= the full-FT point's)"
                ),
            )
        )
    else:
        out.append(
            (claim, nope, "needs 2 or more full-FT front points matched by LoRA points that learn as much")
        )

    # replay lowers forgetting
    claim = "More replay lowers forgetting (critical mixture ratio, 2407.17467)"
    if len({r.replay for r in rows}) >= 3:
        rho = spearman([r.replay for r in rows], [r.forget for r in rows])
        out.append(
            (claim, "confirms" if rho < -0.3 else "contradicts", f"Spearman(replay, forget) = {rho:+.2f}")
        )
    else:
        out.append((claim, nope, "needs 3 or more replay ratios"))
    return out


def critical_mixture_ratio(rows: list[Row], tolerance: float | None) -> float | None:
    """Largest domain share (1 - replay) among trials whose forget stays within the tolerance."""
    if tolerance is None:
        return None
    ok = [1 - r.replay for r in rows if r.forget <= tolerance]
    return max(ok) if ok else None


def plot(rows: list[Row], out: Path) -> list[Path]:
    """PNG plots of the study; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r.method for r in rows})
    colours = dict(zip(methods, plt.cm.tab10.colors))
    files = []

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in methods:
        group = [r for r in rows if r.method == m]
        ax.scatter([r.forget for r in group], [r.learn for r in group], color=colours[m], label=m, alpha=0.7)
        f = front(group)
        ax.step([r.forget for r in f], [r.learn for r in f], where="post", color=colours[m], linewidth=1)
    ax.set(
        xlabel="forget (general held-out loss increase, nats/token)",
        ylabel="learn (domain QA exact match)",
        title="learn / forget by method, with each method's front",
    )
    ax.legend()
    files.append(_save(fig, out / "pareto.png"))

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for m in methods:
        group = sorted((r for r in rows if r.method == m), key=lambda r: r.learning_rate)
        a1.plot([r.learning_rate for r in group], [r.learn for r in group], "o", color=colours[m], label=m)
        a2.plot([r.learning_rate for r in group], [r.forget for r in group], "o", color=colours[m], label=m)
    a1.set(xscale="log", xlabel="learning rate", ylabel="learn", title="learn vs LR")
    a2.set(xscale="log", xlabel="learning rate", ylabel="forget", title="forget vs LR")
    a1.legend()
    files.append(_save(fig, out / "lr.png"))

    if len({r.replay for r in rows}) >= 2:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            group = [r for r in rows if r.method == m]
            ax.scatter([r.replay for r in group], [r.forget for r in group], color=colours[m], label=m)
        ax.set(xlabel="replay ratio", ylabel="forget", title="forget vs replay")
        ax.legend()
        files.append(_save(fig, out / "replay.png"))
    return files


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


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
    states = defaultdict(int)
    for t in study.trials:
        states[t.state.name.lower()] += 1
    rows = rows_of(study)
    lines = [f"# lorasweep report: study `{study.study_name}`", ""]
    lines.append(
        f"Objective: {objective_of(study)}; forgetting tolerance: "
        f"{'none set' if tolerance is None else f'{tolerance} nats/token'}. Trials: "
        + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none")
        + "."
    )
    base = study.user_attrs.get("base_metrics")
    if isinstance(base, dict) and {"learn", "general_loss", "general_qa_acc"} <= base.keys():
        lines.append(
            f"Base model: learn {base['learn']:.3f}, general held-out loss {base['general_loss']:.3f}, "
            f"general QA {base['general_qa_acc']:.3f}."
        )
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
    complete = states["complete"] > 0
    files = write_html(study, out) if complete else []
    if not rows:
        # what needs no lorasweep record: Optuna's own plots of the values, and the importances
        lines += [
            "No completed trial with lorasweep's records (user attr `config`) yet: nothing to compare.",
            "Studies written by plain Optuna, or still without a finished trial, get this report.",
        ]
        if complete:
            lines += [
                "",
                "Optuna's plots of the values: " + ", ".join(f"[{f.name}]({f.name})" for f in files),
            ]
            lines += ["", "## Parameter importances", "", *_importances(study)]
        (out / "report.md").write_text("\n".join(lines) + "\n")
        return [out / "report.md", *files]
    files = plot(rows, out) + files

    lines += ["## Findings", "", "| claim (DESIGN.md section 2) | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c} | {v} | {e} |" for c, v, e in findings(rows, tolerance)]

    lines += ["", "## Pareto front", "", "![learn / forget](pareto.png)", ""]
    lines += _table(
        ["trial", "method", "rank", "targets", "lr", "replay", "learn", "forget"],
        [_cells(r) for r in sorted(_study_front(study, rows), key=lambda r: -r.learn)],
    )

    lines += ["", "## Learning rate", "", "![LR](lr.png)", ""]
    ratio_rows = []
    for m in sorted({r.method for r in rows}):
        b = best_lr([r for r in rows if r.method == m], tolerance)
        ratio_rows.append([m, f"{b[0]:.2e}" if b else "-", f"{b[1]:.3f}" if b else "no feasible trial"])
    lines += _table(["method", "best LR within tolerance", "learn"], ratio_rows)

    lines += ["", "## Targets and rank (LoRA variants: best learn, trials)", ""]
    adapters = [r for r in rows if r.rank is not None]
    groups = defaultdict(list)
    for r in adapters:
        groups[(r.method, r.targets, r.rank)].append(r)
    lines += _table(
        ["method", "targets", "rank", "best learn", "trials"],
        [
            [m, t, str(k), f"{max(r.learn for r in g):.3f}", str(len(g))]
            for (m, t, k), g in sorted(groups.items(), key=lambda x: (x[0][0], x[0][1], x[0][2]))
        ]
        or [["-", "-", "-", "no adapter trials", "0"]],
    )

    lines += ["", "## Parameter importances", ""]
    lines += _importances(study)

    replays = {r.replay for r in rows}
    if len(replays) >= 2:
        cmr = critical_mixture_ratio(rows, tolerance)
        lines += [
            "",
            "## Replay",
            "",
            "![replay](replay.png)",
            "",
            "Estimated critical mixture ratio (largest domain share with forget within tolerance): "
            + (
                f"{cmr:.2f}"
                if cmr is not None
                else "no trial within tolerance"
                if tolerance is not None
                else "set a forgetting tolerance (--forget-tolerance)"
            ),
        ]

    lines += ["", "## Cost (median per method)", ""]
    cost = []
    for m in sorted({r.method for r in rows}):
        g = [r for r in rows if r.method == m]
        cost.append(
            [
                m,
                _median([r.trainable_params for r in g]),
                _median([r.peak_mem_bytes for r in g], 2**20),
                _median([r.tokens_per_s for r in g]),
                str(len(g)),
            ]
        )
    lines += _table(["method", "trainable params", "peak memory MiB", "tokens/s", "trials"], cost)
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return [out / "report.md", *files]


def write_html(study: optuna.Study, out: Path) -> list[Path]:
    """Interactive plots from optuna.visualization, self-contained (they open offline)."""
    import optuna.visualization as vis

    names = value_names(study)
    figures = {
        "history.html": vis.plot_optimization_history(
            study, target=lambda t: t.values[0], target_name=names[0]
        )
    }
    if len(study.directions) == 2:
        figures["pareto.html"] = vis.plot_pareto_front(study, target_names=names)
    files = []
    for name, fig in figures.items():
        fig.write_html(out / name, include_plotlyjs=True)
        files.append(out / name)
    return files


def _study_front(study: optuna.Study, rows: list[Row]) -> list[Row]:
    numbers = {t.number for t in best_trials(study)}
    return [r for r in rows if r.number in numbers]


MIN_TRIALS_FOR_IMPORTANCE = 8


def _rho(value: float) -> str:
    return "n/a (one value)" if math.isnan(value) else f"{value:+.2f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _importances(study: optuna.Study) -> list[str]:
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    if complete < MIN_TRIALS_FOR_IMPORTANCE:
        return [
            (
                f"Not enough trials: {_count(complete, 'completed trial')}, "
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


def _cells(r: Row) -> list[str]:
    return [
        str(r.number),
        r.method,
        str(r.rank or "-"),
        r.targets or "-",
        f"{r.learning_rate:.2e}",
        f"{r.replay:g}",
        f"{r.learn:.3f}",
        f"{r.forget:+.3f}",
    ]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def upload(study: optuna.Study, files: list[Path], artifact_dir: Path) -> int:
    """Attach the report's files to the study as artifacts (shown by optuna-dashboard).

    One artifact per file name: a report written again replaces the content of its earlier
    artifacts in the store instead of adding copies.
    """
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(base_path=str(artifact_dir))
    existing = {meta.filename: meta.artifact_id for meta in get_all_artifact_meta(study)}
    for path in files:
        if path.name in existing:
            with path.open("rb") as f:
                store.write(existing[path.name], f)
        else:
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
    return len(files)
