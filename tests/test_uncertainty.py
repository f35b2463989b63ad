"""Seed-noise arithmetic on constructed values, checked against hand computation."""

import math

import pytest

from lorasweep.uncertainty import estimate, pooled, spearman_interval, t_quantile, welch_p


def test_estimate_is_mean_and_sample_sd():
    found = estimate([0.61, 0.64, 0.66, 0.66, 0.60])
    assert found.mean == pytest.approx(0.634)
    assert found.sd == pytest.approx(math.sqrt(((-0.024) ** 2 + 0.006**2 + 2 * 0.026**2 + 0.034**2) / 4))
    assert found.n == 5 and found.text() == "0.634 ± 0.028"
    single = estimate([0.5])
    assert single.sd is None and single.text(signed=True) == "+0.500"


def test_welch_p_value():
    # t = (2 - 5) / sqrt(1/3 + 1/3) = -3.674, df = 4: two-sided p = 0.0213
    assert welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.0213, abs=1e-4)
    assert welch_p([1, 2], [1, 2]) == pytest.approx(1.0)
    assert welch_p([1], [4, 5]) is None  # one seed on a side: no test
    assert welch_p([1, 1], [2, 2]) == 0.0 and welch_p([1, 1], [1, 1]) == 1.0  # no spread at all


def test_pooled_noise_and_its_margin():
    noise = pooled([[1, 2, 3], [4, 6], [9]])  # squares 2 + 2, dof 2 + 1; a single seed adds nothing
    assert noise.dof == 3 and noise.configurations == 2
    assert noise.sd == pytest.approx(math.sqrt(4 / 3))
    assert t_quantile(3) == pytest.approx(3.182, abs=1e-3)
    assert noise.margin(1, 1) == pytest.approx(3.182 * math.sqrt(4 / 3) * math.sqrt(2), rel=1e-3)
    assert noise.margin(3, 3) == pytest.approx(noise.margin(1, 1) / math.sqrt(3))
    assert pooled([[1], [2]]) is None  # no replicates: noise not measured


def test_spearman_interval_by_fisher_z():
    # z = atanh(0.5) = 0.549, half width 1.96 * 1.06 / sqrt(9) = 0.693
    low, high = spearman_interval(0.5, 12)
    assert low == pytest.approx(math.tanh(0.5493 - 0.6925), abs=1e-3)
    assert high == pytest.approx(math.tanh(0.5493 + 0.6925), abs=1e-3)
    assert spearman_interval(1.0, 30)[1] < 1.0  # a perfect correlation still has an interval
