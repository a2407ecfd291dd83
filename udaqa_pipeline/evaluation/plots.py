"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # pyplot keeps every open figure alive otherwise
    return path


def pred_vs_true(path: Path, y: np.ndarray, pred: np.ndarray, pred_std: np.ndarray, title: str) -> Path:
    """Predicted vs true final score; error bars = std of the final score over the S draws."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.errorbar(y, pred, yerr=pred_std, fmt="o", ms=3, alpha=0.6, elinewidth=0.8)
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("true final score")
    ax.set_ylabel("predicted final score (mean of draws)")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def error_vs_uncertainty(path: Path, err: np.ndarray, u: np.ndarray, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(u, err, s=8, alpha=0.6)
    ax.set_xlabel("predicted log-uncertainty u")
    ax.set_ylabel("|predicted - true| final score")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def curriculum_share(path: Path, log_files: list[Path], title: str) -> Path:
    """Share of the training set used per epoch, one line per run log (per group)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for lf in log_files:
        rows = [json.loads(ln) for ln in lf.read_text().splitlines() if ln.strip()]
        if rows:
            ax.step([r["epoch"] for r in rows], [r["train_fraction"] for r in rows], where="post",
                    label=lf.parent.name)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("epoch")
    ax.set_ylabel("curriculum share of training set")
    ax.set_title(title, fontsize=9)
    if len(log_files) > 1:
        ax.legend(fontsize=7)
    return _save(plt, fig, path)


def reliability(path: Path, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                title: str) -> Path:
    """Reliability diagram of central intervals: nominal vs observed coverage, 5 x 5 in at 100 dpi.

    curves: label -> (nominal levels (L,), observed coverage (L,)), both in [0, 1], e.g.
    ``metrics.interval_coverage`` of the real judges in the sampled judges' intervals and of the true
    final score in the sampled finals' intervals (levels 0.1..0.9), or one curve per method. The
    dashed diagonal is perfect calibration; a curve below it means intervals too narrow.
    Raises ValueError when there is no curve, or a curve's two sequences differ in length or leave [0, 1].
    """
    if not curves:
        raise ValueError("reliability plot: no curves given")
    checked = {}
    for label, (nominal, observed) in curves.items():
        x, y = np.asarray(nominal, float).ravel(), np.asarray(observed, float).ravel()
        if x.shape != y.shape or len(x) == 0:
            raise ValueError(f"reliability curve {label!r}: {len(x)} nominal levels but {len(y)} observed values")
        if np.any((x < 0) | (x > 1)) or np.any((y < 0) | (y > 1)):
            raise ValueError(f"reliability curve {label!r}: coverages must lie in [0, 1]")
        checked[label] = (x, y)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for label, (x, y) in checked.items():
        ax.plot(x, y, "o-", ms=4, lw=1.2, label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed coverage")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    return _save(plt, fig, path)
