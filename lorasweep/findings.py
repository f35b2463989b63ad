"""The claims a report tests, each a small function from the study's rows to a typed finding.

Every claim, its source and the rule behind its verdict are written out in docs/claims.md; the
functions here are that page in code, in the same order. A claim the study has no data for says
"not enough trials" and what it needs.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

from lorasweep.analysis import Row, best_lr, front, plural, spearman

NOT_ENOUGH = "not enough trials"
REGRET = "LoRA Without Regret"


@dataclass
class Finding:
    """One claim, as this study's trials answer it."""

    claim: str
    verdict: str  # confirms, contradicts, or NOT_ENOUGH
    evidence: str  # the study's own numbers, or what the claim needs
    source: str  # the paper, as docs/claims.md cites it


def findings(rows: list[Row], tolerance: float | None) -> list[Finding]:
    """Every claim of docs/claims.md, in its order (claim 2 once per method)."""
    by_method: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_method[r.method].append(r)
    lora, full = by_method.get("lora", []), by_method.get("full", [])
    return [
        all_linear_beats_qv(lora),
        *(higher_lr_forgets_more(method, group) for method, group in sorted(by_method.items())),
        lora_lr_is_ten_times_full(lora, full, tolerance),
        lora_forgets_less(lora, full),
        replay_lowers_forgetting(rows),
    ]


def all_linear_beats_qv(lora: list[Row]) -> Finding:
    """Claim 1: at each rank tried on both, all-linear's best learn is above q,v's."""
    answer = partial(Finding, "All-linear LoRA learns more than q,v-only at equal rank", source=REGRET)
    ranks = {r.rank for r in lora if r.targets == "all-linear"} & {r.rank for r in lora if r.targets == "qv"}
    if not ranks:
        return answer(NOT_ENOUGH, "needs LoRA trials on all-linear and qv at a shared rank")
    pairs = []
    for rank in sorted(ranks):
        a = max(r.learn for r in lora if r.rank == rank and r.targets == "all-linear")
        q = max(r.learn for r in lora if r.rank == rank and r.targets == "qv")
        pairs.append((rank, a, q))
    verdict = "confirms" if all(a > q for _, a, q in pairs) else "contradicts"
    return answer(verdict, "; ".join(f"rank {k}: {a:.3f} vs {q:.3f}" for k, a, q in pairs))


def higher_lr_forgets_more(method: str, group: list[Row]) -> Finding:
    """Claim 2: within a method, forget rises with the LR (Spearman above 0.3)."""
    answer = partial(Finding, f"Within {method}, a higher LR forgets more", source="2308.04014")
    if len({r.learning_rate for r in group}) < 4:
        return answer(NOT_ENOUGH, f"{plural(len(group), 'trial')}; needs 4 or more learning rates")
    rho = spearman([r.learning_rate for r in group], [r.forget for r in group])
    peak = max(group, key=lambda r: r.learn).learning_rate
    rising = [r for r in group if r.learning_rate <= peak]
    learn_rho = spearman([r.learning_rate for r in rising], [r.learn for r in rising])
    return answer(
        "confirms" if rho > 0.3 else "contradicts",
        f"Spearman(lr, forget) = {_rho(rho)} over {len(group)} trials; "
        f"Spearman(lr, learn) up to the best LR = {_rho(learn_rho)}",
    )


def lora_lr_is_ten_times_full(lora: list[Row], full: list[Row], tolerance: float | None) -> Finding:
    """Claim 3: the best feasible LoRA LR over the best feasible full-FT LR lies in [3, 30]."""
    answer = partial(Finding, "Best LoRA LR is about 10x the best full-FT LR", source=REGRET)
    best_l, best_f = best_lr(lora, tolerance), best_lr(full, tolerance)
    swept = all(len({r.learning_rate for r in g}) >= 3 for g in (lora, full))
    if not (best_l and best_f and swept):
        return answer(NOT_ENOUGH, "needs feasible LoRA and full-FT trials at 3 or more learning rates each")
    ratio = best_l[0] / best_f[0]
    verdict = "confirms" if 3 <= ratio <= 30 else "contradicts"
    return answer(verdict, f"LoRA {best_l[0]:.2e} / full {best_f[0]:.2e} = {ratio:.1f}x")


def lora_forgets_less(lora: list[Row], full: list[Row]) -> Finding:
    """Claim 4: matched at equal learning, LoRA's front forgets less than full FT's at most points."""
    answer = partial(Finding, "At equal learning, LoRA forgets less than full FT", source="Biderman et al.")
    lora_front = front(lora)
    comparable = [(f, [r for r in lora_front if r.learn >= f.learn]) for f in front(full)]
    matched = [(f, min(c, key=lambda r: r.forget)) for f, c in comparable if c]
    if len(matched) < 2:
        return answer(
            NOT_ENOUGH, "needs 2 or more full-FT front points matched by LoRA points that learn as much"
        )
    wins = sum(c.forget < f.forget for f, c in matched)
    return answer(
        "confirms" if wins * 2 > len(matched) else "contradicts",
        f"LoRA forgets less at {wins} of {len(matched)} full-FT front points "
        "(matched at learn >= the full-FT point's)",
    )


def replay_lowers_forgetting(rows: list[Row]) -> Finding:
    """Claim 5: over all trials, forget falls as replay rises (Spearman below -0.3)."""
    answer = partial(Finding, "More replay lowers forgetting", source="critical mixture ratio, 2407.17467")
    if len({r.replay for r in rows}) < 3:
        return answer(NOT_ENOUGH, "needs 3 or more replay ratios")
    rho = spearman([r.replay for r in rows], [r.forget for r in rows])
    verdict = "confirms" if rho < -0.3 else "contradicts"
    return answer(verdict, f"Spearman(replay, forget) = {rho:+.2f}")


def _rho(value: float) -> str:
    return "n/a (one value)" if math.isnan(value) else f"{value:+.2f}"
