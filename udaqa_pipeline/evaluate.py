"""Score a trained run on its test fold: metrics JSON, predictions Parquet, PNG plots.

- Predicted final score = mean over S prior draws of the scoring rule applied to T sampled judges'
  locations (T = the rule's panel size, or ``judges``; moved by the calibration's centre shift; see
  ``train.predict``); the S sampled final
  scores of the (calibrated) sampler give its spread and its central intervals. The Parquet keeps
  the T judges of the first draw and the 80% interval.
- Headline: Spearman's rho over the test set; with several groups (JIGSAWS tasks, AQA-7 actions)
  the Fisher-z average of the per-group rho, because a rho pooled over groups mostly measures how
  well the groups' score ranges are told apart (a model predicting each group's mean gets a high
  pooled rho). The pooled value is kept, labelled ``pooled over groups``; a group whose rho is
  undefined (constant labels or predictions) is named in ``undefined_groups``, never averaged in
  silently.
- Panel calibration (:func:`udaqa_pipeline.metrics.calibration_metrics`) on samples whose real panel
  has more than one judge and as many judges as were sampled: CRPS, panel coverage beside the
  sampler's expected coverage (what a calibrated sampler of its structure shows) and the i.i.d.
  value (T-1)/(T+1), spread error, KDE negative log-likelihood, central-interval coverage of the judges,
  Spearman of the model's log-uncertainty u against the real panel's sd.
- Final-score calibration (every dataset, S >= 50 draws): coverage of the central 10..90% intervals
  of the S sampled final scores against the true final score
  (:func:`udaqa_pipeline.metrics.final_score_calibration`) and a reliability plot.
- Every number is tagged with the run's protocol ("honest": model chosen without the test fold,
  test scored here once; "paper": epoch chosen on test).
Outputs go to ``<run>/eval/`` (``metrics.json``, ``predictions.parquet``, ``*.png``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .fileutil import strict_json
from . import plots
from .runs.checkpoint import CheckpointError, load_run
from .errors import ArgumentError
from .metrics import calibration_metrics, final_score_calibration, fisher_z_mean, score_metrics, spearman
from .inference.predict import predict
from .runs.layout import LOG, safe_name
from .trainset import Labels, TrainingSet


def run_training_set(run: Any, *, cache: Any = None, cache_root: Any = None, source: Any = None) -> TrainingSet:
    """The training set a run is evaluated on: ``cache`` when given, else the cache the run was
    trained on (found by the hash it recorded); refused (:class:`CheckpointError`) when the cache's
    features are not the run's."""
    from . import resolve

    data = resolve.training_set(run.config.get("dataset", {}).get("name"), cache=cache, cache_root=cache_root,
                                cache_hash=None if cache is not None else run.cache_hash, source=source)
    if data.provenance.cache_hash != run.cache_hash:
        raise CheckpointError(f"the run was trained on features {run.cache_hash}, but the cache given is "
                              f"{data.provenance.cache_hash}; pass --cache with the training cache or retrain")
    return data


def run_dirs(run_dir: Path) -> list[Path]:
    """The single-model run directories of a run: itself, or one per group (``groups.json``)."""
    gj = run_dir / "groups.json"
    if gj.exists():
        groups = json.loads(gj.read_text())["groups"]
        return [run_dir / safe_name(g) for g in groups]
    return [run_dir]


def evaluate(run_dir: str | Path | None = None, *, dataset: str | None = None, fold: int | None = None,
             cv: int | None = None, split: str = "official", cache: Any = None, cache_root: Any = None,
             judges: int | None = None, samples: int = 50, seed: int = 0, make_plots: bool = True,
             source: Any = None, sampler: str = "calibrated", out_dir: str | Path | None = None,
             data: TrainingSet | None = None) -> dict:
    """Evaluate the run in ``run_dir`` (default ``<runs>/<dataset>/fold<fold>``) on its test fold.

    The test rows come from ``data`` when given (fine-tuning's frames), else from the run's cache
    (:func:`run_training_set`: ``cache`` or the one the run was trained on), read through ``source``
    when given.

    ``judges``: number of sampled judges T per panel (default: the rule's); ``samples``: draws S
    (final-score intervals need S >= 50; with fewer they are left out and ``final_calibration``
    says why). ``source``: a feature source other than the cache (e.g. a fine-tuned backbone over
    frames; the caller loads its weights from ``load_run(run).source_state``). ``sampler``:
    "calibrated" (the run's fitted calibration, :mod:`udaqa_pipeline.calibration`; the paper's
    sampler when the run has none), "paper" (the prior draws as the paper samples them), or
    "residual" (baseline: the model's predicted judge mean plus residuals drawn from the training
    rows' residuals, no per-video disagreement). ``out_dir``: where the outputs go (default
    ``<run>/eval``, ``<run>/eval-<sampler>`` for the other samplers).
    Returns the metrics dict that is also written to ``<run>/eval/metrics.json``: ``headline``
    {metric, label, value, protocol, undefined_groups}, ``overall`` (pooled), ``groups``,
    ``fisher_z_spearman``, ``panel`` {"T<t>": calibration measures}, ``final_calibration``, ``runs``.
    """
    if run_dir is None:
        if dataset is None:
            raise ArgumentError("pass run_dir or dataset")
        from . import resolve

        run_dir = resolve.run_dir(dataset, fold=fold or 0, cv=cv, split=split)
    run_dir = Path(run_dir)
    ids, group, y, pred, finals, u, panels, real = [], [], [], [], [], [], [], []
    meta: dict[str, Any] = {}
    for rd in run_dirs(run_dir):
        run = load_run(rd)
        ck = run.checkpoint
        if fold is not None and ck["fold"] != fold:
            raise CheckpointError(f"{rd} was trained for test fold {ck['fold']}, not {fold}; "
                                  f"train with --fold {fold} or pass the matching --run")
        if data is None:
            data = run_training_set(run, cache=cache, cache_root=cache_root, source=source)
        labels = data.labels
        pos = {s: i for i, s in enumerate(labels.ids)}
        test_ids = ck["split"]["test"]
        missing = [s for s in test_ids if s not in pos]
        if missing:
            raise CheckpointError(f"{rd}: {len(missing)} test samples (e.g. {missing[0]}) are not in the cache's label "
                                  f"table (another dataset's `features` run with the same settings refreshed it?); "
                                  f"rerun `udaqa-pipeline features STAGE --root` with the run's data (it extracts "
                                  f"nothing already there), or pass --cache")
        rows = np.asarray([pos[s] for s in test_ids], int)
        if len(rows) == 0:
            continue
        if sampler not in SAMPLERS:
            raise ArgumentError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
        src = data.source
        p = predict(run.model, src, labels, rows, run.scaling, n_samples=samples, n_judges=judges, seed=seed,
                    calibrated=sampler == "calibrated")
        if sampler == "residual":
            p = residual_prediction(run, src, labels, rows, p, pos, samples, seed)
        for k, r in enumerate(rows):
            ids.append(labels.ids[r])
            group.append(labels.group[r])
            y.append(labels.final[r])
            pred.append(p["final"][k])
            finals.append(p["finals"][k])
            u.append(p["u"][k])
            panels.append(p["panels"][k])
            real.append(labels.judges[r])
        meta[rd.name] = {"protocol": ck["protocol"], "selected_epoch": ck["best"]["epoch"] + 1,
                         "selected_on": ck.get("select", "val" if ck["protocol"] == "honest" else "test")
                         .replace("paper", "test"),
                         "selection_score": ck["best"]["score"], "epochs_trained": ck["epoch"] + 1,
                         "sampler": sampler if sampler != "calibrated" or ck.get("calibration") else "paper",
                         "calibration": {"mu": 0.0, **{k: v for k, v in ck["calibration"].items()  # mu: 0 before the shift
                                                          if k in ("tau", "sigma", "mu", "fitted_on")}}
                         if ck.get("calibration") and sampler == "calibrated" else None}
    if not ids:
        raise CheckpointError(f"{run_dir}: the test fold is empty")
    y_a, u_a, fin = np.asarray(y, float), np.asarray(u, float), np.stack(finals)
    p_a, s_a = np.asarray(pred, float), fin.std(axis=1)
    protocols = sorted({m["protocol"] for m in meta.values()})
    protocol = protocols[0] if len(protocols) == 1 else "mixed"
    out: dict[str, Any] = {"protocol": protocol, "run": str(run_dir), "samples": samples,
                           "judges": judges, "runs": meta,
                           "overall": {**score_metrics(y_a, p_a), "protocol": protocol}}
    out.update(headline_metrics(y_a, p_a, group, protocol))
    panel_rows = [k for k in range(len(ids)) if len(real[k]) > 1 and len(real[k]) == panels[k].shape[1]]
    by_t: dict[int, list[int]] = {}
    for k in panel_rows:
        by_t.setdefault(len(real[k]), []).append(k)
    if by_t:
        out["panel"] = {f"T{t}": {**calibration_metrics(np.stack([panels[k] for k in ks]),
                                                        np.stack([real[k] for k in ks]), u_a[ks]),
                                  "protocol": protocol} for t, ks in sorted(by_t.items())}
    if samples >= FINAL_MIN_SAMPLES:
        out["final_calibration"] = {**final_score_calibration(fin, y_a), "protocol": protocol}
    else:
        out["final_calibration"] = {"skipped": f"final-score intervals need --samples >= {FINAL_MIN_SAMPLES}"}
    lo80, hi80 = np.quantile(fin, [0.1, 0.9], axis=1, method="weibull")
    ev = Path(out_dir) if out_dir is not None else run_dir / ("eval" if sampler == "calibrated" else f"eval-{sampler}")
    ev.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "group": group, "true_final": y_a, "pred_final": p_a,
                             "pred_final_std": s_a, "pred_final_lo80": lo80, "pred_final_hi80": hi80,
                             "pred_judges": [pn[0].tolist() for pn in panels],
                             "real_judges": [r.tolist() for r in real], "uncertainty": u_a}),
                   ev / "predictions.parquet")
    if make_plots:
        tag = f"{run_dir.parent.name}/{run_dir.name} ({protocol} protocol)"
        out["plots"] = [str(plots.pred_vs_true(ev / "pred_vs_true.png", y_a, p_a, s_a, tag)),
                        str(plots.error_vs_uncertainty(ev / "error_vs_uncertainty.png",
                                                       np.abs(p_a - y_a), u_a, tag)),
                        str(plots.curriculum_share(ev / "curriculum_share.png",
                                                   [d / LOG for d in run_dirs(run_dir)], tag))]
        curves = {f"judges {t}": _curve(v["interval_coverage"]) for t, v in out.get("panel", {}).items()}
        if "interval_coverage" in out["final_calibration"]:
            curves["final score"] = _curve(out["final_calibration"]["interval_coverage"])
        if curves:
            out["plots"].append(str(plots.reliability(ev / "reliability.png", curves, tag)))
    (ev / "metrics.json").write_text(strict_json(out) + "\n")
    return out


SAMPLERS = ("calibrated", "paper", "residual")


def residual_prediction(run: Any, src: Any, labels: Labels, rows: np.ndarray, p: dict, pos: dict,
                        samples: int, seed: int) -> dict:
    """Baseline (b) of the calibration table: the model's predicted judge mean (mean over the paper
    sampler's draws) plus residuals drawn from the pool of the training rows' residuals (real judge
    minus predicted judge mean), each judge independently; ``p`` (:func:`predict` of ``rows``) gets
    its panels and sampled finals replaced, and its point prediction becomes the mean of those
    finals: the pool's mean residual moves the baseline's centre, as ``mu`` moves the calibrated
    sampler's, so both are scored with the centre they sample around."""
    from .calibration import residual_panels
    from .datasets.rules import apply_rule

    fit = np.asarray([pos[s] for s in run.checkpoint["split"]["fit"] if s in pos], int)
    pf = predict(run.model, src, labels, fit, run.scaling, n_samples=samples, seed=seed, calibrated=False)
    pool = np.concatenate([labels.judges[r] - pf["panels"][k].mean() for k, r in enumerate(fit)])
    out = dict(p, panels=list(p["panels"]), finals=np.empty_like(p["finals"]))
    for k, r in enumerate(rows):
        s_, t = p["panels"][k].shape
        pan = residual_panels(np.asarray([p["panels"][k].mean()]), pool, t, s_, seed=seed + k)[0]
        out["panels"][k] = pan
        out["finals"][k] = apply_rule(labels.rule[r], pan, labels.difficulty_of(r))
    out["final"] = out["finals"].mean(axis=1)
    return out


#: Fewest prior draws per sample for final-score intervals (their quantiles are too coarse below).
FINAL_MIN_SAMPLES = 50


def _curve(cov: dict[str, float]) -> tuple[list[float], list[float]]:
    return [float(k) for k in cov], [float(v) for v in cov.values()]


def headline_metrics(y: np.ndarray, pred: np.ndarray, group: list[str], protocol: str) -> dict:
    """``headline`` (plus ``groups``, ``fisher_z_spearman``, ``mean_rl2x100`` with several groups):
    one group -> Spearman over the test set; several -> Fisher-z average of the per-group Spearman,
    groups whose rho is undefined listed in ``undefined_groups`` (the average is over the others)."""
    names = sorted(set(group))
    if len(names) <= 1:
        return {"headline": {"metric": "spearman", "label": "Spearman", "value": spearman(y, pred),
                             "protocol": protocol, "undefined_groups": []}}
    per = {}
    for g in names:
        m = np.asarray([x == g for x in group])
        per[g] = {**score_metrics(y[m], pred[m]), "protocol": protocol}
    undefined = [g for g, v in per.items() if math.isnan(v["spearman"])]
    fz = fisher_z_mean([v["spearman"] for v in per.values()])
    return {"headline": {"metric": "fisher_z_spearman", "value": fz, "protocol": protocol,
                         "label": f"Fisher-z average Spearman over {len(names) - len(undefined)} groups",
                         "undefined_groups": undefined},
            "groups": per, "fisher_z_spearman": {"value": fz, "protocol": protocol},
            "mean_rl2x100": {"value": float(np.nanmean([v["rl2x100"] for v in per.values()])), "protocol": protocol}}


_KEPT = {"last": "train.select = last", "inner_cv": "epoch count by inner cross-validation"}


def format_metrics(m: dict) -> str:
    """Human-readable summary of :func:`evaluate`'s dict (every line names the protocol)."""
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
