"""The ablation runs every row from one cache with zero backbone forwards."""

from pathlib import Path

import pytest
import torch

from udaqa_pipeline.experiments.ablate import ablate, count_backbone_forwards, format_table
from udaqa_pipeline.testing import write_toy_cache
from udaqa_pipeline.runs.checkpoint import CHECKPOINT, load_checkpoint

SMALL = ["train.batch_size=8", "train.wa_hidden=16", "train.video_channels=[4,4,8,8]",
         "train.eval_samples=2", "train.epochs=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_backbone_forward_counter_counts():
    from udaqa_pipeline.backbone.i3d import I3D, InceptionBlock

    counter, handle = count_backbone_forwards()
    try:
        I3D().Conv3d_1a_7x7(torch.zeros(1, 3, 2, 8, 8))
        assert counter["i3d_forwards"] == 1  # the Unit3D on frames; its Conv3d and BatchNorm3d are torch's own
        InceptionBlock(3, (2, 2, 2, 2, 2, 2))(torch.zeros(1, 3, 2, 2, 2))
        assert counter["i3d_forwards"] == 1 + 6  # the block, its 3 branch heads, MaxPoolSame and 1x1 after it
        InceptionBlock(4, (2, 2, 2, 2, 2, 2))(torch.zeros(1, 4, 2, 2, 2))
        assert counter["i3d_forwards"] == 7  # above a cut (not frames): a trained top is not the bottom of I3D
        torch.nn.Linear(2, 2)(torch.zeros(1, 2))  # a stage-two layer is not a backbone forward
        assert counter["i3d_forwards"] == 7
    finally:
        handle.remove()
    I3D().Conv3d_1a_7x7(torch.zeros(1, 3, 2, 8, 8))
    assert counter["i3d_forwards"] == 7  # removed hook: nothing counted any more


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
    assert [r["paper_spearman"] for r in res["rows"]] == [0.9364, 0.9545, None]
    # every row trained the model its name says, not the same model under three names
    switches = ("use_wa", "use_cvae", "use_uncertainty", "use_curriculum", "regressors")
    expected = {"baseline I3D+MLP": (False, False, False, False, 1), "+curriculum (full)": (True, True, True, True, 1),
                "variant: two regressors": (True, True, True, True, 2)}
    size = {}
    for r in res["rows"]:
        ck = load_checkpoint(Path(r["run"]) / CHECKPOINT)
        assert tuple(ck["config"]["train"][k] for k in switches) == expected[r["row"]], r["row"]
        size[r["row"]] = sum(v.numel() for v in ck["model"].values())
    # no attention or CVAE in the baseline; a second regressor on top of the full model
    assert size["baseline I3D+MLP"] < size["+curriculum (full)"] < size["variant: two regressors"]
    with pytest.raises(ValueError, match="unknown ablation rows"):
        ablate("mtl", cache=cache, run_dir=tmp_path / "x", jobs=1, overrides=SMALL, rows=["+dropout"])
