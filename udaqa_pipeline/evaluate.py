"""Score a trained run on its test fold: metrics JSON, predictions Parquet, PNG plots.

- Predicted final score = mean over S prior draws of the scoring rule applied to T sampled judges
  (T = the rule's panel size, or ``judges``). The Parquet keeps the T judges of the first draw.
- Spearman and R-l2 x100 overall and per group (JIGSAWS task / AQA-7 action; R-l2 with that group's
  true min/max), Fisher-z average of the per-group rho when there are several groups.
- Panel measures (CRPS, coverage, uncertainty vs real spread) on samples whose real panel has more
  than one judge and as many judges as were sampled.
- Every number is tagged with the run's protocol ("honest": epoch chosen on validation, test scored
  here once; "paper": epoch chosen on test).
Outputs go to ``<run>/eval/`` (``metrics.json``, ``predictions.parquet``, ``*.png``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import plots
from .config import cache_root as _cache_root
from .metrics import fisher_z_mean, panel_metrics, score_metrics
from .train import (LOG, CacheSource, CheckpointError, Labels, default_run_dir, load_run, predict)


def _open_cache_for(run, cache: Any, cache_root: Any):
    from .cache import find_cache, open_cache

    want = run.cache_hash
    name = run.config.get("dataset", {}).get("name", "")
    if cache is not None and not isinstance(cache, (str, Path)):
        obj = cache
    elif cache is not None:
        obj = open_cache(cache)
    else:
        # Caches are named <stage>-<hash> and the stage name need not be the adapter's
        # dataset.name (stages/demo.toml reads the mtl adapter): find the run's cache by its hash.
        direct = sorted(_cache_root(cache_root).glob(f"*-{want}"))
        obj = open_cache(direct[0] if direct else find_cache(name, cache_root))
    if str(obj.manifest["config_hash"]) != want:
        raise CheckpointError(f"the run was trained on cache {name}-{want}, but the cache found is "
                              f"{obj.manifest['config_hash']}; pass --cache with the training cache or retrain")
    return obj


def _run_dirs(run_dir: Path) -> list[Path]:
    gj = run_dir / "groups.json"
    if gj.exists():
        groups = json.loads(gj.read_text())["groups"]
        from .train import _safe

        return [run_dir / _safe(g) for g in groups]
    return [run_dir]


def evaluate(run_dir: str | Path | None = None, *, dataset: str | None = None, fold: int | None = None,
             cv: int | None = None, cache: Any = None, cache_root: Any = None, judges: int | None = None,
             samples: int = 10, seed: int = 0, make_plots: bool = True, source: Any = None) -> dict:
    """Evaluate the run in ``run_dir`` (default ``<runs>/<dataset>/fold<fold>``) on its test fold.

    ``judges``: number of sampled judges T per panel (default: the rule's); ``samples``: draws S.
    ``source``: a feature source other than the cache (e.g. a fine-tuned backbone over frames; the
    caller loads its weights from ``load_run(run).source_state``).
    Returns the metrics dict that is also written to ``<run>/eval/metrics.json``.
    """
    if run_dir is None:
        if dataset is None:
            raise ValueError("pass run_dir or dataset")
        run_dir = default_run_dir(dataset, fold or 0, cv)
    run_dir = Path(run_dir)
    ids, group, y, pred, pred_std, u, panel1, real, rows_meta = [], [], [], [], [], [], [], [], []
    meta: dict[str, Any] = {}
    cache_obj = None
    for rd in _run_dirs(run_dir):
        run = load_run(rd)
        ck = run.checkpoint
        if fold is not None and ck["fold"] != fold:
            raise CheckpointError(f"{rd} was trained for test fold {ck['fold']}, not {fold}; "
                                  f"train with --fold {fold} or pass the matching --run")
        if cache_obj is None:
            cache_obj = _open_cache_for(run, cache, cache_root)
        labels = Labels.from_table(cache_obj.samples)
        pos = {s: i for i, s in enumerate(labels.ids)}
        test_ids = ck["split"]["test"]
        missing = [s for s in test_ids if s not in pos]
        if missing:
            raise CheckpointError(f"{rd}: {len(missing)} test samples (e.g. {missing[0]}) are not in the cache")
        rows = np.asarray([pos[s] for s in test_ids], int)
        if len(rows) == 0:
            continue
        p = predict(run.model, source or CacheSource(cache_obj), labels, rows, run.scaling, n_samples=samples,
                    n_judges=judges, seed=seed)
        for k, r in enumerate(rows):
            pan = p["panels"][k]
            finals = np.asarray([_rule(labels, r, pan[s]) for s in range(pan.shape[0])])
            ids.append(labels.ids[r])
            group.append(labels.group[r])
            y.append(labels.final[r])
            pred.append(p["final"][k])
            pred_std.append(float(finals.std()))
            u.append(p["u"][k])
            panel1.append(pan[0].tolist())
            real.append(labels.judges[r])
            rows_meta.append(pan)
        meta[rd.name] = {"protocol": ck["protocol"], "selected_epoch": ck["best"]["epoch"] + 1,
                         "selected_on": "val" if ck["protocol"] == "honest" else "test",
                         "selection_spearman": ck["best"]["score"], "epochs_trained": ck["epoch"] + 1}
    if not ids:
        raise CheckpointError(f"{run_dir}: the test fold is empty")
    y_a, p_a, s_a, u_a = map(np.asarray, (y, pred, pred_std, u))
    protocols = sorted({m["protocol"] for m in meta.values()})
    protocol = protocols[0] if len(protocols) == 1 else "mixed"
    out: dict[str, Any] = {"protocol": protocol, "run": str(run_dir), "samples": samples,
                           "judges": judges, "runs": meta,
                           "overall": {**score_metrics(y_a, p_a), "protocol": protocol}}
    names = sorted(set(group))
    if len(names) > 1:
        per = {}
        for g in names:
            m = np.asarray([x == g for x in group])
            per[g] = {**score_metrics(y_a[m], p_a[m]), "protocol": protocol}
        out["groups"] = per
        out["fisher_z_spearman"] = {"value": fisher_z_mean([v["spearman"] for v in per.values()]),
                                    "protocol": protocol}
        out["mean_rl2x100"] = {"value": float(np.nanmean([v["rl2x100"] for v in per.values()])),
                               "protocol": protocol}
    # panel measures where real panels exist and match the sampled panel size
    sel = [k for k in range(len(ids)) if len(real[k]) > 1 and len(real[k]) == rows_meta[k].shape[1]]
    if sel:
        by_t: dict[int, list[int]] = {}
        for k in sel:
            by_t.setdefault(len(real[k]), []).append(k)
        out["panel"] = {f"T{t}": {**panel_metrics(np.stack([rows_meta[k] for k in ks]),
                                                  np.stack([real[k] for k in ks]), u_a[ks]),
                                  "protocol": protocol} for t, ks in by_t.items()}
    ev = run_dir / "eval"
    ev.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": ids, "group": group, "true_final": y_a, "pred_final": p_a,
                             "pred_final_std": s_a, "pred_judges": panel1,
                             "real_judges": [r.tolist() for r in real], "uncertainty": u_a}),
                   ev / "predictions.parquet")
    if make_plots:
        tag = f"{run_dir.parent.name}/{run_dir.name} ({protocol} protocol)"
        out["plots"] = [str(plots.pred_vs_true(ev / "pred_vs_true.png", y_a, p_a, s_a, tag)),
                        str(plots.error_vs_uncertainty(ev / "error_vs_uncertainty.png",
                                                       np.abs(p_a - y_a), u_a, tag)),
                        str(plots.curriculum_share(ev / "curriculum_share.png",
                                                   [d / LOG for d in _run_dirs(run_dir)], tag))]
    (ev / "metrics.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    return out


def _rule(labels: Labels, r: int, panel: np.ndarray) -> float:
    from .datasets.rules import apply_rule

    return float(apply_rule(labels.rule[r], panel, labels.difficulty_of(r)))


def format_metrics(m: dict) -> str:
    """Human-readable summary of :func:`evaluate`'s dict (every line names the protocol)."""
    p = m["protocol"]
    lines = [f"[{p} protocol] overall: Spearman {m['overall']['spearman']:.4f}  "
             f"R-l2x100 {m['overall']['rl2x100']:.4f}  (n={m['overall']['n']})"]
    for g, v in m.get("groups", {}).items():
        lines.append(f"[{p}] {g:<20s} Spearman {v['spearman']:.4f}  R-l2x100 {v['rl2x100']:.4f}  (n={v['n']})")
    if "fisher_z_spearman" in m:
        lines.append(f"[{p}] Fisher-z average Spearman {m['fisher_z_spearman']['value']:.4f}")
    for t, v in m.get("panel", {}).items():
        lines.append(f"[{p}] panel {t}: CRPS {v['crps']:.4f}  coverage {v['coverage']:.3f}  "
                     f"rho(u, real spread) {v['uncertainty_vs_spread_rho']:.3f}  (n={v['n']})")
    for name, r in m["runs"].items():
        lines.append(f"[{p}] {name}: epoch {r['selected_epoch']}/{r['epochs_trained']} selected on "
                     f"{r['selected_on']} (Spearman {r['selection_spearman']:.4f})")
    return "\n".join(lines)
