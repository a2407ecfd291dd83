"""Metrics against scipy and hand values."""

import math

import numpy as np
import pytest
from scipy import stats

from udaqa_pipeline.metrics import (crps_ensemble, fisher_z_mean, panel_coverage, panel_metrics,
                                    relative_l2, spearman)


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)
    b = a + rng.normal(0, 1, 40)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert math.isnan(spearman(np.ones(5), np.arange(5)))


def test_relative_l2_hand():
    y = np.array([0.0, 5.0, 10.0])
    p = np.array([1.0, 5.0, 8.0])
    # ((1/10)^2 + 0 + (2/10)^2)/3 * 100 = (0.01 + 0.04)/3*100
    assert relative_l2(y, p) == pytest.approx(5.0 / 3)


def test_fisher_z_mean():
    r = [0.87, 0.93, 0.86]
    assert fisher_z_mean(r) == pytest.approx(np.tanh(np.mean(np.arctanh(r))))
    assert fisher_z_mean([0.5, float("nan")]) == pytest.approx(0.5)
    assert fisher_z_mean([1.0, 1.0]) == pytest.approx(1.0, abs=1e-5)


def test_crps_ensemble_against_numeric_integral():
    rng = np.random.default_rng(1)
    ens = rng.normal(5, 1, (1, 9))
    x = 5.7
    grid = np.linspace(-5, 15, 200001)
    F = (ens[0][:, None] <= grid).mean(0)
    H = (grid >= x).astype(float)
    numeric = np.trapezoid((F - H) ** 2, grid)
    assert crps_ensemble(ens, np.array([[x]]))[0] == pytest.approx(numeric, abs=1e-3)
    # one-member ensemble: CRPS = absolute error
    assert crps_ensemble(np.array([[2.0]]), np.array([[3.5]]))[0] == pytest.approx(1.5)


def test_panel_coverage_and_metrics():
    panels = np.array([[[1.0, 3.0], [2.0, 2.5]]])  # one sample, S=2 panels of T=2
    real = np.array([[2.2, 4.0]])
    # panel 1 [1,3]: 2.2 in, 4.0 out; panel 2 [2,2.5]: 2.2 in, 4.0 out -> 0.5
    assert panel_coverage(panels, real)[0] == pytest.approx(0.5)
    m = panel_metrics(np.repeat(panels, 3, 0) + np.arange(3)[:, None, None],
                      np.repeat(real, 3, 0) * [[1], [2], [3]], np.array([0.1, 0.2, 0.3]))
    assert set(m) == {"crps", "coverage", "uncertainty_vs_spread_rho", "n"}
    assert m["uncertainty_vs_spread_rho"] == pytest.approx(1.0)
