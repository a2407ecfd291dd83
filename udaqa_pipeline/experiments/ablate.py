"""The paper's ablation (REFERENCE section 1) and design variants, all trained from ONE cache.

Rows (cumulative, as in the paper's table; switches are [train] keys):
  baseline I3D+MLP      mean over clips, no latent branch, plain L1, no curriculum
  +CVAE                 latent branch on the video (KL term), regressor on concat(f_v, z)
  +WA                   weight attention instead of the mean over clips
  +uncertainty          exp(-u) re-weighting + u + beta |u1 - u2|
  +curriculum           uncertainty-guided curriculum (= the full model)
  +calibrated panels    the full model with its sampler calibrated on held-out rows (not in the paper)
Every row starts from the paper's recipe (``train.PAPER_RECIPE``: the paper's switches, the paper's
sampler) on the stage's learning rate, epochs and batch size; the stage's own recipe is one more row
when it differs (stages/jigsaws.toml's small-data recipe).
Design variants of the full model:
  latent on shared feature   the latent branch reads f_v instead of the video
  two regressors             judge-mean head on f_v + latent offset head
Rows run in parallel (joblib, loky processes, threads split between jobs). Every worker counts
I3D forwards on frames with a global module forward hook (a trained top of I3D above a cached cut,
``train.adapt = "top"``, reads the cut, not frames); the table reports the total, which must be 0, and
the cache store's size and mtime before/after (unchanged = nothing was recomputed or rewritten).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import ArgumentError
from ..runs.layout import RunSpec, stage_name
from ..data.trainset import TrainingSet


#: name -> (overrides on top of the paper's recipe, paper's MTL-AQA Spearman or None)
ROWS: dict[str, tuple[list[str], float | None]] = {
    "baseline I3D+MLP": (["train.use_wa=false", "train.use_cvae=false", "train.use_uncertainty=false",
                          "train.use_curriculum=false"], 0.9364),
    "+CVAE": (["train.use_wa=false", "train.use_uncertainty=false", "train.use_curriculum=false"], 0.9465),
    "+WA": (["train.use_uncertainty=false", "train.use_curriculum=false"], 0.9478),
    "+uncertainty re-weighting": (["train.use_curriculum=false"], 0.9535),
    "+curriculum (full)": ([], 0.9545),
    "+calibrated judge panels": (["train.calibrate=heldout"], None),
    "variant: latent on shared feature": (["train.latent_input=feature"], None),
    "variant: two regressors": (["train.regressors=2"], None),
}
#: The row of the stage's own recipe (stages/<stage>.toml as it is), added when it differs from every row above.
STAGE_ROW = "stage recipe"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def count_backbone_forwards():
    """Install a global forward hook counting forwards of any module defined in
    ``udaqa_pipeline.backbone`` (the I3D and its units) on RGB frames (3 input channels): the
    bottom of I3D. The blocks above a cut (``train.adapt = "top"``) read 832 or 528 channels and are
    not counted. Returns (counter dict, hook handle)."""
    import torch

    counter = {"i3d_forwards": 0}

    def hook(module, args, output):
        x = args[0] if args else None
        if (type(module).__module__.startswith("udaqa_pipeline.backbone") and isinstance(x, torch.Tensor)
                and x.dim() == 5 and x.shape[1] == 3):
            counter["i3d_forwards"] += 1

    return counter, torch.nn.modules.module.register_module_forward_hook(hook)


def _run_row(name: str, spec: RunSpec, data: TrainingSet, run_dir: Path, overrides: list[str], threads: int,
             device: str) -> dict:
    import torch

    from .. import config
    from ..engine.adapt import adapted
    from ..engine.loop import RunOptions, train_run
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import write_report

    torch.set_num_threads(threads)
    counter, handle = count_backbone_forwards()
    try:
        cfg = config.resolve(spec.stage, overrides)
        data = adapted(data, cfg, device)
        rd = train_run(cfg, spec, data, run_dir, device=device, options=RunOptions(progress=False))
        m = write_report(evaluate(rd, data=data), make_plots=False)
    finally:
        handle.remove()
    panel = next(iter(m.get("panel", {}).values()), {})
    res = {"row": name, "run": str(rd), "protocol": m["protocol"], "spearman": m["headline"]["value"],
           "rl2x100": m["overall"]["rl2x100"], "i3d_forwards": counter["i3d_forwards"],
           "coverage": panel.get("coverage"), "coverage_expected": panel.get("coverage_expected"),
           "crps": panel.get("crps"),
           "final_coverage80": (m.get("final_calibration") or {}).get("interval_coverage", {}).get("0.8")}
    return res


def _store_stamp(cache: Any) -> dict | None:
    path = getattr(cache, "path", None) if not isinstance(cache, (str, Path)) else Path(cache)
    if path is None:
        return None
    files = sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix != ".lock")
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def ablate(dataset: str, *, fold: int = 0, cache: Any = None, cache_root: Any = None,
           run_dir: str | Path | None = None, jobs: int | None = None, protocol: str = "honest",
           overrides: Iterable[str] = (), rows: list[str] | None = None,
           threads: int | None = None) -> dict:
    """Train and evaluate every ablation row; returns {"rows": [...], "i3d_forwards": 0, ...}.

    ``jobs`` rows train at once (default: one per core); each gets ``threads`` torch threads
    (default: cores // jobs)."""
    from joblib import Parallel, delayed

    from .. import config, resolve
    from ..engine.recipe import PAPER_RECIPE

    base = list(overrides)
    cfg = config.resolve(dataset, base)
    cache = resolve.cache_dir(dataset, cache=cache, cache_root=cache_root, cfg=cfg)
    table = {n: ([*PAPER_RECIPE, *ov], paper) for n, (ov, paper) in ROWS.items()}
    own = cfg.train
    if all(config.resolve(dataset, base + ov).train != own for ov, _ in table.values()):
        table[STAGE_ROW] = ([], None)
    names = list(table) if rows is None else rows
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ArgumentError(f"unknown ablation rows {unknown}; known: {list(table)}")
    parent = Path(run_dir) if run_dir is not None else resolve.run_dir(dataset, "ablate", fold=fold)
    before = _store_stamp(cache)
    data = resolve.training_set(dataset, cache=cache)  # opened once (and fails early with the cache's message)
    spec = RunSpec(stage_name(dataset), fold=fold, protocol=protocol)
    device = resolve.device()
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs or cores, len(names)))
    threads = threads or max(1, cores // jobs)
    results = Parallel(n_jobs=jobs, backend="loky" if jobs > 1 else "sequential")(
        delayed(_run_row)(n, spec, data, parent / _slug(n), base + table[n][0], threads, device) for n in names)
    for r in results:
        r["paper_spearman"] = table[r["row"]][1]
    after = _store_stamp(cache)
    total = sum(r["i3d_forwards"] for r in results)
    if total:
        raise RuntimeError(f"the ablation ran {total} I3D forwards; stage two must only read the cache")
    return {"dataset": dataset, "fold": fold, "protocol": protocol, "rows": results,
            "i3d_forwards": total, "cache_unchanged": (before == after) if before is not None else None,
            "jobs": jobs}


def format_table(res: dict) -> str:
    p = res["protocol"]
    lines = [f"ablation on {res['dataset']} fold {res['fold']} ({p} protocol; paper numbers: MTL-AQA, "
             f"paper protocol; coverage: real judges inside a sampled panel, the sampler's expected share in brackets; final 80%: "
             f"true final scores inside the 80% interval)",
             f"{'row':<36s}{'Spearman':>10s}{'R-l2x100':>10s}{'coverage':>16s}{'CRPS':>8s}{'final 80%':>10s}"
             f"{'paper':>9s}"]

    def num(x, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    for r in res["rows"]:
        paper = f"{r['paper_spearman']:.4f}" if r["paper_spearman"] is not None else "-"
        cov = "-" if r.get("coverage") is None else f"{r['coverage']:.2f} ({num(r.get('coverage_expected'), '.2f')})"
        lines.append(f"{r['row']:<36s}{r['spearman']:>10.4f}{r['rl2x100']:>10.4f}{cov:>16s}"
                     f"{num(r.get('crps'), '.3f'):>8s}{num(r.get('final_coverage80'), '.2f'):>10s}{paper:>9s}")
    lines.append(f"I3D forwards during the ablation: {res['i3d_forwards']}; cache files unchanged: "
                 f"{res['cache_unchanged']}; parallel jobs: {res['jobs']}")
    return "\n".join(lines)
