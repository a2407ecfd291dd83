"""A whole cross-validated result in one call: ``udaqa-pipeline cv STAGE``.

Stage one when the cache is missing (once), then every (method, protocol, seed, fold) trained and
evaluated on the same cache and folds (joblib processes, one torch thread each), then one table.

Methods (``methods``):

- ``udaqa``: UD-AQA with the stage's recipe (``[train]`` of ``stages/<stage>.toml`` plus ``--set``).
- ``paper``: UD-AQA with the paper's model and training switches on the same stage
  (``train.PAPER_RECIPE``; learning rate, epochs and batch size stay the stage's).
- ``i3d+mlp``: the same recipe with the ablation's baseline switches (mean over clips, no latent
  branch, plain L1, no curriculum: ``ablate.ROWS["baseline I3D+MLP"]``), a point predictor: no
  calibration is fitted (``train.calibrate=none``; its ``coverage80`` is that of the paper's sampler).
- ``ridge``: scikit-learn ridge regression of the final score on the clip features of view 0
  averaged over the K clips and standardised on the training rows; alpha by efficient
  leave-one-out over the training rows (``RidgeCV``, 41 values 1e-3..1e5). Deterministic, so it
  runs once and its sd over seeds is 0.

Protocols (``protocols``): ``honest`` (model picked without the test fold, ``train.select``) and
``paper`` (best epoch on the test fold, as the published code does); every number is tagged.
Splits: ``official`` (the annotation files' folds), ``louo`` (leave one surgeon out) or ``dev``
(3 inner folds inside each official training set, the test folds never read: the split to compare
recipes on, see ``train.dev_fold``).

Per (method, protocol, group) and seed, over that seed's test folds:

- ``folds``: {fold: Spearman's rho of that test fold (predicted vs true final score) as mean and sd
  over seeds, ``per_seed``, and ``n`` test samples}; ``undefined_folds``: folds whose rho is
  undefined (constant prediction or label), left out of the averages;
- ``mean_fold_spearman``: their plain mean (the number the literature reports for JIGSAWS);
- ``fisher_z_spearman``: their Fisher-z average, tanh(mean(atanh(rho)));
- ``pooled_spearman``: rho over every test prediction of the seed pooled (each sample once);
- ``rl2x100``: mean over folds of R-l2 x100 with the group's range of true final scores
  (REFERENCE section 4);
- ``coverage80``: share of the seed's test samples whose true final score lies in the central 80%
  interval of their S >= 50 sampled final scores (pooled over folds; NaN for ridge, which samples
  nothing).

Each is reported as {"mean", "sd" (over seeds, ddof 1; 0 for one seed), "per_seed"}; ``ensemble``
holds the same statistics once for the prediction averaged over the seeds (null for one seed), and
``selected_epochs`` the mean and sd of the kept epoch (null for ridge: no epoch, no sampler, so its
``pred_sd``, ``uncertainty`` and ``selected_epoch`` are null too). With several groups,
``overall`` holds the Fisher-z average over groups of each seed's ``mean_fold_spearman``.

Outputs in ``run_dir`` (default ``<runs>/<stage>/cv-<split>``): ``cv.json`` (the dict returned, keys
above plus ``stage``, ``split``, ``cache``, ``seeds``, ``folds``, ``protocols``, ``methods``,
``samples``, ``seconds``, ``predictions``) and ``predictions.parquet``, one row per (method,
protocol, seed, sample): ``method, protocol, seed, fold, group, id, true_final, pred_final, pred_sd,
uncertainty, selected_epoch`` and ``pred_finals`` (the S sampled final scores). Runs live in
``out/runs/<method>/<protocol>/seed<s>/fold<k>`` and are reused when rerun (a killed ``cv`` resumes).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import ArgumentError
from ..fileutil import strict_json
from ..runs.layout import RunSpec, stage_name
from ..data.trainset import TrainingSet


METHODS = ("udaqa", "paper", "i3d+mlp", "ridge")
#: Methods that predict a point, not a distribution: their interval coverage says nothing.
POINT_METHODS = ("i3d+mlp", "ridge")
PROTOCOL_CHOICES = {"honest": ("honest",), "paper": ("paper",), "both": ("honest", "paper")}
RIDGE_ALPHAS = np.logspace(-3, 5, 41)
STATS = ("mean_fold_spearman", "fisher_z_spearman", "pooled_spearman", "rl2x100", "coverage80")
#: Fewest sampled final scores per test sample for the 80% interval coverage.
INTERVAL_MIN_SAMPLES = 50


def method_overrides(method: str) -> list[str]:
    """``--set`` overrides that turn the stage's recipe into ``method``."""
    if method == "udaqa":
        return []
    if method == "paper":
        from ..engine.recipe import PAPER_RECIPE

        return list(PAPER_RECIPE)
    if method == "i3d+mlp":
        from .ablate import ROWS

        return [*ROWS["baseline I3D+MLP"][0], "train.calibrate=none"]
    raise ArgumentError(f"no training recipe for method {method!r}")


def ridge_predict(features: np.ndarray, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray
                  ) -> np.ndarray:
    """Ridge baseline: features (N, K, M) -> mean over clips -> standardised on ``train_rows`` ->
    RidgeCV (alpha by leave-one-out over :data:`RIDGE_ALPHAS`) fit on ``y[train_rows]``; returns the
    predictions for ``test_rows``."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, np.float64).mean(axis=1)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    model.fit(x[train_rows], np.asarray(y, np.float64)[train_rows])
    return model.predict(x[test_rows])


def fold_ids(labels: Any, split: str) -> list[int]:
    """The test folds of ``split`` among the ok samples (official: the cache's folds; louo: one per
    surgeon)."""
    from ..data.trainset import DEV_INNER, subject_folds

    if split == "louo":
        return list(range(len(subject_folds(labels)[1])))
    if split == "dev":
        return list(range(DEV_INNER * len(fold_ids(labels, "official"))))
    ok = labels.ok
    return sorted(set(labels.fold[ok].tolist()) - {-1})


def _train_job(data: TrainingSet, spec: RunSpec, method: str, seed: int, *, overrides: list[str], run_dir: Path,
               samples: int, threads: int, device: str) -> list[dict]:
    """One run of ``spec`` on the opened training set ``data`` (train, or reuse a finished one) ->
    its test predictions as records."""
    import torch

    from .. import config
    from ..engine.adapt import adapted
    from ..engine.loop import RunOptions, train_run
    from ..evaluation.evaluate import run_dirs
    from ..inference.predict import predict
    from ..inference.run import load_run

    torch.set_num_threads(threads)
    # checkpoints every 25 epochs: a cv run is short to redo, and a checkpoint per epoch costs more than
    # the epoch itself on small data
    sets = ["train.checkpoint_every=25", *overrides, *method_overrides(method), f"train.seed={seed}"]
    cfg = config.resolve(spec.stage, sets)
    data = adapted(data, cfg, device)  # train.adapt = "top": this job's own top of I3D over the cache's cut
    train_run(cfg, spec, data, run_dir, device=device, options=RunOptions(progress=False))
    labels = data.labels
    pos = {s: i for i, s in enumerate(labels.ids)}
    out = []
    for rd in run_dirs(run_dir):
        run = load_run(rd)
        rows = np.asarray([pos[s] for s in run.checkpoint["split"]["test"]], int)
        if len(rows) == 0:
            continue
        src = adapted(data, cfg, device, run.source_state).source if run.source_state is not None else data.source
        p = predict(run.model, src, labels, rows, run.scaling, n_samples=samples, seed=0)
        epoch = int(run.checkpoint["best"]["epoch"]) + 1
        for k, r in enumerate(rows):
            out.append(_record(method, spec.protocol, seed, spec.fold, labels, r, p["final"][k], p["finals"][k],
                               float(p["u"][k]), epoch))
    return out


def _record(method: str, protocol: str, seed: int, fold: int, labels: Any, r: int, pred: float,
            finals: np.ndarray | None, u: float, epoch: int | None) -> dict:
    sd = float("nan") if finals is None else float(np.std(finals))
    finals = np.asarray([pred] if finals is None else finals, float)
    return {"method": method, "protocol": protocol, "seed": seed, "fold": fold, "group": labels.group[r],
            "id": labels.ids[r], "true_final": float(labels.final[r]), "pred_final": float(pred),
            "pred_sd": sd, "uncertainty": u, "selected_epoch": epoch,
            "pred_finals": finals.tolist()}


def _ridge_records(labels: Any, features: np.ndarray, folds: list[int], split: str, protocols: Iterable[str]
                   ) -> list[dict]:
    from ..data.trainset import split_folds

    out = []
    for fold in folds:
        train_rows, test_rows = split_folds(labels, fold, None, 0, split)
        for g in sorted({labels.group[i] for i in test_rows}):
            tr = np.asarray([i for i in train_rows if labels.group[i] == g], int)
            te = np.asarray([i for i in test_rows if labels.group[i] == g], int)
            pred = ridge_predict(features, labels.final, tr, te)
            for protocol in protocols:  # no epoch to choose: the same numbers under both protocols
                # no sampler, no uncertainty, no epoch: NaN (null in JSON), never a made-up 0
                out += [_record("ridge", protocol, 0, fold, labels, r, p, None, float("nan"), None)
                        for r, p in zip(te, pred)]
    return out


# --------------------------------------------------------------------------- statistics


def mean_sd(values: list[float]) -> dict:
    """Mean and sample sd (ddof 1; 0 for one value) of per-seed values, NaNs left out ->
    {"mean", "sd", "per_seed"}."""
    v = np.asarray(values, float)
    return {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else float("nan"),
            "sd": float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else 0.0,
            "per_seed": [float(x) for x in v]}


def seed_statistics(rows: list[dict], group_range: float) -> dict:
    """The statistics of one seed's test predictions of one group (see the module doc)."""
    from ..metrics import fisher_z_mean, spearman

    folds = sorted({r["fold"] for r in rows})
    rho, rl2 = {}, []
    for f in folds:
        y = np.asarray([r["true_final"] for r in rows if r["fold"] == f])
        p = np.asarray([r["pred_final"] for r in rows if r["fold"] == f])
        rho[f] = spearman(y, p)
        rl2.append(100.0 * float(np.mean(((y - p) / group_range) ** 2)))
    y = np.asarray([r["true_final"] for r in rows])
    p = np.asarray([r["pred_final"] for r in rows])
    vals = [v for v in rho.values() if not math.isnan(v)]
    cov = float("nan")
    if rows and all(len(r.get("pred_finals") or []) >= INTERVAL_MIN_SAMPLES for r in rows):
        from ..metrics import interval_coverage

        finals = np.stack([np.asarray(r["pred_finals"], float) for r in rows])
        cov = float(interval_coverage(finals, y, levels=(0.8,))[0])
    return {"fold_spearman": rho, "mean_fold_spearman": float(np.mean(vals)) if vals else float("nan"),
            "fisher_z_spearman": fisher_z_mean(list(rho.values())), "pooled_spearman": spearman(y, p),
            "rl2x100": float(np.mean(rl2)), "coverage80": cov,
            "undefined_folds": [f for f, v in rho.items() if math.isnan(v)]}


def summarize(records: list[dict], ranges: dict[str, float]) -> dict:
    """Aggregate prediction records into the ``results`` (and ``overall``) of :func:`cross_validate`;
    ``ranges`` maps group -> max - min of its true final scores (R-l2)."""
    from ..metrics import fisher_z_mean

    results, overall = [], []
    keys = sorted({(r["method"], r["protocol"]) for r in records}, key=lambda k: (METHODS.index(k[0])
                                                                                   if k[0] in METHODS else 99, k[1]))
    for method, protocol in keys:
        mine = [r for r in records if r["method"] == method and r["protocol"] == protocol]
        per_group_seed: dict[str, dict[int, float]] = {}
        for g in sorted({r["group"] for r in mine}):
            rows_g = [r for r in mine if r["group"] == g]
            seeds = sorted({r["seed"] for r in rows_g})
            per_seed = [seed_statistics([r for r in rows_g if r["seed"] == s], ranges[g]) for s in seeds]
            per_group_seed[g] = {s: st["mean_fold_spearman"] for s, st in zip(seeds, per_seed)}
            folds = sorted({r["fold"] for r in rows_g})
            ens = _ensemble(rows_g)
            res = {"method": method, "protocol": protocol, "group": g, "seeds": seeds,
                   **{k: mean_sd([st[k] for st in per_seed]) for k in STATS},
                   "folds": {str(f): {**mean_sd([st["fold_spearman"][f] for st in per_seed]),
                                      "n": sum(1 for r in rows_g if r["fold"] == f and r["seed"] == seeds[0])}
                             for f in folds},
                   "undefined_folds": sorted({f for st in per_seed for f in st["undefined_folds"]}),
                   "ensemble": {k: v for k, v in seed_statistics(ens, ranges[g]).items()
                                if k in STATS} if len(seeds) > 1 else None,
                   "selected_epochs": mean_sd([r["selected_epoch"] for r in rows_g])}
            res["selected_epochs"].pop("per_seed")
            results.append(res)
        if len(per_group_seed) > 1:
            seeds = sorted(set.intersection(*(set(v) for v in per_group_seed.values())))
            overall.append({"method": method, "protocol": protocol, "groups": sorted(per_group_seed),
                            "fisher_z_over_groups": mean_sd([fisher_z_mean([v[s] for v in per_group_seed.values()])
                                                              for s in seeds])})
    return {"results": results, "overall": overall}


def _ensemble(rows: list[dict]) -> list[dict]:
    """One row per (fold, sample) with the prediction averaged over seeds (under ``split="dev"`` a
    sample is tested in several folds)."""
    by_id: dict[tuple, list[dict]] = {}
    for r in rows:
        by_id.setdefault((r["fold"], r["id"]), []).append(r)
    return [{**rs[0], "pred_final": float(np.mean([r["pred_final"] for r in rs]))} for rs in by_id.values()]


# --------------------------------------------------------------------------- the command


def cross_validate(stage: str, *, root: str | Path | None = None, cache: str | Path | None = None,
                   cache_root: str | Path | None = None, overrides: Iterable[str] = (), seeds: int = 5,
                   protocol: str = "honest", split: str = "official", methods: Iterable[str] = METHODS,
                   jobs: int | None = None, run_dir: str | Path | None = None, samples: int = 50,
                   progress: bool = True) -> dict:
    """Cross-validate ``stage`` (see the module doc); returns the dict also written to
    ``<run_dir>/cv.json``.

    ``root``: the dataset folder for stage one (run only when the cache is missing; ``cache`` skips
    it). ``overrides``: ``section.key=value`` for both stages (``train.*`` keys go to stage two only).
    ``seeds``: seeds 0..seeds-1. ``protocol``: "honest", "paper" or "both". ``split``: "official" or
    "louo". ``jobs``: parallel runs (default: the CPU cores). ``samples``: prior draws S per test
    sample. Raises ``ArgumentError``/``ConfigError`` on bad settings, ``CacheError`` when stage one
    cannot produce a cache.
    """
    from joblib import Parallel, delayed
    from tqdm import tqdm

    from .. import resolve
    from .. import config
    from ..cache.extract import extract_features
    from ..data.trainset import SPLITS

    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ArgumentError(f"unknown methods {bad}; choose from {', '.join(METHODS)}")
    if protocol not in PROTOCOL_CHOICES:
        raise ArgumentError(f"protocol must be one of {', '.join(PROTOCOL_CHOICES)}, not {protocol!r}")
    if split not in SPLITS:
        raise ArgumentError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    if seeds < 1:
        raise ArgumentError(f"seeds must be at least 1, got {seeds}")
    t0 = time.perf_counter()
    overrides = list(overrides)
    if cache is None:
        stage_one = [o for o in overrides if not o.strip().startswith("train.")]
        cache = extract_features(stage, config.resolve(stage, stage_one), root, cache_root=cache_root,
                                 device=resolve.device(), progress=progress)
    cache = str(resolve.cache_dir(stage, cache=cache, cache_root=cache_root))
    data = resolve.training_set(stage, cache=cache)  # opened once, handed to every job
    device = resolve.device()
    name = stage_name(stage)
    labels = data.labels
    folds = fold_ids(labels, split)
    protocols = PROTOCOL_CHOICES[protocol]
    out = Path(run_dir) if run_dir is not None else resolve.run_dir(stage, "cv", split=split)
    out.mkdir(parents=True, exist_ok=True)

    records: list[dict] = []
    if "ridge" in methods:
        records += _ridge_records(labels, data.source.features[:, 0], folds, split, protocols)
    tasks = [(m, p, s, f) for m in methods if m != "ridge" for p in protocols for s in range(seeds) for f in folds]
    cores = os.cpu_count() or 1
    n_jobs = max(1, min(jobs or cores, len(tasks) or 1))
    threads = max(1, cores // n_jobs)
    work = (delayed(_train_job)(data, RunSpec(name, fold=f, split=split, protocol=p), m, s, overrides=overrides,
                                run_dir=out / "runs" / m.replace("+", "_") / p / f"seed{s}" / f"fold{f}",
                                samples=samples, threads=threads, device=device) for m, p, s, f in tasks)
    bar = tqdm(total=len(tasks), desc=f"cv {stage} ({split})", unit="run", disable=not progress)
    for recs in Parallel(n_jobs=n_jobs, backend="loky" if n_jobs > 1 else "sequential",
                         return_as="generator_unordered")(work):
        records += recs
        bar.update(1)
    bar.close()

    ranges = {}
    for g in sorted(set(labels.group)):
        vals = labels.final[[i for i, x in enumerate(labels.group) if x == g and labels.ok[i]]]
        ranges[g] = float(vals.max() - vals.min()) or 1.0
    res = {"stage": stage, "split": split, "cache": cache, "seeds": list(range(seeds)), "folds": folds,
           "protocols": list(protocols), "methods": methods, "samples": samples,
           **summarize(records, ranges), "seconds": round(time.perf_counter() - t0, 1),
           "predictions": str(out / "predictions.parquet")}
    _write(out, res, records)
    return res


def _write(out: Path, res: dict, records: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = sorted(records, key=lambda r: (r["method"], r["protocol"], r["seed"], r["fold"], r["id"]))
    pq.write_table(pa.Table.from_pylist(records), out / "predictions.parquet")
    (out / "cv.json").write_text(strict_json(res) + "\n")


def mean_sd_text(d: dict, digits: int = 3) -> str:
    """One statistic of :func:`cross_validate` as "mean +- sd"; "-" when undefined (null, as read
    back from ``cv.json``)."""
    if d.get("mean") is None:
        return "-"
    return f"{d['mean']:.{digits}f} +- {d['sd']:.{digits}f}"


def format_table(res: dict) -> str:
    """The human-readable table of :func:`cross_validate`'s dict: one row per method x protocol x
    group, every statistic as mean +- sd over seeds, per-fold rho below."""
    n = len(res["seeds"])
    lines = [f"cross-validation of {res['stage']}: split {res['split']}, folds {res['folds']}, {n} seed(s) "
             f"(mean +- sd over seeds; ridge is deterministic)",
             f"{'method':<10s}{'protocol':<9s}{'group':<16s}{'mean-fold rho':>16s}{'Fisher-z rho':>16s}"
             f"{'pooled rho':>16s}{'R-l2 x100':>16s}{'80% cover':>16s}{'ens. rho':>10s}"]

    for r in res["results"]:
        ens = r["ensemble"]["mean_fold_spearman"] if r.get("ensemble") else float("nan")
        lines.append(f"{r['method']:<10s}{r['protocol']:<9s}{r['group'][:15]:<16s}{mean_sd_text(r['mean_fold_spearman']):>16s}"
                     f"{mean_sd_text(r['fisher_z_spearman']):>16s}{mean_sd_text(r['pooled_spearman']):>16s}{mean_sd_text(r['rl2x100'], 2):>16s}"
                     f"{mean_sd_text(r['coverage80'], 2):>16s}{ens:>10.3f}")
        folds = "  ".join(f"{k}: {v['mean']:.3f}+-{v['sd']:.3f} (n={v['n']})" for k, v in r["folds"].items())
        lines.append(f"{'':<19s}per fold {folds}")
        if r["undefined_folds"]:
            lines.append(f"{'':<19s}Spearman undefined (constant prediction or label) in folds {r['undefined_folds']}")
    for o in res.get("overall", []):
        lines.append(f"{o['method']:<10s}{o['protocol']:<9s}{'all groups':<16s}Fisher-z over groups "
                     f"{mean_sd_text(o['fisher_z_over_groups'])}")
    lines.append(f"predictions: {res['predictions']}   ({res['seconds']:.0f} s)")
    return "\n".join(lines)
