"""The report's plots: PNGs of learn and forget by method, LR and replay (matplotlib), and
Optuna's interactive HTML plots of the study (optuna.visualization), written into one folder.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna

from lorasweep.analysis import Row, front
from lorasweep.records import value_names

MEMORY_LABELS = {"peak_memory_gb": "peak memory GiB", "trainable_params": "trainable params"}


def plot(rows: list[Row], out: Path, memory: str | None = None, budget: float | None = None) -> list[Path]:
    """PNG plots of the study; with `memory` (a Row field: the study's memory objective, or peak
    memory under a `budget`), learn against it too. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r.method for r in rows})
    colours = dict(zip(methods, itertools.cycle(plt.cm.tab20.colors)))  # a space may have 20+ variants
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

    if memory is not None:
        files.append(_memory_plot(rows, out, memory, budget, colours))

    if len({r.replay for r in rows}) >= 2:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in methods:
            group = [r for r in rows if r.method == m]
            ax.scatter([r.replay for r in group], [r.forget for r in group], color=colours[m], label=m)
        ax.set(xlabel="replay ratio", ylabel="forget", title="forget vs replay")
        ax.legend()
        files.append(_save(fig, out / "replay.png"))
    return files


def _memory_plot(rows: list[Row], out: Path, memory: str, budget: float | None, colours: dict) -> Path:
    """learn against the memory measure, each method's (learn up, memory down) front, the budget."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m, colour in colours.items():
        group = [r for r in rows if r.method == m and getattr(r, memory) is not None]
        ax.scatter([getattr(r, memory) for r in group], [r.learn for r in group], color=colour, label=m)
        f = front(group, memory)
        ax.step([getattr(r, memory) for r in f], [r.learn for r in f], where="post", color=colour)
    if budget is not None and memory == "peak_memory_gb":
        ax.axvline(budget, color="grey", linestyle="--", label=f"budget {budget:g} GiB")
    ax.set(
        xscale="log" if memory == "trainable_params" else "linear",
        xlabel=MEMORY_LABELS[memory],
        ylabel="learn (domain QA exact match)",
        title=f"learn / {MEMORY_LABELS[memory]} by method, with each method's front",
    )
    ax.legend()
    return _save(fig, out / "memory.png")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def write_html(study: optuna.Study, out: Path) -> list[Path]:
    """Interactive plots from optuna.visualization, self-contained (they open offline)."""
    import optuna.visualization as vis

    names = value_names(study)
    figures = {
        "history.html": vis.plot_optimization_history(
            study, target=lambda t: t.values[0], target_name=names[0]
        )
    }
    if len(study.directions) in (2, 3):  # Optuna draws a 3-objective front in 3-D
        figures["pareto.html"] = vis.plot_pareto_front(study, target_names=names)
    files = []
    for name, fig in figures.items():
        fig.write_html(out / name, include_plotlyjs=True)
        files.append(out / name)
    return files
