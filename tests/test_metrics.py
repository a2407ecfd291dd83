"""Metrics against scipy, closed forms and hand values."""

import json
import math

import numpy as np
import pytest
from scipy import stats

from udaqa_pipeline.metrics import (DEFAULT_LEVELS, calibration_metrics, crps_ensemble,
                                    final_score_calibration, fisher_z_mean, interval_coverage,
                                    kde_bandwidth, kde_nll, nominal_panel_coverage, panel_coverage,
                                    panel_metrics, relative_l2, reliability_error, sampled_panel_sd,
                                    spearman, spread_error)


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
    assert {"crps", "coverage", "uncertainty_vs_spread_rho", "n"} <= set(m)  # the calibration keys every version had
    assert m["uncertainty_vs_spread_rho"] == pytest.approx(1.0)
    assert m["n"] == 3



def _binomial_tol(p, n, k=4.0):
    """k standard errors of a share estimated from n independent Bernoulli(p) trials."""
    return k * math.sqrt(p * (1 - p) / n)


def test_crps_ensemble_sorted_form_equals_pairwise_form():
    rng = np.random.default_rng(2)
    ens = rng.normal(7, 1.5, (4, 13))
    obs = rng.normal(7, 1.0, (4, 5))
    pairwise = (np.abs(ens[:, :, None] - obs[:, None, :]).mean(axis=(1, 2))
                - 0.5 * np.abs(ens[:, :, None] - ens[:, None, :]).mean(axis=(1, 2)))
    np.testing.assert_allclose(crps_ensemble(ens, obs), pairwise, rtol=1e-12, atol=1e-12)
    # obs given as (N,) is one observation per row
    np.testing.assert_allclose(crps_ensemble(ens, obs[:, 0]), crps_ensemble(ens, obs[:, :1]))
    # a degenerate ensemble equal to the observation scores 0
    assert crps_ensemble(np.full((1, 6), 8.5), np.full((1, 3), 8.5))[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same N"):
        crps_ensemble(ens, obs[:3])


def test_crps_ensemble_matches_gaussian_closed_form():
    rng = np.random.default_rng(3)
    mu, sigma, m = 6.0, 0.8, 40000
    xs = np.array([6.0, 6.5, 7.9, 3.2])
    ens = rng.normal(mu, sigma, (len(xs), m))
    z = (xs - mu) / sigma
    closed = sigma * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    got = crps_ensemble(ens, xs)
    # sampling error of E|X - x| (5 standard errors) + the exact form's bias 0.5 E|X-X'| / m
    tol = 5 * np.abs(ens - xs[:, None]).std(axis=1) / math.sqrt(m) + sigma / (m * math.sqrt(math.pi))
    assert np.all(np.abs(got - closed) < tol)
    assert closed[3] > closed[2] > closed[1] > closed[0]  # the check is not vacuous


def test_nominal_panel_coverage():
    assert nominal_panel_coverage(7) == pytest.approx(0.75)
    assert nominal_panel_coverage(3) == pytest.approx(0.5)
    assert nominal_panel_coverage(1) == 0.0
    for bad in (0, -2, 2.5):
        with pytest.raises(ValueError):
            nominal_panel_coverage(bad)


def test_panel_coverage_of_a_same_distribution_sampler_is_nominal_and_narrow_is_below():
    rng = np.random.default_rng(4)
    n, s, t = 4000, 1, 7
    real = rng.normal(8.0, 0.4, (n, t))
    p = nominal_panel_coverage(t)
    same = panel_coverage(rng.normal(8.0, 0.4, (n, s, t)), real).mean()
    # judges of one row share a panel, so the n rows (not n*t judges) are the independent trials
    assert abs(same - p) < _binomial_tol(p, n)
    narrow = panel_coverage(rng.normal(8.0, 0.1, (n, s, t)), real).mean()
    assert narrow < p - 0.3


def test_expected_panel_coverage_is_nominal_for_iid_judges_and_matches_a_real_panel_of_the_sampler():
    from udaqa_pipeline.metrics import expected_panel_coverage

    rng = np.random.default_rng(6)
    iid = rng.normal(8.0, 0.4, (200, 40, 7))
    assert expected_panel_coverage(iid).mean() == pytest.approx(nominal_panel_coverage(7), abs=0.01)
    # panels sharing an offset (sd 3x the judges'): one panel covers far fewer of another's judges,
    # and a real panel drawn the same way shows just that coverage, not (T-1)/(T+1)
    def shared(k):
        return 8.0 + rng.normal(0, 1.2, (200, k, 1)) + rng.normal(0, 0.4, (200, k, 7))
    panels, real = shared(40), shared(1)[:, 0]
    expected = expected_panel_coverage(panels).mean()
    assert expected < 0.4
    assert panel_coverage(panels, real).mean() == pytest.approx(expected, abs=_binomial_tol(expected, 200))
    assert calibration_metrics(panels, real, np.zeros(200))["coverage_expected"] == pytest.approx(expected)
    with pytest.raises(ValueError):
        expected_panel_coverage(iid[:, :1])


def test_spread_error_zero_when_sampled_and_real_sds_match():
    rng = np.random.default_rng(5)
    real = rng.normal(8, rng.uniform(0.1, 1.0, (30, 1)), (30, 7))
    # each sampled panel: the real panel shuffled and shifted (same sd)
    panels = np.stack([[rng.permutation(r) + rng.normal() for _ in range(4)] for r in real])
    e = spread_error(panels, real)
    assert e["spread_mae"] == pytest.approx(0.0, abs=1e-12)
    assert e["spread_bias"] == pytest.approx(0.0, abs=1e-12)
    assert e["spread_rho"] == pytest.approx(1.0)
    assert e["sampled_sd"] == pytest.approx(real.std(axis=1, ddof=1).mean())


def test_spread_error_hand_values_and_ddof():
    real = np.array([[1.0, 2.0, 3.0], [5.0, 5.0, 8.0]])  # sd ddof=1: 1.0, sqrt(3)
    # sample 0: panels with sd 2 and 0 -> mean 1; sample 1: one panel with sd 0
    panels = np.array([[[0.0, 2.0, 4.0], [7.0, 7.0, 7.0]], [[6.0, 6.0, 6.0], [6.0, 6.0, 6.0]]])
    np.testing.assert_allclose(sampled_panel_sd(panels), [1.0, 0.0])
    e = spread_error(panels, real)
    assert e["spread_mae"] == pytest.approx((0.0 + math.sqrt(3)) / 2)
    assert e["spread_bias"] == pytest.approx((0.0 - math.sqrt(3)) / 2)
    assert e["real_sd"] == pytest.approx((1.0 + math.sqrt(3)) / 2)
    e0 = spread_error(panels, real, ddof=0)  # population sd: sqrt(2/3) and sqrt(2)
    assert e0["real_sd"] == pytest.approx((math.sqrt(2 / 3) + math.sqrt(2)) / 2)
    assert math.isnan(e["spread_rho"]) is False and e["spread_rho"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="ddof=1"):
        sampled_panel_sd(np.ones((2, 3, 1)))
    with pytest.raises(ValueError, match="same N and T"):
        spread_error(panels, real[:, :2])


def test_kde_nll_hand_computation():
    # two members 0 and 1, Scott bandwidth h = 2^(-1/5) * sd(ddof=1) = 2^(-1/5) / sqrt(2);
    # x = 0.5 sits 0.5 from both kernels: p = phi(0.5 / h) / h
    h = 2 ** -0.2 / math.sqrt(2)
    assert kde_bandwidth(np.array([[0.0, 1.0]]))[0] == pytest.approx(h)
    want = -math.log(math.exp(-0.5 * (0.5 / h) ** 2) / math.sqrt(2 * math.pi) / h)
    assert kde_nll(np.array([[0.0, 1.0]]), np.array([[0.5]]))[0] == pytest.approx(want)
    # all members equal: the floor holds (h = 0.1), the NLL stays finite:
    # 0.5 log(2 pi) + log(0.1) + 0.5 ((3.2 - 3) / 0.1)^2
    got = kde_nll(np.full((1, 70), 3.0), np.array([[3.2]]), min_bandwidth=0.1)[0]
    assert got == pytest.approx(0.5 * math.log(2 * math.pi) + math.log(0.1) + 2.0)
    # two observations average their NLLs
    two = kde_nll(np.full((1, 5), 3.0), np.array([[3.0, 3.2]]), min_bandwidth=0.1)[0]
    assert two == pytest.approx(0.5 * math.log(2 * math.pi) + math.log(0.1) + 1.0)
    with pytest.raises(ValueError, match="min_bandwidth"):
        kde_nll(np.ones((1, 3)), np.ones((1, 1)), min_bandwidth=0.0)
    with pytest.raises(ValueError, match="bandwidth rule"):
        kde_nll(np.ones((1, 3)), np.ones((1, 1)), rule="median")


@pytest.mark.parametrize("rule", ["scott", "silverman"])
def test_kde_nll_equals_scipy_gaussian_kde_above_the_floor(rule):
    rng = np.random.default_rng(6)
    ens = rng.normal(8, 0.6, (5, 70))
    obs = rng.normal(8, 0.6, (5, 7))
    want = [-stats.gaussian_kde(e, bw_method=rule).logpdf(o).mean() for e, o in zip(ens, obs)]
    np.testing.assert_allclose(kde_nll(ens, obs, rule=rule, min_bandwidth=1e-6), want, rtol=1e-10)


def test_kde_nll_lower_for_the_true_distribution_than_shifted_or_narrow():
    rng = np.random.default_rng(7)
    n, e, j = 200, 2000, 5
    obs = rng.normal(0, 1, (n, j))
    true = kde_nll(rng.normal(0, 1, (n, e)), obs).mean()
    shifted = kde_nll(rng.normal(1, 1, (n, e)), obs).mean()
    narrow = kde_nll(rng.normal(0, 0.3, (n, e)), obs).mean()
    assert true < shifted - 0.3 and true < narrow - 0.5
    # the KDE of N(0, 1) samples is about N(0, 1 + h^2): expected NLL is that normal's cross-entropy
    v = 1 + (e ** -0.2) ** 2
    assert true == pytest.approx(0.5 * math.log(2 * math.pi * v) + 1 / (2 * v), abs=0.1)


def test_interval_coverage_hand():
    samples = np.arange(11, dtype=float)[None]  # 0..10, E = 11
    # weibull, level 0.5: positions 0.25 * 12 = 3 and 0.75 * 12 = 9 -> [x_(3), x_(9)] = [2, 8]
    np.testing.assert_allclose(interval_coverage(samples, np.array([[5.0, 9.9, 0.0, 8.0]]), [0.5]),
                               [0.5])  # 5 and 8 (bound) inside
    # linear (type 7), level 0.5: [2.5, 7.5]
    np.testing.assert_allclose(interval_coverage(samples, np.array([[2.4, 2.5, 7.5, 7.6]]), [0.5],
                                                 method="linear"), [0.5])
    # one obs per row, given as (N,); at 0.9 the positions 0.6 and 11.4 clamp to [x_(1), x_(11)]
    np.testing.assert_allclose(interval_coverage(np.vstack([samples, samples]), np.array([5.0, 9.5]),
                                                 [0.5, 0.9]), [0.5, 1.0])
    for bad in ([0.0], [1.0], [0.5, 1.2], []):
        with pytest.raises(ValueError, match="between 0 and 1"):
            interval_coverage(samples, np.array([[1.0]]), bad)


def test_interval_coverage_same_distribution_matches_nominal():
    rng = np.random.default_rng(8)
    n, e = 20000, 39  # (E + 1)(1 - p) / 2 is an integer at every level: type 6 is exact here
    levels = np.asarray(DEFAULT_LEVELS)
    obs = rng.normal(5, 2, n)
    cov = interval_coverage(rng.normal(5, 2, (n, e)), obs, levels)
    tol = np.array([_binomial_tol(p, n) for p in levels])
    assert np.all(np.abs(cov - levels) < tol)
    # numpy's default type 7 is narrower: p (E-1)/(E+1), exactly so for uniform samples
    u_obs = rng.uniform(0, 1, n)
    lin = interval_coverage(rng.uniform(0, 1, (n, e)), u_obs, levels, method="linear")
    assert np.all(np.abs(lin - levels * (e - 1) / (e + 1)) < tol)
    assert lin[-1] < levels[-1] - 3 * tol[-1]


def test_interval_coverage_too_narrow_sampler_is_well_below_nominal():
    rng = np.random.default_rng(9)
    n, e = 20000, 99
    levels = np.asarray(DEFAULT_LEVELS)
    cov = interval_coverage(rng.normal(0, 0.5, (n, e)), rng.normal(0, 1, n), levels)
    # with exact quantiles: P(|Z| < 0.5 z_p) = 2 Phi(0.5 Phi^-1((1 + p) / 2)) - 1
    theory = 2 * stats.norm.cdf(0.5 * stats.norm.ppf((1 + levels) / 2)) - 1
    assert np.all(np.abs(cov - theory) < 0.02)
    assert np.all(cov[3:] < levels[3:] - 0.15)  # 0.4..0.9 (theory: 0.19..0.31 below)
    assert reliability_error(levels, cov) > 0.15


def test_reliability_error():
    assert reliability_error([0.5, 0.8, 0.9], [0.4, 0.8, 1.0]) == pytest.approx(0.2 / 3)
    with pytest.raises(ValueError, match="same length"):
        reliability_error([0.5, 0.8], [0.4])


def test_calibration_metrics_combines_the_measures():
    rng = np.random.default_rng(10)
    n, s, t = 40, 10, 7
    real = rng.normal(8, 0.4, (n, t))
    panels = rng.normal(8, 0.2, (n, s, t))
    u = rng.normal(size=n)
    m = calibration_metrics(panels, real, u)
    ens = panels.reshape(n, s * t)
    assert m["crps"] == pytest.approx(crps_ensemble(ens, real).mean())
    assert m["coverage"] == pytest.approx(panel_coverage(panels, real).mean())
    assert m["coverage_nominal"] == pytest.approx(0.75)
    assert m["uncertainty_vs_spread_rho"] == pytest.approx(stats.spearmanr(u, real.std(axis=1)).statistic)
    for k, v in spread_error(panels, real).items():
        assert m[k] == pytest.approx(v, nan_ok=True)
    assert m["nll"] == pytest.approx(kde_nll(ens, real).mean())
    cov = interval_coverage(ens, real, DEFAULT_LEVELS)
    assert list(m["interval_coverage"]) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    np.testing.assert_allclose(list(m["interval_coverage"].values()), cov)
    assert m["reliability_error"] == pytest.approx(np.abs(cov - np.asarray(DEFAULT_LEVELS)).mean())
    assert (m["n"], m["judges"], m["panels"], m["spread_ddof"]) == (n, t, s, 1)
    # a sampler half as wide as the real judges: too narrow on every measure
    assert m["spread_bias"] < -0.1 and m["coverage"] < 0.75 - 0.2 and m["interval_coverage"]["0.8"] < 0.7
    assert panel_metrics(panels, real, u) == m
    json.dumps(m)  # JSON-ready as it is
    with pytest.raises(ValueError, match="T=1"):
        calibration_metrics(panels[:, :, :1], real[:, :1], u)
    with pytest.raises(ValueError, match="uncertainty"):
        calibration_metrics(panels, real, u[:5])


def test_final_score_calibration():
    rng = np.random.default_rng(11)
    n, s = 3000, 99
    y = rng.normal(70, 10, n)
    m = final_score_calibration(rng.normal(70, 10, (n, s)), y)
    for p in (0.5, 0.8, 0.9):
        assert abs(m["interval_coverage"][f"{p:g}"] - p) < _binomial_tol(p, n)
    assert (m["n"], m["samples"]) == (n, s)
    # too narrow: the 80% interval covers far less
    narrow = final_score_calibration(rng.normal(70, 3, (n, s)), y)
    assert narrow["interval_coverage"]["0.8"] < 0.5 and narrow["crps"] > m["crps"]
    with pytest.raises(ValueError, match="--samples 50"):
        final_score_calibration(rng.normal(size=(n, 10)), y)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        final_score_calibration(rng.normal(size=(n, 60)), np.stack([y, y], 1))
