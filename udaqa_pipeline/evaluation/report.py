"""The files of an evaluation: ``metrics.json`` (strict JSON), ``predictions.parquet``, the PNG plots,
and the human-readable summary the ``evaluate`` command prints.

:func:`write_report` writes what :func:`~.evaluate.evaluate` computed to ``<run>/eval/`` (or
``<run>/eval-<sampler>`` for the baselines' samplers, or the folder given).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileutil import strict_json
from ..runs.layout import LOG
from . import plots
from .evaluate import Evaluation, run_dirs


def write_report(ev: Evaluation, out_dir: str | Path | None = None, *, make_plots: bool = True) -> dict[str, Any]:
    """Write ``predictions.parquet``, the plots (when ``make_plots``) and ``metrics.json`` of ``ev`` to
    ``out_dir`` (default ``<run>/eval``, ``<run>/eval-<sampler>`` for the other samplers); returns the
    metrics dict as written: ``ev.metrics`` plus ``plots`` (their paths) when plots were made."""
    out = dict(ev.metrics)
    folder = Path(out_dir) if out_dir is not None else (
        ev.run_dir / ("eval" if ev.sampler == "calibrated" else f"eval-{ev.sampler}"))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(ev.predictions), folder / "predictions.parquet")
    if make_plots:
        out["plots"] = _plots(ev, out, folder)
    (folder / "metrics.json").write_text(strict_json(out) + "\n")
    return out


def _plots(ev: Evaluation, m: dict[str, Any], folder: Path) -> list[str]:
    """The four PNGs of an evaluation in ``folder``; their paths (the reliability plot only when
    there is an interval coverage to draw)."""
    run_dir, p = ev.run_dir, ev.predictions
    y_a, p_a, s_a, u_a = p["true_final"], p["pred_final"], p["pred_final_std"], p["uncertainty"]
    tag = f"{run_dir.parent.name}/{run_dir.name} ({m['protocol']} protocol)"
    paths = [str(plots.pred_vs_true(folder / "pred_vs_true.png", y_a, p_a, s_a, tag)),
             str(plots.error_vs_uncertainty(folder / "error_vs_uncertainty.png", np.abs(p_a - y_a), u_a, tag)),
             str(plots.curriculum_share(folder / "curriculum_share.png", [d / LOG for d in run_dirs(run_dir)], tag))]
    curves = {f"judges {t}": _curve(v["interval_coverage"]) for t, v in m.get("panel", {}).items()}
    if "interval_coverage" in m["final_calibration"]:
        curves["final score"] = _curve(m["final_calibration"]["interval_coverage"])
    if curves:
        paths.append(str(plots.reliability(folder / "reliability.png", curves, tag)))
    return paths


def _curve(cov: dict[str, float]) -> tuple[list[float], list[float]]:
    return [float(k) for k in cov], [float(v) for v in cov.values()]


_KEPT = {"last": "train.select = last", "inner_cv": "epoch count by inner cross-validation"}


def format_metrics(m: dict) -> str:
    """Human-readable summary of a metrics dict (:attr:`Evaluation.metrics` or :func:`write_report`'s; every
    line names the protocol)."""
    p = m["protocol"]
    h = m.get("headline") or {"label": "Spearman", "value": m["overall"]["spearman"], "undefined_groups": []}
    several = "groups" in m
    lines = [f"[{p} protocol] {h['label']}: {h['value']:.4f}"
             + ("" if several else f"  R-l2x100 {m['overall']['rl2x100']:.4f}  (n={m['overall']['n']})")]
    if h["undefined_groups"]:
        lines.append(f"[{p}] Spearman undefined (constant labels or predictions), left out of the average: "
                     + ", ".join(h["undefined_groups"]))
    for g, v in m.get("groups", {}).items():
        lines.append(f"[{p}] {g:<20s} Spearman {v['spearman']:.4f}  R-l2x100 {v['rl2x100']:.4f}  (n={v['n']})")
    if several:
        lines.append(f"[{p}] pooled over groups: Spearman {m['overall']['spearman']:.4f}  R-l2x100 "
                     f"{m['overall']['rl2x100']:.4f}  (n={m['overall']['n']}; mostly tells the groups apart)")
    for t, v in m.get("panel", {}).items():
        lines.append(f"[{p}] panel {t}: CRPS {v['crps']:.4f}  coverage {v['coverage']:.3f} (expected "
                     f"{'-' if v['coverage_expected'] is None else format(v['coverage_expected'], '.3f')}, "
                     f"i.i.d. {v['coverage_nominal']:.3f})  sd sampled/real {v['sampled_sd']:.3f}/{v['real_sd']:.3f}  "
                     f"rho(u, real spread) {v['uncertainty_vs_spread_rho']:.3f}  NLL {v['nll']:.3f}  (n={v['n']})")
    fc = m.get("final_calibration") or {}
    if "interval_coverage" in fc:
        cov = fc["interval_coverage"]
        lines.append(f"[{p}] final-score intervals: coverage " + "  ".join(
            f"{int(round(float(k) * 100))}% {cov[k]:.2f}" for k in ("0.5", "0.8", "0.9") if k in cov)
            + f"  (S={fc['samples']})")
    for name, r in m["runs"].items():
        sc = r["selection_score"]
        how = (f"selected on {r['selected_on']}" if r["selected_on"] in ("val", "test") else
               f"the end of training ({_KEPT.get(r['selected_on'], r['selected_on'])})")
        lines.append(f"[{p}] {name}: epoch {r['selected_epoch']}/{r['epochs_trained']} {how}"
                     + ("" if sc is None or math.isnan(sc) else f" (score {sc:.4f})"))
        cal = r.get("calibration")
        lines.append(f"[{p}] {name}: sampler {r.get('sampler', 'paper')}" + (
            f" (fractions of the label range: centre shift mu {cal['mu']:+.3g}, judge Laplace scale tau "
            f"{cal['tau']:.3g}, panel offset sd sigma {cal['sigma']:.3g}; fitted on the {cal['fitted_on']})"
            if cal else ""))
    return "\n".join(lines)
