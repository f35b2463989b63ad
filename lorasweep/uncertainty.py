"""Seed noise and the tests that tell an effect from it; arithmetic only, no study.

A configuration trained with several seeds (its replicates) gives a mean and a standard
deviation; the replicates of all configurations together give the study's seed noise (the pooled
within-configuration standard deviation). Two means differ beyond noise when the difference is
larger than the t quantile times its standard error. The rules each claim applies are in
docs/claims.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95  # two-sided confidence of every interval and test (p < 0.05)


@dataclass(frozen=True)
class Estimate:
    """A metric of one configuration over its seeds."""

    mean: float
    sd: float | None  # sample standard deviation; None with one seed
    n: int

    def text(self, signed: bool = False) -> str:
        """'0.630 ± 0.030' (mean ± sd), or '0.630' for a single seed."""
        mean = f"{self.mean:+.3f}" if signed else f"{self.mean:.3f}"
        return mean if self.sd is None else f"{mean} ± {self.sd:.3f}"


def estimate(values: Sequence[float]) -> Estimate:
    """Mean and sample standard deviation (n - 1) of one configuration's seeds."""
    if not values:
        raise ValueError("an estimate needs at least one value")
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return Estimate(float(np.mean(values)), sd, len(values))


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test that the means of `a` and `b` differ (None: fewer than
    two values on a side). Without any spread, equal means give 1 and different ones 0."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.std(a) == 0 and np.std(b) == 0:
        return 1.0 if np.mean(a) == np.mean(b) else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


@dataclass(frozen=True)
class Noise:
    """The seed-to-seed standard deviation of a metric, pooled over replicated configurations."""

    sd: float
    dof: int  # degrees of freedom: seeds minus configurations
    configurations: int

    def margin(self, n_a: int = 1, n_b: int = 1) -> float:
        """The smallest difference between means of n_a and n_b seeds that is beyond noise."""
        return t_quantile(self.dof) * self.sd * math.sqrt(1 / n_a + 1 / n_b)


def pooled(groups: Sequence[Sequence[float]]) -> Noise | None:
    """Pooled within-group standard deviation of the groups with two or more values (None: no such
    group, so the noise is not measured)."""
    replicated = [g for g in groups if len(g) > 1]
    dof = sum(len(g) - 1 for g in replicated)
    if not dof:
        return None
    squares = sum(float(np.sum((np.asarray(g) - np.mean(g)) ** 2)) for g in replicated)
    return Noise(math.sqrt(squares / dof), dof, len(replicated))


def t_quantile(dof: int) -> float:
    """The two-sided LEVEL quantile of Student's t with `dof` degrees of freedom."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, dof))


def spearman_interval(rho: float, n: int) -> tuple[float, float]:
    """LEVEL confidence interval of a Spearman correlation over n points: Fisher's z with the
    standard error 1.06 / sqrt(n - 3) (Fieller, Hartley and Pearson, 1957); needs n >= 4."""
    if n < 4:
        raise ValueError("a Spearman interval needs n >= 4")
    z = math.atanh(max(-0.9999, min(0.9999, rho)))
    half = stats.norm.ppf(0.5 + LEVEL / 2) * 1.06 / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def welch_interval(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """LEVEL confidence interval of mean(a) - mean(b) by Welch's t (None: one value on a side)."""
    if len(a) < 2 or len(b) < 2:
        return None
    diff = float(np.mean(a) - np.mean(b))
    if np.std(a) == 0 and np.std(b) == 0:
        return diff, diff
    found = stats.ttest_ind(a, b, equal_var=False).confidence_interval(LEVEL)
    return float(found.low), float(found.high)


def mean_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """LEVEL confidence interval of the mean of `values` by Student's t (None: one value)."""
    if len(values) < 2:
        return None
    if np.std(values) == 0:
        return float(values[0]), float(values[0])
    found = stats.ttest_1samp(values, 0.0).confidence_interval(LEVEL)
    return float(found.low), float(found.high)
