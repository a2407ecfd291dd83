"""The ablation runs every row from one cache with zero backbone forwards."""

import pytest
import torch

from udaqa_pipeline.ablate import ROWS, ablate, count_backbone_forwards, format_table
from udaqa_pipeline.testing import write_toy_cache

SMALL = ["train.batch_size=8", "train.wa_hidden=16", "train.video_channels=[4,4,8,8]",
         "train.eval_samples=2", "train.epochs=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_backbone_forward_counter_counts():
    from udaqa_pipeline.backbone.i3d import I3D

    counter, handle = count_backbone_forwards()
    try:
        I3D().Conv3d_2b_1x1(torch.zeros(1, 64, 1, 2, 2))
    finally:
        handle.remove()
    assert counter["i3d_forwards"] >= 1


def test_ablation_rows_from_one_cache(tmp_path):
    cache = write_toy_cache(tmp_path / "c", n=40)
    rows = ["baseline I3D+MLP", "+curriculum (full)", "variant: two regressors"]
    res = ablate("mtl", cache=cache, run_dir=tmp_path / "abl", jobs=1, threads=1, overrides=SMALL,
                 rows=rows)
    assert [r["row"] for r in res["rows"]] == rows
    assert res["i3d_forwards"] == 0 and res["cache_unchanged"] is True
    assert all(r["protocol"] == "honest" for r in res["rows"])
    table = format_table(res)
    assert "0.9364" in table and "0.9545" in table and "I3D forwards during the ablation: 0" in table
    assert set(ROWS) >= set(rows)
