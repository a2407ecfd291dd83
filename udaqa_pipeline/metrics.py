"""Metrics as pure numpy functions (REFERENCE section 4, plus the panel measures of issue 4 item 5).

- Spearman rho: ``scipy.stats.spearmanr`` over the test set.
- R-l2 x100: 100 * mean(((y - y_hat) / (max - min))^2), max/min of the true scores of that action.
- Fisher-z average of several rho: tanh(mean(atanh(rho_i))), rho clipped to +-0.999999 so a perfect
  correlation stays finite.
- Panel measures (only where real judge panels exist):
  * CRPS of the sampled judges as an ensemble forecast of each real judge, in score units:
    CRPS(F, x) = E|X - x| - 0.5 E|X - X'| (the exact ensemble form), averaged over the panel's judges
    and then over samples. Lower is better; 0 = every sampled judge equals every real judge.
  * coverage: share of real judges inside [min, max] of a sampled panel of the same size, averaged
    over the S drawn panels and the samples.
  * spread correlation: Spearman between predicted uncertainty and the real panel's std.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


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


def crps_ensemble(samples: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """CRPS of ensemble ``samples`` (N, E) against each observation ``obs`` (N, J) -> (N,) averaged
    over the J observations."""
    samples, obs = np.asarray(samples, float), np.asarray(obs, float)
    term1 = np.abs(samples[:, :, None] - obs[:, None, :]).mean(axis=1)  # (N, J)
    term2 = np.abs(samples[:, :, None] - samples[:, None, :]).mean(axis=(1, 2))  # (N,)
    return term1.mean(axis=1) - 0.5 * term2


def panel_coverage(panels: np.ndarray, real: np.ndarray) -> np.ndarray:
    """panels (N, S, T) sampled, real (N, T) -> (N,) share of real judges inside each drawn panel's
    [min, max], averaged over the S panels."""
    panels, real = np.asarray(panels, float), np.asarray(real, float)
    lo = panels.min(axis=2)[:, :, None]
    hi = panels.max(axis=2)[:, :, None]
    inside = (real[:, None, :] >= lo) & (real[:, None, :] <= hi)
    return inside.mean(axis=(1, 2))


def panel_metrics(panels: np.ndarray, real: np.ndarray, uncertainty: np.ndarray) -> dict[str, float]:
    """All panel measures for samples whose real panel has the same size T as the sampled one."""
    n, s, t = panels.shape
    return {
        "crps": float(crps_ensemble(panels.reshape(n, s * t), real).mean()),
        "coverage": float(panel_coverage(panels, real).mean()),
        "uncertainty_vs_spread_rho": spearman(uncertainty, np.asarray(real, float).std(axis=1)),
        "n": int(n),
    }


def score_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Spearman + R-l2 x100 for one action/group."""
    return {"spearman": spearman(y_true, y_pred), "rl2x100": relative_l2(y_true, y_pred),
            "n": int(len(y_true))}
