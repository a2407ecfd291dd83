"""``make bench-real``: the paper's JIGSAWS table (Table III) on real video, cross-validated.

Runs :func:`udaqa_pipeline.experiments.cv.cross_validate` on the right-camera trials of the three
JIGSAWS tasks in ``../shared/data/jigsaws-capture2`` (or ``$UDAQA_REAL_DATA``): Suturing (S),
Needle Passing (NP) and Knot Tying (KT), one model per task (the stage's ``train.per_group``).
Stage one runs once, with the ``Mixed_5b`` cut beside the features (reused when its cache exists);
then, on the same cache and folds, each recipe of :data:`TABLE_RECIPES` on the official MUSDL
4-fold split under both protocols and on leave-one-surgeon-out under the honest one, UD-AQA beside
the I3D+MLP and ridge baselines (frozen recipe only: they read frozen features), ``--seeds`` seeds
each. Writes ``bench/real.json`` (one cv dict per recipe and split, the commands that reproduce
them, the wall time); ``--markdown`` prints the README table from it: per task mean-fold
Spearman's rho and its Fisher-z average over the tasks (the paper's "Avg. Corr."), with pooled rho,
R-l2 x100 and 80% interval coverage averaged over the tasks. The data is research-use: it is read
where it lies, never copied.

``--recipes``, ``--splits`` and ``--tasks`` run part of it (a part is recorded as such);
``--dev`` instead scores :data:`RECIPES` (or the ``--recipes`` named) on the dev split (inner folds
of the official training sets; no test fold is read), the evidence a stage recipe is chosen on,
into ``bench/real_dev.json``, whose other entries a part keeps.
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
#: The shared copy holds the right camera only (capture2); the cut is stored once for the adapted recipe.
DATA_SETTINGS = ["dataset.video={task}/video/{trial}_capture2.avi", "cache.cut=Mixed_5b"]
#: Task (the cache's group) -> the paper's column name, in the paper's column order.
TASKS = {"Suturing": "S", "Needle_Passing": "NP", "Knot_Tying": "KT"}
#: Published JIGSAWS Spearman's rho (S, NP, KT, Avg. Corr.), all on the left camera (capture1);
#: MUSDL's is a mean over its last epochs, the others best epoch on the test fold.
PUBLISHED = {"UD-AQA (paper)": ((0.87, 0.93, 0.86, 0.89), "best epoch on test"),
             "CoRe": ((0.84, 0.86, 0.86, 0.85), "best epoch on test"),
             "MUSDL": ((0.71, 0.69, 0.71, 0.70), "mean of its last epochs")}
#: The adapted recipe: the stage's, with the I3D blocks above the Mixed_5b cut trained at 0.1x the
#: heads' learning rate (finetune.lr_scale). 30 epochs (heads averaged over the last 10) and no
#: calibration fit, because one run of the stage's 120 epochs with its three inner calibration
#: fits is about two hours of CPU per fold; the sampler is then the paper's.
ADAPTED = ["train.adapt=top", "train.epochs=30", "train.average_last=10", "train.calibrate=none"]
#: Heads first: the stage's 120 epochs, the first 80 on the cached features, the top trained with
#: the heads in the last 40 (train.adapt_epochs; the cosine schedule has the rate at a quarter of
#: train.lr there, falling to 0): the heads get the frozen recipe's whole schedule, which ADAPTED's
#: 30 epochs cut short (its heads fit their own training rows at rho ~0.77 with a third of the
#: scores' spread), for 4/3 of ADAPTED's cost; no calibration fit, as ADAPTED.
HEADS_FIRST = ["train.adapt=top", "train.adapt_epochs=40", "train.calibrate=none"]
#: The recipes of the table: name -> (train overrides, methods).
TABLE_RECIPES: dict[str, tuple[list[str], list[str]]] = {
    "frozen": ([], ["udaqa", "i3d+mlp", "ridge"]),
    "adapted top (Mixed_5b)": (ADAPTED, ["udaqa"]),
}
SPLITS = {"official": "both", "louo": "honest"}

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
    "adapted top (Mixed_5b)": ADAPTED,
    "heads then top (Mixed_5b)": HEADS_FIRST,
}


def _cmd(split: str, protocol: str, seeds: int, methods: list[str], settings: list[str] = DATA_SETTINGS) -> str:
    sets = " ".join(f"--set '{o}'" for o in settings)
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


def _task_table(entries: dict) -> list[str]:
    """The Table III rows of ``real.json``'s entries: per recipe x split x method x protocol."""
    from udaqa_pipeline.experiments.cv import mean_sd_text as ms

    cols = ["recipe", "method", "split", "protocol", *TASKS.values(), "Avg. Corr. (Fisher z)", "pooled rho",
            "R-l2 x100", "80% coverage"]
    out = _header(cols)
    for name, v in entries.items():
        cv = v["cv"]
        overall = {(o["method"], o["protocol"]): o for o in cv.get("overall", [])}
        keys = sorted({(r["method"], r["protocol"]) for r in cv["results"]}, key=lambda k: (k[0] != "udaqa", k))
        for method, protocol in keys:
            by_task = {r["group"]: r for r in cv["results"] if (r["method"], r["protocol"]) == (method, protocol)}
            tasks = [ms(by_task[t]["mean_fold_spearman"]) if t in by_task else "-" for t in TASKS]
            # the average over the three tasks only: a part over fewer tasks has none
            avg = overall.get((method, protocol), {}).get("fisher_z_over_groups") if len(by_task) == len(TASKS) else {}

            def mean_of(key: str, digits: int) -> str:
                vals = [r[key]["mean"] for r in by_task.values() if r[key].get("mean") is not None]
                return f"{sum(vals) / len(vals):.{digits}f}" if vals and len(vals) == len(by_task) else "-"
            point = method in ("i3d+mlp", "ridge")
            out.append("| " + " | ".join([v.get("recipe", name) + f" ({len(cv['seeds'])} seed(s))", method, cv["split"],
                                          protocol, *tasks, ms(avg),
                                          mean_of("pooled_spearman", 3), mean_of("rl2x100", 2),
                                          "-" if point else mean_of("coverage80", 2)]) + " |")
    for name, (nums, protocol) in PUBLISHED.items():
        out.append("| " + " | ".join([name, "published, left camera", "official", protocol, *(f"{x:.2f}" for x in nums),
                                      "-", "-", "-"]) + " |")
    return out


def markdown() -> str:
    """The README's "Real data" tables, generated from the JSON files (never typed by hand)."""
    lines = []
    path = HERE / "real.json"
    if path.is_file():
        res = json.loads(path.read_text())
        part = "" if res.get("complete") else ", a part of the table: " + res.get("part", "")
        lines += [f"`make bench-real` ({part.lstrip(', ') or 'the whole table'}):", "",
                  *_task_table(res["runs"]), ""]
    path = HERE / "real_suturing.json"
    if path.is_file():  # the previous release's Suturing-only table (its own cache of the 38 trials)
        res = json.loads(path.read_text())
        lines += [f"The previous release's `make bench-real`, Suturing alone ({res['seeds']} seeds, "
                  f"{res['wall_s'] / 60:.0f} min):", "", *_header(COLUMNS + ["rho per fold (mean over seeds)"])]
        for split in ("official", "louo"):
            if split in res:
                lines += _rows(res[split]["cv"])
        lines += [""]
    path = HERE / "real_dev.json"
    if path.is_file():
        res = json.loads(path.read_text())
        lines += ["`make bench-real ARGS=\"--dev\"` (dev split: inner folds of the official training sets, honest; "
                  "each row names its seeds and tasks, rows without tasks are the previous release's, Suturing alone, "
                  f"{res['seeds']} seeds):", "", *_header(COLUMNS)]
        for name, v in res.items():
            if isinstance(v, dict) and "cv" in v:
                tag = f" ({len(v['cv']['seeds'])} seed(s), {', '.join(TASKS[t] for t in v['tasks'])})" if "tasks" in v else ""
                lines += _rows(v["cv"], recipe=name + tag, per_fold=False)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from udaqa_pipeline.experiments.cv import cross_validate, format_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--dev", action="store_true", help="compare RECIPES on the dev split instead")
    ap.add_argument("--recipes", default=None,
                    help="comma-separated subset of the table's recipes (TABLE_RECIPES), or with --dev of RECIPES")
    ap.add_argument("--splits", default=",".join(SPLITS), help="comma-separated subset of official,louo")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of the tasks")
    ap.add_argument("--protocol", choices=("honest", "paper", "both"), default=None,
                    help="every split under this protocol (default: each split's, SPLITS)")
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
    tasks = [t for t in a.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        print(f"bench-real: unknown tasks {unknown}; choose from {', '.join(TASKS)}")
        return 2
    data = DATA_SETTINGS + ([f"dataset.tasks={json.dumps(tasks)}"] if tasks != list(TASKS) else [])
    out = Path(a.out) if a.out else REPO / "runs" / "bench-real"
    t0 = time.perf_counter()
    res: dict = {"data": str(DATA), "seeds": a.seeds, "tasks": tasks}
    if a.dev:
        from udaqa_pipeline.engine.recipe import PAPER_RECIPE

        names = [r for r in a.recipes.split(",") if r] if a.recipes else list(RECIPES)
        unknown = sorted(set(names) - set(RECIPES))
        if unknown:
            print(f"bench-real: unknown dev recipes {unknown}; choose from {', '.join(RECIPES)}")
            return 2
        # a part replaces its recipes' entries and keeps the others (each entry names its seeds and tasks)
        dest = HERE / "real_dev.json"
        old = json.loads(dest.read_text()) if dest.is_file() and names != list(RECIPES) else {}
        res = {**old, **{k: v for k, v in res.items() if k not in ("seeds",)}, "seeds": old.get("seeds", a.seeds)}
        for name in names:
            extra = list(PAPER_RECIPE) if RECIPES[name] == ["PAPER"] else RECIPES[name]
            slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
            methods = ["udaqa", "i3d+mlp", "ridge"] if name == "stage recipe" else ["udaqa"]
            r = cross_validate(STAGE, root=DATA, overrides=data + extra, seeds=a.seeds, split="dev",
                               methods=methods, protocol="honest", jobs=a.jobs, run_dir=out / "dev" / slug,
                               cache_root=a.cache_root, progress=False)
            print(f"== {name}\n{format_table(r)}", flush=True)
            res[name] = {"overrides": extra, "cv": r, "tasks": tasks,
                         "command": _cmd("dev", "honest", a.seeds, methods, data + extra)}
            _write(dest, res, t0)
    else:
        recipes = [r for r in a.recipes.split(",") if r] if a.recipes else list(TABLE_RECIPES)
        splits = [s for s in a.splits.split(",") if s]
        full = recipes == list(TABLE_RECIPES) and splits == list(SPLITS) and tasks == list(TASKS) and a.protocol is None
        # a part adds its entries to the table already there (each entry names its seeds and tasks)
        old = json.loads((HERE / "real.json").read_text()) if (HERE / "real.json").is_file() and not full else {}
        old = old if "runs" in old else {}
        part = (f"{', '.join(recipes)} on {', '.join(splits)} ({', '.join(tasks)}"
                f"{f', {a.protocol} protocol' if a.protocol else ''}, {a.seeds} seed(s))")
        parts = [p for p in old.get("part", "").split("; ") if p]
        res.update(runs=dict(old.get("runs") or {}), complete=full,
                   part="; ".join(parts + ([part] if part not in parts else [])))  # a rerun part is named once
        for recipe in recipes:
            extra, methods = TABLE_RECIPES[recipe]
            for split in splits:
                protocol = a.protocol or SPLITS[split]
                slug = "".join(c if c.isalnum() else "_" for c in recipe)[:30]
                r = cross_validate(STAGE, root=DATA, overrides=data + extra, seeds=a.seeds, split=split,
                                   protocol=protocol, methods=methods, jobs=a.jobs, run_dir=out / slug / split,
                                   cache_root=a.cache_root, progress=False)
                print(f"== {recipe}\n{format_table(r)}", flush=True)
                key = f"{recipe} / {split} / {protocol}" + ("" if tasks == list(TASKS) else f" / {','.join(tasks)}")
                res["runs"][key] = {"recipe": recipe, "overrides": extra, "seeds": a.seeds, "tasks": tasks,
                                                      "command": _cmd(split, protocol, a.seeds, methods, data + extra),
                                                      "cv": r}
                _write(HERE / "real.json", res, t0)  # each part as it finishes
        dest = HERE / "real.json"
    _write(dest, res, t0)
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
