"""Metrics as pure numpy functions (REFERENCE section 4, plus the panel and calibration measures of
issues 4 and 11).

Point predictions:

- Spearman rho: ``scipy.stats.spearmanr`` over the test set.
- R-l2 x100: 100 * mean(((y - y_hat) / (max - min))^2), max/min of the true scores of that action.
- Fisher-z average of several rho: tanh(mean(atanh(rho_i))), rho clipped to +-0.999999 so a perfect
  correlation stays finite.

Sampled judge panels against real ones (only where real judge panels exist). Shapes: ``panels``
(N, S, T) = N test samples, S sampled panels per sample, T judges per panel; ``real`` (N, T). Every
measure is in the units of the scores given (judge points for diving) unless said otherwise.

- CRPS of the S*T sampled judges as an ensemble forecast of each real judge (:func:`crps_ensemble`).
- panel coverage: share of real judges inside [min, max] of one sampled panel (:func:`panel_coverage`),
  next to its nominal (T-1)/(T+1) (:func:`nominal_panel_coverage`).
- spread error: sampled panel sd vs real panel sd (:func:`spread_error`).
- NLL of the real judges under a Gaussian kernel density of the sampled judges (:func:`kde_nll`).
- central-interval coverage for levels 0.1..0.9: a reliability curve (:func:`interval_coverage`),
  for judges (real judges vs sampled judges) and for final scores (true final vs S sampled finals).
- :func:`calibration_metrics` (= :func:`panel_metrics`) returns all panel measures in one dict;
  :func:`final_score_calibration` the final-score ones.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special, stats

# Nominal levels of the central intervals of a reliability curve (0.1, 0.2, ..., 0.9).
DEFAULT_LEVELS: tuple[float, ...] = tuple(round(k / 10, 1) for k in range(1, 10))


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman's rho; NaN when either side is constant or fewer than 2 samples."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if len(y_true) < 2 or np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        return float("nan")
    return float(stats.spearmanr(y_true, y_pred).statistic)


def relative_l2(y_true: np.ndarray, y_pred: np.ndarray, lo: float | None = None,
                hi: float | None = None) -> float:
    """R-l2 x100 with the range of the true scores (or the given lo/hi)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    lo = float(y_true.min()) if lo is None else lo
    hi = float(y_true.max()) if hi is None else hi
    if hi == lo:
        return float("nan")
    return float(100.0 * np.mean(((y_true - y_pred) / (hi - lo)) ** 2))


def fisher_z_mean(rhos: list[float] | np.ndarray) -> float:
    """Average correlations through Fisher's z; NaN entries are skipped."""
    r = np.asarray([x for x in rhos if not math.isnan(x)], float)
    if len(r) == 0:
        return float("nan")
    return float(np.tanh(np.mean(np.arctanh(np.clip(r, -0.999999, 0.999999)))))


def _ensemble_and_obs(samples: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check and shape ``samples`` (N, E) and ``obs`` (N, J) or (N,) -> float arrays (N, E), (N, J)."""
    samples, obs = np.asarray(samples, float), np.asarray(obs, float)
    if obs.ndim == 1:
        obs = obs[:, None]
    if samples.ndim != 2 or obs.ndim != 2 or samples.shape[0] != obs.shape[0]:
        raise ValueError(f"samples must be (N, E) and obs (N, J) or (N,) with the same N; got "
                         f"{samples.shape} and {obs.shape}")
    if samples.shape[1] == 0 or obs.shape[1] == 0:
        raise ValueError(f"need at least one sample and one observation per row; got {samples.shape} "
                         f"and {obs.shape}")
    return samples, obs


def _panels_and_real(panels: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check ``panels`` (N, S, T) against ``real`` (N, T) -> float arrays."""
    panels, real = np.asarray(panels, float), np.asarray(real, float)
    if panels.ndim != 3 or real.ndim != 2 or panels.shape[0] != real.shape[0] \
            or panels.shape[2] != real.shape[1]:
        raise ValueError(f"panels must be (N, S, T) and real (N, T) with the same N and T; got "
                         f"{panels.shape} and {real.shape}")
    return panels, real


def crps_ensemble(samples: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Continuous ranked probability score of an ensemble, averaged over each row's observations.

    CRPS(F_E, x) = E|X - x| - 0.5 E|X - X'| with X, X' independent draws from the E ensemble members
    (pairs with X = X' included): the exact CRPS of the ensemble's empirical CDF, i.e. the integral
    of (F_E(z) - 1[z >= x])^2 dz (Gneiting & Raftery 2007, eq. 21; the "fair" variant that divides
    by E(E-1) is not this one). E|X - X'| is computed from the sorted members,
    2/E^2 * sum_i (2i - E - 1) x_(i), so memory is O(N*E*J), not O(N*E^2).

    samples: (N, E) ensemble members per row, in score units. obs: (N, J) observations per row (e.g.
    the J real judges), or (N,). Returns (N,) CRPS in score units, averaged over the J observations;
    0 when every member equals every observation, |e - x| for a one-member ensemble.
    Raises ValueError on mismatched shapes.
    """
    samples, obs = _ensemble_and_obs(samples, obs)
    e = samples.shape[1]
    term1 = np.abs(samples[:, :, None] - obs[:, None, :]).mean(axis=1)  # (N, J)
    weights = 2.0 * np.arange(1, e + 1) - e - 1  # (E,)
    term2 = 2.0 / e**2 * (np.sort(samples, axis=1) * weights).sum(axis=1)  # (N,) = E|X - X'|
    return term1.mean(axis=1) - 0.5 * term2


def panel_coverage(panels: np.ndarray, real: np.ndarray) -> np.ndarray:
    """panels (N, S, T) sampled, real (N, T) -> (N,) share of real judges inside each drawn panel's
    [min, max] (bounds included), averaged over the S panels. Compare with
    :func:`nominal_panel_coverage` (T)."""
    panels, real = _panels_and_real(panels, real)
    lo = panels.min(axis=2)[:, :, None]
    hi = panels.max(axis=2)[:, :, None]
    inside = (real[:, None, :] >= lo) & (real[:, None, :] <= hi)
    return inside.mean(axis=(1, 2))


def nominal_panel_coverage(t: int) -> float:
    """(T - 1) / (T + 1): the probability that a fresh draw falls inside [min, max] of T i.i.d. draws
    from the same continuous distribution (the new draw is equally likely to hold any of the T + 1
    ranks; only the lowest and highest fall outside). The coverage :func:`panel_coverage` should show
    for a calibrated sampler: 0.75 for T = 7, 0.5 for T = 3 (REFERENCE section 5). With tied
    (discrete) scores the observed coverage of a calibrated sampler is higher, since bounds count
    as inside. Raises ValueError for T < 1."""
    if int(t) != t or t < 1:
        raise ValueError(f"panel size T must be a positive integer; got {t!r}")
    return (t - 1) / (t + 1)


def expected_panel_coverage(panels: np.ndarray) -> np.ndarray:
    """panels (N, S, T) sampled, S >= 2 -> (N,) the :func:`panel_coverage` a real panel would show if
    it were one more panel of the sampler: the share of the judges of sampled panel s' inside
    [min, max] of sampled panel s, over all pairs s != s'.

    Why beside :func:`nominal_panel_coverage`: (T-1)/(T+1) holds for judges drawn i.i.d. from one
    distribution. A sampler unsure of the performance as a whole draws panels that share an offset
    (``udaqa_pipeline.model.calibration``), and one of its panels covers fewer judges of another: on data
    made by the sampler's own equation, the true sampler itself shows 0.43 for T = 7
    (``tests/test_calibration.py``). This is the coverage a sampler with that structure should
    show; with an offset sd of 0 and continuous scores it is (T-1)/(T+1), with awards (ties count
    as inside) a little more. Raises ValueError for S < 2."""
    panels = np.asarray(panels, float)
    if panels.ndim != 3 or panels.shape[1] < 2:
        raise ValueError(f"panels must be (N, S, T) with S >= 2; got {panels.shape}")
    s = panels.shape[1]
    lo = panels.min(axis=2)[:, :, None, None]
    hi = panels.max(axis=2)[:, :, None, None]
    inside = (panels[:, None, :, :] >= lo) & (panels[:, None, :, :] <= hi)  # (N, s, s', T)
    own = inside[:, np.arange(s), np.arange(s)].sum(axis=(1, 2))  # a panel always covers itself
    return (inside.sum(axis=(1, 2, 3)) - own) / (s * (s - 1) * panels.shape[2])


def sampled_panel_sd(panels: np.ndarray, ddof: int = 1) -> np.ndarray:
    """panels (N, S, T) -> (N,) sd over the T judges of each sampled panel (``ddof`` as in
    ``np.std``; 1 = sample sd), averaged over the S panels, in score units. Raises ValueError when
    T <= ddof."""
    panels = np.asarray(panels, float)
    if panels.ndim != 3:
        raise ValueError(f"panels must be (N, S, T); got {panels.shape}")
    if panels.shape[2] <= ddof:
        raise ValueError(f"an sd with ddof={ddof} needs more than {ddof} judges; got T={panels.shape[2]}")
    return panels.std(axis=2, ddof=ddof).mean(axis=1)


def spread_error(panels: np.ndarray, real: np.ndarray, ddof: int = 1) -> dict[str, float]:
    """Spread of the sampled panels against the real panel's, per sample and then over samples.

    Per sample: s_hat = sd over the T judges of each sampled panel averaged over the S panels
    (:func:`sampled_panel_sd`), s = sd of the T real judges, both with the same ``ddof`` (default 1,
    the sample sd; with equal T on both sides the estimator's bias is the same for both, so the
    comparison is like for like). panels (N, S, T), real (N, T).

    Returns, in score units unless said: ``spread_mae`` mean |s_hat - s|; ``spread_bias`` mean
    (s_hat - s) (negative: sampled panels too narrow); ``spread_rho`` Spearman(s_hat, s), unitless,
    NaN when either side is constant or N < 2; ``sampled_sd`` mean s_hat; ``real_sd`` mean s.
    Even a calibrated sampler has spread_mae > 0: the real sd is one noisy draw from T judges.
    Raises ValueError on mismatched shapes or T <= ddof.
    """
    panels, real = _panels_and_real(panels, real)
    s_hat = sampled_panel_sd(panels, ddof)
    s = real.std(axis=1, ddof=ddof)
    return {"spread_mae": float(np.abs(s_hat - s).mean()), "spread_bias": float((s_hat - s).mean()),
            "spread_rho": spearman(s_hat, s), "sampled_sd": float(s_hat.mean()),
            "real_sd": float(s.mean())}


def kde_bandwidth(samples: np.ndarray, rule: str = "scott", min_bandwidth: float = 0.1) -> np.ndarray:
    """Gaussian-kernel bandwidth per row: h = max(factor * sd, min_bandwidth).

    samples: (N, E). sd is the sample sd (ddof=1) of each row; factor is scipy.stats.gaussian_kde's
    for one dimension: Scott E^(-1/5), Silverman (3E/4)^(-1/5). Above the floor the kernel density
    equals ``scipy.stats.gaussian_kde(row, bw_method=rule)``; the floor ``min_bandwidth`` (score
    units, > 0) keeps it finite where scipy fails: all members equal (sd 0) or a single member.
    Returns (N,) bandwidths in score units. Raises ValueError for an unknown rule or a floor <= 0.
    """
    samples = np.asarray(samples, float)
    if samples.ndim != 2 or samples.shape[1] == 0:
        raise ValueError(f"samples must be (N, E) with E >= 1; got {samples.shape}")
    if not min_bandwidth > 0:
        raise ValueError(f"min_bandwidth must be > 0 (score units); got {min_bandwidth}")
    e = samples.shape[1]
    factors = {"scott": e ** -0.2, "silverman": (e * 3 / 4) ** -0.2}
    if rule not in factors:
        raise ValueError(f"unknown bandwidth rule {rule!r}; use one of {sorted(factors)}")
    sd = samples.std(axis=1, ddof=1) if e > 1 else np.zeros(len(samples))
    return np.maximum(factors[rule] * sd, min_bandwidth)


def kde_nll(samples: np.ndarray, obs: np.ndarray, rule: str = "scott",
            min_bandwidth: float = 0.1) -> np.ndarray:
    """Negative log-likelihood of observations under a Gaussian kernel density of each row's samples.

    Per row: p(x) = 1/E sum_i N(x; e_i, h^2) with h from :func:`kde_bandwidth` (``rule``, floor
    ``min_bandwidth`` in score units; the default 0.1 is a fifth of the diving judges' 0.5 grid step,
    pass a floor suited to other score units). For judge panels pass the S*T sampled judges
    (``panels.reshape(N, S*T)``) and the real judges.

    samples: (N, E) in score units. obs: (N, J) or (N,). Returns (N,) -mean_j log p(x_j) in nats,
    for a density per score unit (so it shifts by log(c) when scores are scaled by c). Lower is
    better. Raises ValueError on mismatched shapes, an unknown rule or a floor <= 0.
    """
    samples, obs = _ensemble_and_obs(samples, obs)
    h = kde_bandwidth(samples, rule, min_bandwidth)[:, None, None]  # (N, 1, 1)
    z = (obs[:, :, None] - samples[:, None, :]) / h  # (N, J, E)
    log_p = (special.logsumexp(-0.5 * z**2, axis=2) - math.log(samples.shape[1])
             - np.log(h[:, :, 0]) - 0.5 * math.log(2 * math.pi))  # (N, J)
    return -log_p.mean(axis=1)


def _check_levels(levels) -> np.ndarray:
    lv = np.asarray(levels, float).ravel()
    if len(lv) == 0 or np.any(~(lv > 0) | ~(lv < 1)):
        raise ValueError(f"nominal levels must lie strictly between 0 and 1; got {levels!r}")
    return lv


def interval_coverage(samples: np.ndarray, obs: np.ndarray, levels=DEFAULT_LEVELS,
                      method: str = "weibull") -> np.ndarray:
    """Observed coverage of central intervals of the samples: one point of a reliability curve per
    nominal level.

    For level p and each row, the central interval is [q_(1-p)/2, q_(1+p)/2] of the row's samples
    (``np.quantile`` with ``method``); the coverage is the share of all observations (N*J) inside it,
    bounds included. The default ``"weibull"`` (Hyndman & Fan type 6, position p(E+1)) makes the
    expected coverage equal p when samples and observations come from the same continuous
    distribution (exactly when (E+1)(1-p)/2 is an integer, e.g. E = 39, 69 or 99 at p = 0.1..0.9;
    positions outside [1, E] are clamped to the extremes, so the widest levels need E >= 2/(1-p)-1,
    19 for p = 0.9); numpy's default ``"linear"`` (type 7) gives p(E-1)/(E+1), e.g. 0.87 instead of
    0.9 for E = 70.

    samples: (N, E) in score units, e.g. the S*T sampled judges of each sample or S sampled final
    scores. obs: (N, J) (the real judges) or (N,) (the true final score). levels: (L,) nominal
    levels in (0, 1). Returns (L,) observed coverage in [0, 1]. Raises ValueError on mismatched
    shapes or levels outside (0, 1).
    """
    samples, obs = _ensemble_and_obs(samples, obs)
    lv = _check_levels(levels)
    lo = np.quantile(samples, (1 - lv) / 2, axis=1, method=method)[:, :, None]  # (L, N, 1)
    hi = np.quantile(samples, (1 + lv) / 2, axis=1, method=method)[:, :, None]
    inside = (obs[None] >= lo) & (obs[None] <= hi)  # (L, N, J)
    return inside.mean(axis=(1, 2))


def reliability_error(levels, observed) -> float:
    """Mean |observed - nominal| over the levels of a reliability curve (0 = calibrated at every
    level), in coverage units. levels, observed: (L,). Raises ValueError on unequal lengths."""
    lv, ob = np.asarray(levels, float).ravel(), np.asarray(observed, float).ravel()
    if lv.shape != ob.shape:
        raise ValueError(f"levels and observed must have the same length; got {lv.shape} and {ob.shape}")
    return float(np.abs(ob - lv).mean())


def _coverage_dict(levels: np.ndarray, observed: np.ndarray) -> dict[str, float]:
    return {f"{p:g}": float(c) for p, c in zip(levels, observed)}


def calibration_metrics(panels: np.ndarray, real: np.ndarray, uncertainty: np.ndarray, *,
                        levels=DEFAULT_LEVELS, ddof: int = 1, rule: str = "scott",
                        min_bandwidth: float = 0.1) -> dict:
    """All panel measures for samples whose real panel has the same size T as the sampled one.

    panels: (N, S, T) sampled judges in score units; real: (N, T) real judges; uncertainty: (N,)
    predicted uncertainty (any monotone scale). The S*T sampled judges of a sample form its ensemble.
    Returns a JSON-ready dict:

    - ``crps`` mean :func:`crps_ensemble` of the S*T sampled judges against each real judge (score
      units, lower is better);
    - ``coverage`` mean :func:`panel_coverage`; ``coverage_nominal`` (T-1)/(T+1);
      ``coverage_expected`` mean :func:`expected_panel_coverage` (None for S = 1), the coverage a
      calibrated sampler of this structure shows;
    - ``uncertainty_vs_spread_rho`` Spearman(uncertainty, real panel sd with ddof 0);
    - ``spread_mae``, ``spread_bias``, ``spread_rho``, ``sampled_sd``, ``real_sd`` from
      :func:`spread_error` with ``ddof`` (recorded as ``spread_ddof``);
    - ``nll`` mean :func:`kde_nll` of the real judges (nats per judge, density per score unit;
      ``rule``, ``min_bandwidth`` recorded as ``nll_bandwidth_rule``, ``nll_min_bandwidth``);
    - ``interval_coverage`` {"0.1": observed, ...} from :func:`interval_coverage` of the real judges
      in central intervals of the sampled judges, and ``reliability_error`` (mean |observed - nominal|);
    - ``n`` (N), ``judges`` (T), ``panels`` (S).

    Raises ValueError on mismatched shapes or T < 2.
    """
    panels, real = _panels_and_real(panels, real)
    n, s, t = panels.shape
    if t < 2:
        raise ValueError(f"panel measures need at least 2 judges per panel; got T={t}")
    uncertainty = np.asarray(uncertainty, float)
    if uncertainty.shape != (n,):
        raise ValueError(f"uncertainty must be ({n},); got {uncertainty.shape}")
    ens = panels.reshape(n, s * t)
    lv = _check_levels(levels)
    cov = interval_coverage(ens, real, lv)
    return {
        "crps": float(crps_ensemble(ens, real).mean()),
        "coverage": float(panel_coverage(panels, real).mean()),
        "coverage_nominal": nominal_panel_coverage(t),
        "coverage_expected": float(expected_panel_coverage(panels).mean()) if s > 1 else None,
        "uncertainty_vs_spread_rho": spearman(uncertainty, real.std(axis=1)),
        **spread_error(panels, real, ddof),
        "spread_ddof": int(ddof),
        "nll": float(kde_nll(ens, real, rule, min_bandwidth).mean()),
        "nll_bandwidth_rule": rule,
        "nll_min_bandwidth": float(min_bandwidth),
        "interval_coverage": _coverage_dict(lv, cov),
        "reliability_error": reliability_error(lv, cov),
        "n": int(n),
        "judges": int(t),
        "panels": int(s),
    }


def panel_metrics(panels: np.ndarray, real: np.ndarray, uncertainty: np.ndarray) -> dict:
    """:func:`calibration_metrics` with its defaults (kept under this name: its first keys ``crps``,
    ``coverage``, ``uncertainty_vs_spread_rho``, ``n`` are unchanged)."""
    return calibration_metrics(panels, real, uncertainty)


def final_score_calibration(samples: np.ndarray, y_true: np.ndarray, levels=DEFAULT_LEVELS,
                            min_samples: int = 50) -> dict:
    """Calibration of the sampled final scores against the true final score.

    samples: (N, S) sampled final scores per test sample (S >= ``min_samples``, 50 by default: with
    fewer, the widest central intervals rest on a handful of extreme draws); y_true: (N,). Returns a
    JSON-ready dict: ``interval_coverage`` {"0.1": observed, ...} (:func:`interval_coverage`),
    ``reliability_error`` (mean |observed - nominal|), ``crps`` (mean :func:`crps_ensemble`, score
    units), ``n`` (N), ``samples`` (S). The 50/80/90% coverages the README reports are in
    ``interval_coverage`` when ``levels`` holds them (the default 0.1..0.9 does).
    Raises ValueError on mismatched shapes or S < min_samples.
    """
    samples, obs = _ensemble_and_obs(samples, y_true)
    if obs.shape[1] != 1:
        raise ValueError(f"y_true must be (N,): one true final score per sample; got {np.shape(y_true)}")
    if samples.shape[1] < min_samples:
        raise ValueError(f"final-score intervals need at least {min_samples} sampled final scores per "
                         f"sample; got {samples.shape[1]} (evaluate with --samples {min_samples} or more)")
    lv = _check_levels(levels)
    cov = interval_coverage(samples, obs, lv)
    return {"interval_coverage": _coverage_dict(lv, cov), "reliability_error": reliability_error(lv, cov),
            "crps": float(crps_ensemble(samples, obs).mean()), "n": int(samples.shape[0]),
            "samples": int(samples.shape[1])}


def score_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Spearman + R-l2 x100 for one action/group."""
    return {"spearman": spearman(y_true, y_pred), "rl2x100": relative_l2(y_true, y_pred),
            "n": int(len(y_true))}
