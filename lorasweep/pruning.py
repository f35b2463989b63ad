"""The dominance pruner: pruning for pareto (learn, forget) studies, which Optuna cannot prune.

The rule. Every trial evaluates (learn, forget) at the same evaluation points (the i-th of its
`eval_points`, so trials of different step counts compare at the same share of training). At its
point i, a running trial is stopped when at least `k` completed trials had, at their point i, a
(learn, forget) that dominates its own: learn at least as high and forget at least as low, and one
of the two strictly better. A trial is never stopped at its first `warmup_points` points.

A stopped trial could still have ended on the front if it overtook the others later; `k` above 1
makes that less likely (k trials must all be ahead), and the warm-up avoids judging on the noisy
first evaluation. Configure in a search space:

    objective: pareto
    pruner: {name: dominance, k: 2, warmup_points: 1}
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[float, float]  # (learn, forget): learn is maximised, forget minimised


def dominates(a: Point, b: Point) -> bool:
    """Whether `a` is at least as good as `b` in both objectives and better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def dominated_by(point: Point, index: int, curves: Sequence[Sequence[Point]]) -> int:
    """How many of the completed `curves` dominate `point` at evaluation point `index` (0-based)."""
    return sum(1 for curve in curves if index < len(curve) and dominates(curve[index], point))


def should_prune(
    point: Point, index: int, curves: Sequence[Sequence[Point]], k: int, warmup_points: int
) -> bool:
    """The dominance rule above, at evaluation point `index` (0-based)."""
    return index >= warmup_points and dominated_by(point, index, curves) >= k
