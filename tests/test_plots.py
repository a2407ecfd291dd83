"""Plot smoke tests: the PNG exists, has the documented size, and the curves are drawn."""

import numpy as np
import pytest
from PIL import Image

from udaqa_pipeline.evaluation.plots import reliability

C0 = np.array([31, 119, 180])  # matplotlib's first cycle colour (tab:blue)
C1 = np.array([255, 127, 14])  # second (tab:orange)


def _pixels_near(img: np.ndarray, colour: np.ndarray) -> int:
    return int((np.abs(img[..., :3].astype(int) - colour).sum(axis=-1) < 30).sum())


def test_reliability_png_size_and_curves(tmp_path):
    levels = np.arange(1, 10) / 10
    out = reliability(tmp_path / "reliability.png",
                      {"judges (T7)": (levels, levels * 0.4), "final score": (levels, levels * 0.95)},
                      "demo/fold0 (honest protocol)")
    assert out == tmp_path / "reliability.png"
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (500, 500, 3)  # 5 x 5 in at 100 dpi
    assert _pixels_near(img, C0) > 200 and _pixels_near(img, C1) > 200
    one = np.asarray(Image.open(reliability(tmp_path / "one.png", {"judges": (levels, levels)}, "t"))
                     .convert("RGB"))
    assert _pixels_near(one, C1) == 0  # only one curve: no second colour


def test_reliability_refuses_bad_curves(tmp_path):
    with pytest.raises(ValueError, match="no curves"):
        reliability(tmp_path / "a.png", {}, "t")
    with pytest.raises(ValueError, match="3 nominal levels but 2"):
        reliability(tmp_path / "a.png", {"x": ([0.1, 0.5, 0.9], [0.1, 0.5])}, "t")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reliability(tmp_path / "a.png", {"x": ([10, 50, 90], [0.1, 0.5, 0.9])}, "t")
    assert not (tmp_path / "a.png").exists()
