"""Score a trained run on its test fold: the metrics and the per-sample predictions (no files).

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
:mod:`.report` writes them to ``<run>/eval/`` (``metrics.json``, ``predictions.parquet``, ``*.png``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..inference.run import load_run
from ..runs.checkpoint import CheckpointError
from ..errors import ArgumentError
from ..metrics import calibration_metrics, final_score_calibration, fisher_z_mean, score_metrics, spearman
from ..inference.predict import predict
from ..runs.layout import safe_name
from ..data.trainset import Labels, TrainingSet

log = logging.getLogger(__name__)


def run_training_set(run: Any, *, cache: Any = None, cache_root: Any = None, source: Any = None) -> TrainingSet:
    """The training set a run is evaluated on: ``cache`` when given, else the cache the run was
    trained on (found by the hash it recorded); refused (:class:`CheckpointError`) when the cache's
    features are not the run's."""
    from .. import resolve

    data = resolve.training_set(run.config.dataset.name or None, cache=cache, cache_root=cache_root,
                                cache_hash=None if cache is not None else run.cache_hash, source=source)
    if data.provenance.cache_hash != run.cache_hash:
        raise CheckpointError(f"the run was trained on features {run.cache_hash}, but the cache given is "
                              f"{data.provenance.cache_hash}; pass --cache with the training cache or retrain")
    return data


def for_run(data: TrainingSet, run: Any) -> TrainingSet:
    """``data`` read as the run was trained: through the run's own top of I3D over the cache's cut
    when it trained one (``train.adapt = "top"``), else as it is."""
    if run.config.train.adapt == "none" or run.source_state is None or data.provenance.cache_dir is None:
        return data
    from .. import resolve
    from ..engine.adapt import adapted

    return adapted(data, run.config, resolve.device(), run.source_state)


def run_dirs(run_dir: Path) -> list[Path]:
    """The single-model run directories of a run: itself, or one per group (``groups.json``)."""
    gj = run_dir / "groups.json"
    if gj.exists():
        groups = json.loads(gj.read_text())["groups"]
        return [run_dir / safe_name(g) for g in groups]
    return [run_dir]


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` computed for one run: ``metrics`` (the dict :func:`~.report.write_report`
    writes as ``metrics.json``), ``predictions`` (one column per name of ``predictions.parquet``, one
    row per test sample), the run directory and the sampler (they name the default output folder)."""

    run_dir: Path
    sampler: str
    metrics: dict[str, Any]
    predictions: dict[str, Any]


def evaluate(run_dir: str | Path, *, fold: int | None = None, cache: Any = None, cache_root: Any = None,
             judges: int | None = None, samples: int = 50, seed: int = 0, source: Any = None,
             sampler: str = "calibrated", data: TrainingSet | None = None) -> Evaluation:
    """Evaluate the run in ``run_dir`` on its test fold; writes nothing (:func:`~.report.write_report`
    writes the files).

    The test rows come from ``data`` when given (fine-tuning's frames), else from the run's cache
    (:func:`run_training_set`: ``cache`` or the one the run was trained on), read through ``source``
    when given. ``fold``: when given, the test fold the run must have been trained for
    (:class:`CheckpointError` otherwise).

    ``judges``: number of sampled judges T per panel (default: the rule's); ``samples``: draws S
    (final-score intervals need S >= 50; with fewer they are left out and ``final_calibration``
    says why). ``source``: a feature source other than the cache (e.g. a fine-tuned backbone over
    frames; the caller loads its weights from ``load_run(run).source_state``). ``sampler``:
    "calibrated" (the run's fitted calibration, :mod:`udaqa_pipeline.model.calibration`; the paper's
    sampler when the run has none), "paper" (the prior draws as the paper samples them), or
    "residual" (baseline: the model's predicted judge mean plus residuals drawn from the training
    rows' residuals, no per-video disagreement).
    ``metrics``: ``headline`` {metric, label, value, protocol, undefined_groups}, ``overall``
    (pooled), ``groups``, ``fisher_z_spearman``, ``panel`` {"T<t>": calibration measures},
    ``final_calibration``, ``runs``.
    """
    run_dir = Path(run_dir)
    rows: dict[str, list] = {k: [] for k in ("ids", "group", "y", "pred", "finals", "u", "panels", "real")}
    meta: dict[str, Any] = {}
    for rd in run_dirs(run_dir):
        run = load_run(rd)
        if fold is not None and run.checkpoint["fold"] != fold:
            raise CheckpointError(f"{rd} was trained for test fold {run.checkpoint['fold']}, not {fold}; "
                                  f"train with --fold {fold} or pass the matching --run")
        if data is None:
            data = run_training_set(run, cache=cache, cache_root=cache_root, source=source)
        data = for_run(data, run)  # a group's own top over the cut read once for all groups
        if _predict_run(rows, rd, run, data, judges=judges, samples=samples, seed=seed, sampler=sampler):
            meta[rd.name] = _run_meta(run.checkpoint, sampler)
    if not rows["ids"]:
        raise CheckpointError(f"{run_dir}: the test fold is empty")
    return _summarise(run_dir, sampler, rows, meta, judges=judges, samples=samples)


def _test_rows(rd: Path, labels: Labels, test_ids: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    """The label-table rows of a run's test ids, and the table's id -> row map."""
    pos = {s: i for i, s in enumerate(labels.ids)}
    missing = [s for s in test_ids if s not in pos]
    if missing:
        raise CheckpointError(f"{rd}: {len(missing)} test samples (e.g. {missing[0]}) are not in the cache's label "
                              f"table (another dataset's `features` run with the same settings refreshed it?); "
                              f"rerun `udaqa-pipeline features STAGE --root` with the run's data (it extracts "
                              f"nothing already there), or pass --cache")
    return np.asarray([pos[s] for s in test_ids], int), pos


def label_drift(run: Any, labels: Labels) -> str | None:
    """Why the labels or split ``labels`` now give the run differ from those it was trained on (its
    ``labels_digest``), naming the samples that moved into or out of its test fold; None when they
    agree or the run recorded no digest."""
    from ..data.trainset import labels_digest, split_folds
    from ..runs.layout import RunSpec

    ck = run.checkpoint
    if not ck.get("labels_digest"):
        return None
    spec = RunSpec.from_checkpoint(ck)
    try:
        tr, te = split_folds(labels, spec.fold, spec.cv, run.config.train.seed, spec.split)
    except Exception as e:  # noqa: BLE001 - a fold the labels no longer have is drift too
        return f"its fold {spec.fold} cannot be rebuilt from the current labels ({e})"
    if spec.group is not None:
        tr, te = ([i for i in rows if labels.group[i] == spec.group] for rows in (tr, te))
    if labels_digest(labels, tr, te) == ck["labels_digest"]:
        return None
    moved = sorted(set(ck["split"]["test"]) ^ {labels.ids[i] for i in te})
    return ("a label, a score or the fold assignment changed since it was trained"
            + (f"; samples that moved into or out of its test fold: {', '.join(moved[:8])}" if moved else ""))


def _predict_run(acc: dict[str, list], rd: Path, run: Any, data: TrainingSet, *, judges: int | None, samples: int,
                 seed: int, sampler: str) -> bool:
    """Append one single-model run's test predictions to ``acc``; False when its test fold is empty."""
    labels = data.labels
    drift = label_drift(run, labels)
    if drift:
        log.warning(f"warning: {rd}: {drift}; it is scored on the test samples it recorded with the cache's current "
                    f"labels. Retrain it (`udaqa-pipeline train ... --no-resume`) for numbers on the current split")
    rows, pos = _test_rows(rd, labels, run.checkpoint["split"]["test"])
    if len(rows) == 0:
        return False
    if sampler not in SAMPLERS:
        raise ArgumentError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    src = data.source
    p = predict(run.model, src, labels, rows, run.scaling, n_samples=samples, n_judges=judges, seed=seed,
                calibrated=sampler == "calibrated")
    if sampler == "residual":
        p = residual_prediction(run, src, labels, rows, p, pos, samples, seed)
    for k, r in enumerate(rows):
        acc["ids"].append(labels.ids[r])
        acc["group"].append(labels.group[r])
        acc["y"].append(labels.final[r])
        acc["pred"].append(p["final"][k])
        acc["finals"].append(p["finals"][k])
        acc["u"].append(p["u"][k])
        acc["panels"].append(p["panels"][k])
        acc["real"].append(labels.judges[r])
    return True


def _run_meta(ck: dict, sampler: str) -> dict[str, Any]:
    """How a run's model was chosen and which sampler scored it (``metrics["runs"][name]``)."""
    return {"protocol": ck["protocol"], "selected_epoch": ck["best"]["epoch"] + 1,
            "selected_on": ck.get("select", "val" if ck["protocol"] == "honest" else "test")
            .replace("paper", "test"),
            "selection_score": ck["best"]["score"], "epochs_trained": ck["epoch"] + 1,
            "sampler": sampler if sampler != "calibrated" or ck.get("calibration") else "paper",
            "calibration": {"mu": 0.0, **{k: v for k, v in ck["calibration"].items()  # mu: 0 before the shift
                                             if k in ("tau", "sigma", "mu", "fitted_on")}}
            if ck.get("calibration") and sampler == "calibrated" else None}


def _summarise(run_dir: Path, sampler: str, rows: dict[str, list], meta: dict[str, Any], *, judges: int | None,
               samples: int) -> Evaluation:
    """The metrics and the prediction columns of the collected test rows."""
    ids, group, panels, real = rows["ids"], rows["group"], rows["panels"], rows["real"]
    y_a, u_a, fin = np.asarray(rows["y"], float), np.asarray(rows["u"], float), np.stack(rows["finals"])
    p_a, s_a = np.asarray(rows["pred"], float), fin.std(axis=1)
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
    predictions = {"id": ids, "group": group, "true_final": y_a, "pred_final": p_a, "pred_final_std": s_a,
                   "pred_final_lo80": lo80, "pred_final_hi80": hi80, "pred_judges": [pn[0].tolist() for pn in panels],
                   "real_judges": [r.tolist() for r in real], "uncertainty": u_a}
    return Evaluation(run_dir, sampler, out, predictions)


SAMPLERS = ("calibrated", "paper", "residual")


def residual_prediction(run: Any, src: Any, labels: Labels, rows: np.ndarray, p: dict, pos: dict,
                        samples: int, seed: int) -> dict:
    """Baseline (b) of the calibration table: the model's predicted judge mean (mean over the paper
    sampler's draws) plus residuals drawn from the pool of the training rows' residuals (real judge
    minus predicted judge mean), each judge independently; ``p`` (:func:`predict` of ``rows``) gets
    its panels and sampled finals replaced, and its point prediction becomes the mean of those
    finals: the pool's mean residual moves the baseline's centre, as ``mu`` moves the calibrated
    sampler's, so both are scored with the centre they sample around."""
    from ..model.calibration import residual_panels
    from ..datasets.rules import apply_rule

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
