"""The claims a report tests, each a small function from the study's rows to a typed finding.

Every claim, its source and the rule behind its verdict are written out in docs/claims.md; the
functions here are that page in code, in the same order. A claim the study has no data for says
"not enough trials" and what it needs; one whose numbers seed noise could have produced says
"not distinguishable from noise". The noise is measured by the study's replicates (several seeds of
one configuration, pooled over configurations: uncertainty.pooled); a study without replicates
gives single-seed verdicts and says its noise is not measured.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from functools import partial

from lorasweep.analysis import Row, best_lr, front, leader, plural, spearman
from lorasweep.uncertainty import LEVEL, Noise, mean_interval, pooled, spearman_interval, welch_interval

NOT_ENOUGH = "not enough trials"
CONFIRMS, CONTRADICTS, NOISE = "confirms", "contradicts", "not distinguishable from noise"
REGRET = "LoRA Without Regret"
WEAK = 0.3  # a correlation whose whole interval lies within ±WEAK is no relationship
ALIKE = 0.05  # two configurations "learn alike" when their difference in learn is surely within this
HU = "LoRA, 2106.09685"
UNMEASURED = "seed noise not measured: no replicates (lorasweep confirm adds them)"


@dataclass
class Finding:
    """One claim, as this study's trials answer it."""

    claim: str
    verdict: str  # CONFIRMS, CONTRADICTS, NOISE or NOT_ENOUGH
    evidence: str  # the study's own numbers, or what the claim needs
    source: str  # the paper, as docs/claims.md cites it
    uncertainty: str = ""  # what the verdict's margin rests on


@dataclass
class Noises:
    """The study's seed noise of learn and of forget (None: not measured)."""

    learn: Noise | None
    forget: Noise | None

    def describe(self, metric: str) -> str:
        noise = getattr(self, metric)
        if noise is None:
            return UNMEASURED
        return (
            f"{metric} seed noise sd {noise.sd:.3f} over {plural(noise.configurations, 'replicated configuration')}"
            f" ({noise.dof} degrees of freedom)"
        )


def noises(rows: list[Row]) -> Noises:
    return Noises(pooled([r.learn_seeds for r in rows]), pooled([r.forget_seeds for r in rows]))


def findings(rows: list[Row], tolerance: float | None) -> list[Finding]:
    """Every claim of docs/claims.md, in its order (claim 2 once per method)."""
    by_method: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_method[r.method].append(r)
    # the claims are about LoRA as the papers ran it: PEFT's default initialisation, one LR (a
    # LoRA with another init or LoRA+ is a method of its own: analysis.variant)
    lora = by_method.get("lora", [])
    full = by_method.get("full", [])
    noise = noises(rows)
    return [
        all_linear_beats_qv(lora, noise),
        *(higher_lr_forgets_more(method, group) for method, group in sorted(by_method.items())),
        lora_lr_is_ten_times_full(lora, full, tolerance, noise),
        lora_forgets_less(lora, full, noise),
        replay_lowers_forgetting(rows),
        ranks_learn_alike(lora, noise),
        alpha_is_an_lr(lora, noise),
        warmup_matters_little(rows, noise),
        lawa_helps_early(rows),
        sqrt_scaling_holds_learn(rows, noise),
    ]


def side(difference: float, noise: Noise | None, a: Row, b: Row) -> int:
    """+1 or -1 when `difference` (a's metric minus b's) is beyond seed noise that way, else 0.

    Without measured noise, the sign of the difference (0 for a tie).
    """
    if noise is None:
        return (difference > 0) - (difference < 0)
    margin = noise.margin(a.seeds, b.seeds)
    return 1 if difference > margin else -1 if difference < -margin else 0


def all_linear_beats_qv(lora: list[Row], noise: Noises) -> Finding:
    """Claim 1: at each rank tried on both, all-linear's best learn is above q,v's beyond noise."""
    answer = partial(Finding, "All-linear LoRA learns more than q,v-only at equal rank", source=REGRET)
    ranks = {r.rank for r in lora if r.targets == "all-linear"} & {r.rank for r in lora if r.targets == "qv"}
    if not ranks:
        return answer(NOT_ENOUGH, "needs LoRA trials on all-linear and qv at a shared rank")
    sides, parts = [], []
    for rank in sorted(ranks):
        a = max((r for r in lora if r.rank == rank and r.targets == "all-linear"), key=lambda r: r.learn)
        q = max((r for r in lora if r.rank == rank and r.targets == "qv"), key=lambda r: r.learn)
        sides.append(side(a.learn - q.learn, noise.learn, a, q))
        parts.append(f"rank {rank}: {a.learn:.3f} vs {q.learn:.3f}" + _beyond(sides[-1], noise.learn))
    if noise.learn is None:  # single seeds: a tie does not confirm
        verdict = CONFIRMS if all(s > 0 for s in sides) else CONTRADICTS
    else:
        verdict = (
            CONFIRMS if all(s > 0 for s in sides) else CONTRADICTS if any(s < 0 for s in sides) else NOISE
        )
    return answer(verdict, "; ".join(parts), uncertainty=noise.describe("learn"))


def higher_lr_forgets_more(method: str, group: list[Row]) -> Finding:
    """Claim 2: within a method, forget rises with the LR (Spearman's interval above 0)."""
    answer = partial(Finding, f"Within {method}, a higher LR forgets more", source="2308.04014")
    if len({r.learning_rate for r in group}) < 4:
        return answer(NOT_ENOUGH, f"{plural(len(group), 'trial')}; needs 4 or more learning rates")
    rho = spearman([r.learning_rate for r in group], [r.forget for r in group])
    peak = max(group, key=lambda r: r.learn).learning_rate
    rising = [r for r in group if r.learning_rate <= peak]
    learn_rho = spearman([r.learning_rate for r in rising], [r.learn for r in rising])
    verdict, interval = _correlation(rho, len(group), claimed=+1)
    return answer(
        verdict,
        f"Spearman(lr, forget) = {_rho(rho)} over {len(group)} trials; "
        f"Spearman(lr, learn) up to the best LR = {_rho(learn_rho)}",
        uncertainty=interval,
    )


def lora_lr_is_ten_times_full(
    lora: list[Row], full: list[Row], tolerance: float | None, noise: Noises
) -> Finding:
    """Claim 3: the best feasible LoRA LR over the best feasible full-FT LR lies in [3, 30].

    With measured noise, every LR whose learn is within noise of its method's best could be the
    best: the ratio is then a range, and the verdict needs all of it on one side.
    """
    answer = partial(Finding, "Best LoRA LR is about 10x the best full-FT LR", source=REGRET)
    best_l, best_f = best_lr(lora, tolerance), best_lr(full, tolerance)
    swept = all(len({r.learning_rate for r in g}) >= 3 for g in (lora, full))
    if not (best_l and best_f and swept):
        return answer(NOT_ENOUGH, "needs feasible LoRA and full-FT trials at 3 or more learning rates each")
    ratio = best_l[0] / best_f[0]
    evidence = f"LoRA {best_l[0]:.2e} / full {best_f[0]:.2e} = {ratio:.1f}x"
    if noise.learn is None:
        return answer(CONFIRMS if 3 <= ratio <= 30 else CONTRADICTS, evidence, uncertainty=UNMEASURED)
    tied_l, tied_f = _tied(lora, tolerance, noise.learn), _tied(full, tolerance, noise.learn)
    low, high = min(tied_l) / max(tied_f), max(tied_l) / min(tied_f)
    verdict = CONFIRMS if 3 <= low and high <= 30 else CONTRADICTS if high < 3 or low > 30 else NOISE
    return answer(
        verdict,
        f"{evidence}; LRs within noise of the best: LoRA {_span(tied_l)}, full {_span(tied_f)}, "
        f"ratio {low:.1f}x to {high:.1f}x",
        uncertainty=noise.describe("learn"),
    )


def lora_forgets_less(lora: list[Row], full: list[Row], noise: Noises) -> Finding:
    """Claim 4: matched at equal learning, LoRA's front forgets less than full FT's at most points,
    each difference beyond noise."""
    answer = partial(Finding, "At equal learning, LoRA forgets less than full FT", source="Biderman et al.")
    lora_front = front(lora)
    comparable = [(f, [r for r in lora_front if r.learn >= f.learn]) for f in front(full)]
    matched = [(f, min(c, key=lambda r: r.forget)) for f, c in comparable if c]
    if len(matched) < 2:
        return answer(
            NOT_ENOUGH, "needs 2 or more full-FT front points matched by LoRA points that learn as much"
        )
    sides = [side(f.forget - c.forget, noise.forget, f, c) for f, c in matched]
    wins, losses = sides.count(1), sides.count(-1)
    if wins * 2 > len(matched):
        verdict = CONFIRMS
    elif losses * 2 > len(matched) or noise.forget is None:  # single seeds: half or fewer contradicts
        verdict = CONTRADICTS
    else:
        verdict = NOISE
    return answer(
        verdict,
        f"LoRA forgets less at {wins} and more at {losses} of {len(matched)} full-FT front points"
        + ("" if noise.forget is None else " beyond noise")
        + " (matched at learn >= the full-FT point's)",
        uncertainty=noise.describe("forget"),
    )


def replay_lowers_forgetting(rows: list[Row]) -> Finding:
    """Claim 5: over all trials, forget falls as replay rises (Spearman's interval below 0)."""
    answer = partial(Finding, "More replay lowers forgetting", source="critical mixture ratio, 2407.17467")
    if len({r.replay for r in rows}) < 3 or len(rows) < 4:
        return answer(NOT_ENOUGH, "needs 3 or more replay ratios over 4 or more trials")
    rho = spearman([r.replay for r in rows], [r.forget for r in rows])
    verdict, interval = _correlation(rho, len(rows), claimed=-1)
    return answer(
        verdict, f"Spearman(replay, forget) = {_rho(rho)} over {len(rows)} trials", uncertainty=interval
    )


def ranks_learn_alike(lora: list[Row], noise: Noises) -> Finding:
    """Claim 6: rank 8 and rank 32, each at its best configuration, learn alike."""
    answer = partial(Finding, "On small data, LoRA rank 8 and rank 32 learn alike", source=f"{HU}; {REGRET}")
    return _alike(answer, lora, "rank", (8, 32), noise)


def alpha_is_an_lr(lora: list[Row], noise: Noises) -> Finding:
    """Claim 7: alpha = rank and alpha = 2 x rank, each at its best LR, learn alike."""
    answer = partial(Finding, "Alpha = rank and alpha = 2 x rank learn alike at their best LRs", source=HU)
    return _alike(answer, lora, "alpha/rank", (1.0, 2.0), noise)


def warmup_matters_little(rows: list[Row], noise: Noises) -> Finding:
    """Claim 8: the shortest and the longest warmup tried, within one method, learn alike."""
    answer = partial(Finding, "Warmup length matters little at the full budget", source="2308.04014")
    for method in sorted({r.method for r in rows}):
        warmups = sorted({r.config.get("warmup_ratio") for r in rows if r.method == method} - {None})
        if len(warmups) >= 2:
            group = [r for r in rows if r.method == method]
            return _alike(answer, group, "warmup_ratio", (warmups[0], warmups[-1]), noise)
    return answer(NOT_ENOUGH, "needs trials of one method at 2 or more warmup ratios")


def lawa_helps_early(rows: list[Row]) -> Finding:
    """Claim 9: at a constant LR and the shortest budget tried, LAWA's weights learn more than the
    final ones (the mean paired difference over seeds, by its interval)."""
    answer = partial(Finding, "LAWA beats the final weights early, at a constant LR", source="2306.03241")
    constant = [
        r for r in rows if r.config.get("schedule") == "constant" and len(r.lawa_learn_seeds) == r.seeds
    ]
    if not constant:
        return answer(NOT_ENOUGH, "needs constant-LR trials that record LAWA (lawa_k > 0)")
    shortest = min(r.config.get("train_tokens", 0) for r in constant)
    early = leader([r for r in constant if r.config.get("train_tokens", 0) == shortest])
    gains = [avg - final for avg, final in zip(early.lawa_learn_seeds, early.learn_seeds)]
    evidence = (
        f"trial {early.number} ({shortest} tokens): LAWA {sum(early.lawa_learn_seeds) / len(gains):.3f} vs "
        f"final {early.learn:.3f} over {plural(len(gains), 'seed')}"
    )
    interval = mean_interval(gains)
    if interval is None:
        return answer(NOT_ENOUGH, evidence + "; needs its replicates (lorasweep confirm)")
    low, high = interval
    verdict = CONFIRMS if low > 0 else CONTRADICTS if high < 0 or (-ALIKE < low and high < ALIKE) else NOISE
    return answer(
        verdict, evidence, uncertainty=f"{LEVEL:.0%} interval of the gain {low:+.3f} to {high:+.3f}"
    )


def sqrt_scaling_holds_learn(rows: list[Row], noise: Noises) -> Finding:
    """Claim 10: over the batch sizes tried, learn varies less with sqrt LR scaling than without."""
    answer = partial(
        Finding, "LR scaled by sqrt(batch ratio) holds learn across batch sizes", source="2205.10287"
    )
    spans = {}
    for scaling in ("none", "sqrt"):
        by_batch: dict[int, list[Row]] = defaultdict(list)
        for r in rows:
            if r.config.get("lr_scaling", "none") == scaling:
                by_batch[r.config.get("batch_size")].append(r)
        if len(by_batch) < 2:
            return answer(
                NOT_ENOUGH, "needs trials with lr_scaling none and sqrt, each at 2 or more batch sizes"
            )
        best = [leader(group) for group in by_batch.values()]
        spans[scaling] = (min(best, key=lambda r: r.learn), max(best, key=lambda r: r.learn))
    span = {k: high.learn - low.learn for k, (low, high) in spans.items()}
    evidence = f"learn range over batch sizes: sqrt {span['sqrt']:.3f}, none {span['none']:.3f}"
    if noise.learn is None:
        verdict = CONFIRMS if span["sqrt"] < span["none"] else CONTRADICTS
        return answer(verdict, evidence, uncertainty=UNMEASURED)
    # each range is a difference of two means: its noise, and that of the difference of ranges
    margin = math.hypot(*(noise.learn.margin(low.seeds, high.seeds) for low, high in spans.values()))
    gap = span["none"] - span["sqrt"]
    verdict = CONFIRMS if gap > margin else CONTRADICTS if gap < -margin else NOISE
    return answer(
        verdict,
        f"{evidence} (difference {gap:+.3f}, noise margin {margin:.3f})",
        uncertainty=noise.describe("learn"),
    )


def _alike(answer, rows: list[Row], field: str, values: tuple, noise: Noises) -> Finding:
    """Whether the best configurations at two values of a config field (or alpha/rank) learn
    alike: the interval of their difference in learn (Welch's, or from the pooled seed noise)
    within ±ALIKE confirms; wholly outside it contradicts."""
    groups = [[r for r in rows if _value(r, field) == value] for value in values]
    if not all(groups):
        return answer(NOT_ENOUGH, f"needs trials at {field} {values[0]} and at {values[1]}")
    a, b = (leader(g) for g in groups)
    evidence = (
        f"{field} {values[0]}: {a.learn:.3f} (trial {a.number}, {plural(a.seeds, 'seed')}) vs "
        f"{values[1]}: {b.learn:.3f} (trial {b.number}, {plural(b.seeds, 'seed')})"
    )
    interval = welch_interval(a.learn_seeds, b.learn_seeds)
    if interval is None and noise.learn is not None:
        half = noise.learn.margin(a.seeds, b.seeds)
        interval = (a.learn - b.learn - half, a.learn - b.learn + half)
    if interval is None:
        return answer(
            NOT_ENOUGH, evidence + "; needs replicates to tell alike from noise (lorasweep confirm)"
        )
    low, high = interval
    verdict = (
        CONFIRMS
        if -ALIKE <= low and high <= ALIKE
        else CONTRADICTS
        if low > ALIKE or high < -ALIKE
        else NOISE
    )
    return answer(
        verdict, evidence, uncertainty=f"{LEVEL:.0%} interval of the difference {low:+.3f} to {high:+.3f}"
    )


def _value(row: Row, field: str) -> object:
    if field == "alpha/rank":
        alpha, rank = row.config.get("alpha"), row.config.get("rank")
        return alpha / rank if alpha and rank else None
    return row.config.get(field)


def _correlation(rho: float, n: int, claimed: int) -> tuple[str, str]:
    """A correlation claimed positive (+1) or negative (-1), by its LEVEL interval: on the claimed
    side of 0, confirms; on the other side, or within ±WEAK (no relationship), contradicts."""
    if math.isnan(rho):
        return CONTRADICTS, "one value on an axis: no relationship"
    low, high = spearman_interval(rho, n)
    interval = f"{LEVEL:.0%} interval {low:+.2f} to {high:+.2f} (Fisher z)"
    if low > 0 if claimed > 0 else high < 0:
        return CONFIRMS, interval
    if (high < 0 if claimed > 0 else low > 0) or (-WEAK < low and high < WEAK):
        return CONTRADICTS, interval
    return NOISE, interval


def _tied(rows: list[Row], tolerance: float | None, noise: Noise) -> list[float]:
    """The LRs of feasible rows whose learn is within seed noise of the best one's."""
    feasible = [r for r in rows if tolerance is None or r.forget <= tolerance]
    top = max(feasible, key=lambda r: r.learn)
    return [r.learning_rate for r in feasible if top.learn - r.learn <= noise.margin(top.seeds, r.seeds)]


def _span(lrs: list[float]) -> str:
    return f"{min(lrs):.1e}" if min(lrs) == max(lrs) else f"{min(lrs):.1e}..{max(lrs):.1e}"


def _beyond(sign: int, noise: Noise | None) -> str:
    return "" if noise is None else (" (within noise)" if sign == 0 else " (beyond noise)")


def _rho(value: float) -> str:
    return "n/a (one value)" if math.isnan(value) else f"{value:+.2f}"
