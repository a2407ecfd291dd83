"""Smoke test on real surgical video: four JIGSAWS Suturing trials (real MPEG-4 AVI, 640x480, 1-3
minutes each) through stage one with the real I3D, stage two and evaluation.

The data is research-use and is never copied into the repository: the test reads it where it lies
(``../shared/data/jigsaws-capture2`` or ``$UDAQA_REAL_DATA``), links four videos into a
temporary root and writes that root's label and split files as the four trials' entries of the
published ones. It skips where the data or the I3D weights are absent. The full cross-validated
table is ``make bench-real``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from udaqa_pipeline.backbone.weights import weights_path
from udaqa_pipeline.safe_pickle import safe_load

DATA = Path(os.environ.get("UDAQA_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
                           / "jigsaws-capture2"))
TRIALS = ["Suturing_B001", "Suturing_C001", "Suturing_C004", "Suturing_D001"]  # official folds 0, 3, 1, 2
# One feature view: the stage's 6 augmented views would make stage one 6x slower for a smoke test.
SETTINGS = ["dataset.video={task}/video/{trial}_capture2.avi", 'dataset.tasks=["Suturing"]', "cache.views=1"]

pytestmark = [
    pytest.mark.skipif(not (DATA / "info" / "label.pkl").is_file(), reason=f"no real JIGSAWS data at {DATA}"),
    pytest.mark.skipif(not weights_path().is_file(), reason="I3D weights not fetched (`make weights`)"),
    pytest.mark.usefixtures("one_thread"),
]


def _root(r: Path, trials: list[str]) -> Path:
    """A JIGSAWS root at ``r`` holding ``trials`` (links to the shared videos) and their entries of
    the published label and split files."""
    (r / "info").mkdir(parents=True)
    (r / "Suturing" / "video").mkdir(parents=True)
    labels = safe_load(DATA / "info" / "label.pkl")
    splits = safe_load(DATA / "info" / "splits.pkl")
    folds = [[str(t) for t in np.asarray(f).reshape(-1)] for f in splits["Suturing"]]
    with (r / "info" / "label.pkl").open("wb") as f:
        pickle.dump({t: labels[t] for t in trials}, f)
    with (r / "info" / "splits.pkl").open("wb") as f:
        pickle.dump({"Suturing": [[t for t in fold if t in trials] for fold in folds]}, f)
    for t in trials:
        (r / "Suturing" / "video" / f"{t}_capture2.avi").symlink_to(DATA / "Suturing" / "video" / f"{t}_capture2.avi")
    return r


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return _root(tmp_path_factory.mktemp("jigsaws"), TRIALS)


def test_real_surgical_video_end_to_end(root, tmp_path):
    from udaqa_pipeline.cache import open_cache
    from udaqa_pipeline.cache.extract import extract_features
    from udaqa_pipeline.config import resolve
    from udaqa_pipeline.engine.run import train
    from udaqa_pipeline.evaluation.evaluate import evaluate
    from udaqa_pipeline.evaluation.report import write_report

    cache = extract_features("jigsaws", resolve("jigsaws", SETTINGS), root, cache_root=tmp_path / "cache",
                             progress=False, strict=True)
    c = open_cache(cache)
    t = c.samples.to_pydict()
    assert sorted(t["id"]) == TRIALS and set(t["status"]) == {"ok"}
    assert c.features.shape == (4, 1, 10, 1024) and np.isfinite(c.features).all()
    assert all(n > 1000 for n in t["n_source_frames"])  # 1-3 minutes at ~30 fps, counted from the container
    assert all(len(ix) == 160 and ix[-1] < n for ix, n in zip(t["frame_indices"], t["n_source_frames"]))
    # real clips differ from one another: the features are not a constant of the decoder or the model
    assert np.std(c.features[:, 0].mean(axis=1), axis=0).mean() > 1e-3
    run = train("jigsaws", cache=cache, run_dir=tmp_path / "run", progress=False,
                overrides=SETTINGS + ["train.epochs=2", "train.select=last", "train.calibrate=none"])
    m = write_report(evaluate(run, cache=cache), make_plots=False)
    assert m["overall"]["n"] == 1  # fold 0 holds B001 only
    import pyarrow.parquet as pq

    row = pq.read_table(Path(run) / "eval" / "predictions.parquet").to_pylist()[0]
    assert row["id"] == "Suturing_B001" and row["true_final"] == 13.0  # the published GRS of B001
    # six GRS items of 1..5 summed: 6..30. Two epochs on three training trials may overshoot the scale
    # (predictions are not clipped to it, README "Limits"), not explode
    assert np.isfinite(row["pred_final"]) and 0.0 < row["pred_final"] < 60.0


@pytest.mark.slow
def test_real_video_fine_tunes_end_to_end_with_the_jigsaws_recipe(tmp_path):
    """I3D unfrozen on real video with the stage's recipe (one model per task, feature
    standardisation, weight averaging), activation checkpointing at batch 2: two real training
    trials, one epoch, then the fine-tuned run evaluated on its test trial (fold 0: B001)."""
    from udaqa_pipeline.engine.finetune import finetune
    from udaqa_pipeline.evaluation.finetuned import evaluate_finetuned
    from udaqa_pipeline.runs.checkpoint import load_checkpoint

    r = _root(tmp_path / "data", TRIALS[:3])  # B001 (fold 0: test), C001 and C004 (training)
    over = SETTINGS + ["train.epochs=1", "train.batch_size=2", "train.calibrate=none", "finetune.checkpointing=on"]
    run = finetune("jigsaws", r, run_dir=tmp_path / "run", overrides=over, progress=False, force=True, device="cpu")
    ck = load_checkpoint(run / "Suturing" / "checkpoint.pt")
    cfg = ck["config"]["train"]
    assert cfg["per_group"] and cfg["feature_norm"] and cfg["select"] == "last"  # the stage's recipe
    assert ck["split"]["fit"] == ["Suturing_C001", "Suturing_C004"] and ck["split"]["test"] == ["Suturing_B001"]
    from udaqa_pipeline.backbone.weights import load_i3d

    k = "Mixed_5c.b3b.conv3d.weight"
    assert not torch.equal(ck["source"]["i3d." + k], load_i3d().state_dict()[k])  # the backbone trained
    m = evaluate_finetuned(run / "Suturing", r, samples=5, make_plots=False)
    assert m["overall"]["n"] == 1
    import pyarrow.parquet as pq

    row = pq.read_table(run / "Suturing" / "eval" / "predictions.parquet").to_pylist()[0]
    assert row["id"] == "Suturing_B001" and row["true_final"] == 13.0
    assert np.isfinite(row["pred_final"]) and 0.0 < row["pred_final"] < 60.0  # GRS is 6..30; one epoch, not clipped
