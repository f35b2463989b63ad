"""The study's answer in plain words, with its uncertainty: which arm learns more, at what forgetting.

Shown at the end of `lorasweep optimize` and `lorasweep confirm`, by `lorasweep best`, at the top
of report.md, and as the study's note in optuna-dashboard. The rule (docs/claims.md, "The
verdict"): the arms are compared at equal forgetting (analysis.matched: each at its configurations
that forget no more than the least-forgetting arm's top learner, within the forget tolerance if
there is one); each arm is represented by its best of those, preferring configurations measured
with several seeds (replicates, confirm.py), and the two arms that learn most are compared with
Welch's t-test on their seeds, in learn and in forget.
An arm wins when it is better in one beyond seed noise (p < 0.05) and not worse beyond it in the
other; better in one and worse in the other is a trade-off, and an arm measured with one seed
cannot win or lose.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import optuna

from lorasweep.analysis import Row, arm_of, compare_of, describe, leader, matched, plural, rows_of
from lorasweep.replicates import REPLICATE_OF, diverged, is_replicate
from lorasweep.study import over_budget
from lorasweep.uncertainty import LEVEL, Estimate, estimate, welch_p

METHOD_NAMES = {
    "full": "full FT",
    "lora": "LoRA",
    "rslora": "rsLoRA",
    "dora": "DoRA",
    "qlora": "QLoRA",
    "peft": "other PEFT methods",
}
NOTE_START, NOTE_END = "<!-- lorasweep verdict -->", "<!-- end of lorasweep verdict -->"


@dataclass
class ArmResult:
    """The configuration that speaks for one arm, over its seeds."""

    name: str  # as the verdict says it: "LoRA", "target_modules qv"
    label: str  # the configuration in a few words
    row: Row
    learn: Estimate
    forget: Estimate
    diverged: int  # replicates whose loss diverged (not in the estimates)
    better_single: Row | None  # a configuration of the arm, run with one seed, that beat the mean


@dataclass
class Verdict:
    compare: str
    tolerance: float | None
    bar: float | None  # the equal-forgetting bar (analysis.matched); None with fewer than 2 arms
    arms: list[ArmResult]  # by mean learn, highest first
    missing: list[str]  # arms with no completed configuration (within the tolerance)
    over_budget: dict[str, int]  # of the missing arms, those with trials over the memory budget: how many
    winner: str | None  # the arm better on one metric beyond seed noise and not worse on the other
    learn_p: float | None  # Welch's t-test between the first two arms (None: one seed on a side)
    forget_p: float | None
    lines: list[str]
    budget: float | None = None  # the study's memory_budget_gb (GiB per device)


def arm_name(compare: str, arm: Any) -> str:
    return METHOD_NAMES.get(arm, str(arm)) if compare == "method" else f"{compare} {arm}"


def verdict(study: optuna.Study, tolerance: float | None = None) -> Verdict:
    """The verdict of `study`; `tolerance` defaults to the study's own forget tolerance."""
    tolerance = study.user_attrs.get("forget_tolerance") if tolerance is None else tolerance
    compare = compare_of(study)
    groups, bar = matched(rows_of(study), tolerance)
    expected = _arms(study, compare) or list(groups)
    diverged = _diverged(study)
    trials = study.get_trials(deepcopy=False)
    arms = [
        _represent(arm_name(compare, arm), groups[arm], diverged, trials) for arm in expected if arm in groups
    ]
    arms.sort(key=lambda a: -a.learn.mean)
    missing = [arm_name(compare, arm) for arm in expected if arm not in groups]
    finished = defaultdict(list)  # each arm's searching trials that ended, for the budget's word
    for t in trials:
        if t.state.is_finished() and not is_replicate(t):
            finished[arm_name(compare, arm_of(t, compare))].append(t)
    learn_p = forget_p = None
    winner = None
    if len(arms) >= 2:
        a, b = arms[0], arms[1]
        learn_p = welch_p(a.row.learn_seeds, b.row.learn_seeds)
        forget_p = welch_p(a.row.forget_seeds, b.row.forget_seeds)
        if learn_p is not None:
            learns = _side(a.learn.mean - b.learn.mean, learn_p)
            # at equal forgetting (both within the bar) learn decides; else neither may be worse
            keeps = 0 if _matched(bar, a, b) else _side(b.forget.mean - a.forget.mean, forget_p)
            if learns >= 0 and keeps >= 0 and learns + keeps > 0:
                winner = a.name
            elif learns <= 0 and keeps <= 0 and learns + keeps < 0:
                winner = b.name
    unfit = {  # arms missing because every trial they ran was over the memory budget
        name: len(finished[name])
        for name in missing
        if finished[name] and all(over_budget(t) for t in finished[name])
    }
    budget = study.user_attrs.get("memory_budget_gb")
    found = Verdict(compare, tolerance, bar, arms, missing, unfit, winner, learn_p, forget_p, [], budget)
    found.lines = _lines(found)
    return found


def _matched(bar: float | None, *arms: ArmResult) -> bool:
    """Whether the arms' configurations all forget no more than the bar (equal forgetting)."""
    return bar is not None and all(a.row.forget <= bar for a in arms)


def _arms(study: optuna.Study, compare: str) -> list[Any]:
    """The compared param's choices, as the study's space lists them."""
    space = study.user_attrs.get("space")
    params = space.get("params") if isinstance(space, dict) else None
    spec = params.get(compare) if isinstance(params, dict) else None
    return list(spec.get("choices") or []) if isinstance(spec, dict) else []


def _diverged(study: optuna.Study) -> dict[int, int]:
    """Per configuration, its replicates that diverged."""
    counts: dict[int, int] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        if REPLICATE_OF in t.user_attrs and diverged(t):
            counts[t.user_attrs[REPLICATE_OF]] = counts.get(t.user_attrs[REPLICATE_OF], 0) + 1
    return counts


def _represent(
    name: str, rows: list[Row], diverged: dict[int, int], trials: list[optuna.trial.FrozenTrial]
) -> ArmResult:
    """The arm's best configuration by mean learn, among those with replicates if any has them."""
    best = leader(rows)
    singles = [r for r in rows if r.seeds == 1 and r.learn > best.learn]
    better = max(singles, key=lambda r: r.learn) if best.seeds > 1 and singles else None
    learn, forget = estimate(best.learn_seeds or (best.learn,)), estimate(best.forget_seeds or (best.forget,))
    label = describe(trials[best.number].user_attrs["config"])
    return ArmResult(name, label, best, learn, forget, diverged.get(best.number, 0), better)


def _lines(v: Verdict) -> list[str]:
    within = "" if v.tolerance is None else f"; within forget <= {v.tolerance:g}"
    fits = "" if v.budget is None else f"; peak memory <= {v.budget:g} GiB"
    lines = [f"Verdict on {v.compare} (learn and forget as mean ± sd over seeds{within}{fits}):"]
    if v.bar is not None:
        lines.append(
            f"Compared at equal forgetting: each at its best learner with forget <= {v.bar:+.3f}, "
            "the least any arm's top learner forgets."
        )
    if not v.arms:
        none = "- no completed configuration with lorasweep's records (config, learn, forget) yet"
        return [*lines, none + (" within the tolerance" if within else "")]
    for a in v.arms:
        seeds = f"{a.learn.n} seeds" if a.learn.n > 1 else "1 seed, not replicated"
        if a.diverged:
            seeds += f"; {a.diverged} more diverged"
        lines.append(
            f"- {a.name}: {a.label} (trial {a.row.number}, {seeds}): "
            f"learn {a.learn.text()}, forget {a.forget.text(signed=True)}"
        )
    for name in v.missing:
        if name in v.over_budget:
            lines.append(
                f"- {name}: none within the memory budget (all its {plural(v.over_budget[name], 'trial')} over it)"
            )
        else:
            lines.append(
                f"- {name}: no completed configuration{' within the tolerance' if within else ''} yet"
            )
    lines.append("")
    if len(v.arms) >= 2:
        lines.append(_difference(v))
    for a in v.arms:
        if a.better_single is not None:
            lines.append(
                f"{a.name}'s trial {a.better_single.number} learned {a.better_single.learn:.3f} with one "
                f"seed, more than the mean above: lorasweep confirm --top 2 replicates it."
            )
    if set(v.missing) - set(v.over_budget):
        lines.append("Every arm needs a completed configuration: lorasweep optimize adds trials.")
    if any(a.learn.n == 1 for a in v.arms[:2]):
        lines.append("Seed noise is not measured on every arm: lorasweep confirm replicates the leaders.")
    return lines


def _side(difference: float, p: float) -> int:
    """+1 or -1 when a difference is beyond seed noise (p < 0.05) that way, else 0."""
    return (difference > 0) - (difference < 0) if p < 1 - LEVEL else 0  # a NaN p is within noise


def _difference(v: Verdict) -> str:
    a, b = v.arms[0], v.arms[1]
    learn, forget = a.learn.mean - b.learn.mean, a.forget.mean - b.forget.mean
    forgets = f"forgets {'more' if forget > 0 else 'less'} by {abs(forget):.3f}"
    if v.learn_p is None:
        return (
            f"{a.name} learns {learn:+.3f} more than {b.name} and {forgets}, with one seed on a side: "
            "not yet told from seed noise."
        )
    beyond = [_side(1.0, v.learn_p) != 0, _side(1.0, v.forget_p) != 0]
    noise = {True: "beyond seed noise", False: "within seed noise"}
    numbers = (
        f"{a.name} learns more than {b.name} by {learn:+.3f} (Welch's t-test p = {v.learn_p:.3g}, "
        f"{noise[beyond[0]]}) and {forgets} (p = {v.forget_p:.3g}, {noise[beyond[1]]})"
    )
    if _matched(v.bar, a, b):
        head = f"{v.winner} wins at equal forgetting" if v.winner else "No winner at equal forgetting"
        return f"{head}: {numbers}; both within forget <= {v.bar:+.3f}."
    if v.winner:
        return f"{v.winner} wins: {numbers}."
    if all(beyond):
        return f"No single winner, a trade-off: {numbers}; a forget tolerance (--forget-tolerance) picks one."
    return f"No winner: {numbers}."


def summary(v: Verdict) -> dict[str, Any]:
    """The verdict as `best --json` gives it."""
    return {
        "compare": v.compare,
        "forget_tolerance": v.tolerance,
        "equal_forgetting_bar": v.bar,
        "winner": v.winner,
        "learn_p": v.learn_p,
        "forget_p": v.forget_p,
        "arms": [
            {
                "arm": a.name,
                "trial": a.row.number,
                "seeds": a.learn.n,
                "learn_mean": a.learn.mean,
                "learn_sd": a.learn.sd,
                "forget_mean": a.forget.mean,
                "forget_sd": a.forget.sd,
                "diverged": a.diverged,
            }
            for a in v.arms
        ],
        "missing": v.missing,
        "over_budget": v.over_budget,
        "text": v.lines,
    }


def save_note(study: optuna.Study, v: Verdict) -> None:
    """The verdict as the study's note in optuna-dashboard; what a user wrote there is kept."""
    import optuna_dashboard

    note = optuna_dashboard.get_note(study) or ""
    head, tail = note, ""
    if NOTE_START in note and NOTE_END in note.split(NOTE_START, 1)[1]:  # ours, to replace
        head, rest = note.split(NOTE_START, 1)
        tail = rest.split(NOTE_END, 1)[1]
    ours = "\n".join([NOTE_START, "## lorasweep verdict", "", *v.lines, NOTE_END])
    optuna_dashboard.save_note(study, "\n".join(p for p in (head.strip(), ours, tail.strip()) if p))
