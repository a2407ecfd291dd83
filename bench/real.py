"""``make bench-real``: the cross-validated table on real JIGSAWS Suturing video (issue 9).

Runs :func:`udaqa_pipeline.cv.cross_validate` on the 38 right-camera Suturing trials in
``../shared/data/jigsaws-suturing-capture2`` (or ``$UDAQA_REAL_DATA``): stage one once (reused
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
DATA = Path(os.environ.get("UDAQA_REAL_DATA", REPO.parent / "shared" / "data" / "jigsaws-suturing-capture2"))
STAGE = "jigsaws"
#: The shared copy holds the right camera only (capture2), Suturing only.
DATA_SETTINGS = ["dataset.video={task}/video/{trial}_capture2.avi"]

#: Recipes compared on the dev split (``--dev``): name -> train overrides on top of the stage's.
RECIPES: dict[str, list[str]] = {
    "paper (jigsaws.toml before issue 9)": [
        "train.lr=1e-3", "train.epochs=80", "train.batch_size=4", "train.select=val", "train.latent_input=video",
        "train.use_wa=true", "train.pool_std=false", "train.clip_l2=false", "train.feature_norm=false",
        "train.wa_hidden=256", "train.regressor_hidden=[256,64]", "train.lr_schedule=constant",
        "train.average_last=0", "train.use_curriculum=true", "train.use_uncertainty=true"],
    "stage recipe": [],
}


def _cmd(split: str, protocol: str, seeds: int) -> str:
    sets = " ".join(f"--set '{o}'" for o in DATA_SETTINGS)
    return (f"udaqa-pipeline cv {STAGE} --root {DATA} {sets} --seeds {seeds} --protocol {protocol} "
            f"--split {split}")


def main(argv: list[str] | None = None) -> int:
    from udaqa_pipeline.cv import cross_validate, format_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=None)
    ap.add_argument("--dev", action="store_true", help="compare RECIPES on the dev split instead")
    ap.add_argument("--out", default=None, help="runs folder (default runs/bench-real)")
    a = ap.parse_args(argv)
    if not (DATA / "info" / "label.pkl").is_file():
        print(f"bench-real: no real data at {DATA} (set UDAQA_REAL_DATA to the jigsaws-suturing-capture2 folder)")
        return 1
    out = Path(a.out) if a.out else REPO / "runs" / "bench-real"
    t0 = time.perf_counter()
    res: dict = {"data": str(DATA), "seeds": a.seeds}
    if a.dev:
        for name, extra in RECIPES.items():
            slug = "".join(c if c.isalnum() else "_" for c in name)[:40]
            r = cross_validate(STAGE, root=DATA, overrides=DATA_SETTINGS + extra, seeds=a.seeds, split="dev",
                               methods=["udaqa", "i3d+mlp", "ridge"] if name == "stage recipe" else ["udaqa"],
                               protocol="honest", jobs=a.jobs, run_dir=out / "dev" / slug)
            print(f"== {name}\n{format_table(r)}", flush=True)
            res[name] = {"overrides": extra, "cv": r}
        dest = HERE / "real_dev.json"
    else:
        for split, protocol in (("official", "both"), ("louo", "honest")):
            r = cross_validate(STAGE, root=DATA, overrides=DATA_SETTINGS, seeds=a.seeds, split=split,
                               protocol=protocol, jobs=a.jobs, run_dir=out / split)
            print(format_table(r), flush=True)
            res[split] = {"command": _cmd(split, protocol, a.seeds), "cv": r}
        dest = HERE / "real.json"
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    dest.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
