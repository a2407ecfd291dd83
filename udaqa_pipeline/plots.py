"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import json
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
