"""``make bench-real``: the cross-validated table on real JIGSAWS Suturing video.

Runs :func:`udaqa_pipeline.experiments.cv.cross_validate` on the 38 right-camera Suturing trials in
``../shared/data/jigsaws-capture2`` (or ``$UDAQA_REAL_DATA``): stage one once (reused
when its cache exists), then the official MUSDL 4-fold split under both protocols and
leave-one-surgeon-out under the honest protocol, UD-AQA with the stage's recipe beside the I3D+MLP
and ridge baselines, ``--seeds`` seeds each; writes ``bench/real.json`` (the two cv dicts, the
commands that reproduce them, and the wall time). The data is research-use: it is read where it
lies, never copied.

``--dev`` instead scores the recipes listed in :data:`RECIPES` on the dev split (inner folds of
the official training sets; no test fold is read), the evidence the stage's recipe was chosen on,
into ``bench/real_dev.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("UDAQA_REAL_DATA", REPO.parent / "shared" / "data" / "jigsaws-capture2"))
STAGE = "jigsaws"
#: The shared copy holds the right camera only (capture2); this table is the Suturing task's.
DATA_SETTINGS = ["dataset.video={task}/video/{trial}_capture2.avi", 'dataset.tasks=["Suturing"]']

#: Recipes compared on the dev split (``--dev``): name -> train overrides on top of the stage's.
#: No recipe fits a calibration here: they differ in the point prediction, which calibration does
#: not move, and skipping it saves three inner fits per run (the calibrated coverage is measured on
#: the official folds).
RECIPES: dict[str, list[str]] = {
    "stage recipe": ["train.calibrate=none"],
    "stage, select=val (epoch on 10% of training)": ["train.select=val", "train.calibrate=none"],
    "stage, select=inner_cv (epoch count by 3-fold inner CV)": ["train.select=inner_cv", "train.calibrate=none"],
    "paper's recipe (train.PAPER_RECIPE)": ["PAPER"],
    "stage, + weight attention": ["train.use_wa=true", "train.calibrate=none"],
    "stage, 80 epochs": ["train.epochs=80", "train.calibrate=none"],
}


def _cmd(split: str, protocol: str, seeds: int, methods: list[str]) -> str:
    sets = " ".join(f"--set '{o}'" for o in DATA_SETTINGS)
    return (f"udaqa-pipeline cv {STAGE} --root {DATA} {sets} --seeds {seeds} --protocol {protocol} "
            f"--split {split} --methods {','.join(methods)}")


def _write(dest: Path, res: dict, t0: float) -> None:
    from udaqa_pipeline.fileutil import strict_json

    res["wall_s"] = round(time.perf_counter() - t0, 1)
    dest.write_text(strict_json(res, indent=1) + "\n")


COLUMNS = ["method", "split", "protocol", "mean-fold rho", "Fisher-z rho", "pooled rho", "R-l2 x100",
           "80% interval coverage"]


def _header(columns: list[str]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _rows(cv: dict, recipe: str | None = None, per_fold: bool = True) -> list[str]:
    """Markdown rows of one cv dict; ``recipe`` names its UD-AQA row (the dev table), whose recipes
    are not calibrated, so it shows no coverage."""
    from udaqa_pipeline.experiments.cv import POINT_METHODS, mean_sd_text as ms

    out = []
    for r in cv["results"]:
        udaqa = r["method"] == "udaqa"
        cells = [recipe if recipe and udaqa else r["method"], cv["split"], r["protocol"],
                 ms(r["mean_fold_spearman"]), ms(r["fisher_z_spearman"]), ms(r["pooled_spearman"]),
                 ms(r["rl2x100"], 2), "-" if recipe or r["method"] in POINT_METHODS else ms(r["coverage80"], 2)]
        if per_fold:
            cells.append(" / ".join("-" if v.get("mean") is None else f"{v['mean']:.2f}" for v in r["folds"].values()))
        out.append("| " + " | ".join(cells) + " |")
    return out


def markdown() -> str:
    """The README's "Real data" tables, generated from the JSON files (never typed by hand)."""
    lines = []
    path = HERE / "real.json"
    if path.is_file():
        res = json.loads(path.read_text())
        lines += [f"`make bench-real` ({res['seeds']} seeds, {res['wall_s'] / 60:.0f} min):", "",
                  *_header(COLUMNS + ["rho per fold (mean over seeds)"])]
        for split in ("official", "louo"):
            if split in res:
                lines += _rows(res[split]["cv"])
        lines += [""]
    path = HERE / "real_dev.json"
    if path.is_file():
        res = json.loads(path.read_text())
        lines += [f"`make bench-real ARGS=\"--dev --seeds {res['seeds']}\"` (dev split: 12 inner folds of the "
                  f"official training sets, honest, {res['seeds']} seeds; {res['wall_s'] / 60:.0f} min):", "",
                  *_header(COLUMNS)]
        for name, v in res.items():
            if isinstance(v, dict) and "cv" in v:
                lines += _rows(v["cv"], recipe=name, per_fold=False)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from udaqa_pipeline.experiments.cv import cross_validate, format_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--dev", action="store_true", help="compare RECIPES on the dev split instead")
    ap.add_argument("--out", default=None, help="runs folder (default runs/bench-real)")
    ap.add_argument("--cache-root", default=None, help="where stage one's cache lives (default cache/)")
    ap.add_argument("--markdown", action="store_true",
                    help="print the README tables from bench/real.json and bench/real_dev.json; run nothing")
    a = ap.parse_args(argv)
    if a.markdown:
        print(markdown())
        return 0
    if not (DATA / "info" / "label.pkl").is_file():
        print(f"bench-real: no real data at {DATA} (set UDAQA_REAL_DATA to the jigsaws-capture2 folder)")
        return 1
    out = Path(a.out) if a.out else REPO / "runs" / "bench-real"
    t0 = time.perf_counter()
    res: dict = {"data": str(DATA), "seeds": a.seeds}
    if a.dev:
        from udaqa_pipeline.engine.recipe import PAPER_RECIPE

        for name, extra in RECIPES.items():
            extra = list(PAPER_RECIPE) if extra == ["PAPER"] else extra
            slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
            r = cross_validate(STAGE, root=DATA, overrides=DATA_SETTINGS + extra, seeds=a.seeds, split="dev",
                               methods=["udaqa", "i3d+mlp", "ridge"] if name == "stage recipe" else ["udaqa"],
                               protocol="honest", jobs=a.jobs, run_dir=out / "dev" / slug,
                               cache_root=a.cache_root, progress=False)
            print(f"== {name}\n{format_table(r)}", flush=True)
            res[name] = {"overrides": extra, "cv": r}
            _write(HERE / "real_dev.json", res, t0)
        dest = HERE / "real_dev.json"
    else:
        # The paper's recipe (`--methods paper`) is scored on the dev split (``--dev``) only: its 3-D
        # conv encoder makes it the slowest row and the dev split is where recipes are compared.
        for split, protocol, methods in (("official", "both", ["udaqa", "i3d+mlp", "ridge"]),
                                         ("louo", "honest", ["udaqa", "i3d+mlp", "ridge"])):
            r = cross_validate(STAGE, root=DATA, overrides=DATA_SETTINGS, seeds=a.seeds, split=split,
                               protocol=protocol, methods=methods, jobs=a.jobs, run_dir=out / split,
                               cache_root=a.cache_root, progress=False)
            print(format_table(r), flush=True)
            res[split] = {"command": _cmd(split, protocol, a.seeds, methods), "cv": r}
            _write(HERE / "real.json", res, t0)  # each split as it finishes
        dest = HERE / "real.json"
    _write(dest, res, t0)
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
