"""Clip layouts and frame windows (pure arithmetic)."""

from __future__ import annotations

import numpy as np
import pytest

from udaqa_pipeline.video.clips import ShortVideoError, clip_layout, window_indices


def test_overlapping_103():
    lay = clip_layout("overlapping", 103, 10, 16)
    assert lay.starts == (0, 10, 20, 30, 40, 50, 60, 70, 80, 87)
    assert lay.indices().shape == (10, 16) and lay.indices()[-1, -1] == 102


def test_overlapping_general_and_errors():
    assert clip_layout("overlapping", 64, 4, 16).starts == (0, 16, 32, 48)
    assert clip_layout("overlapping", 100, 3, 16).starts == (0, 42, 84)
    assert clip_layout("overlapping", 16, 1, 16).starts == (0,)
    with pytest.raises(ValueError, match="repeat clips"):
        clip_layout("overlapping", 26, 10, 16)  # step 2 would clamp several clips onto start 10
    with pytest.raises(ValueError, match="cannot hold"):
        clip_layout("overlapping", 15, 10, 16)


def test_non_overlapping():
    assert clip_layout("non_overlapping", 160, 10, 16).starts == tuple(range(0, 160, 16))
    assert clip_layout("non_overlapping", 170, 10, 16).starts[-1] == 144
    with pytest.raises(ValueError, match="need 160 frames"):
        clip_layout("non_overlapping", 159, 10, 16)
    with pytest.raises(ValueError, match="unknown clip layout"):
        clip_layout("random", 160, 10, 16)


def test_windows():
    w = window_indices(200, 103, "first")
    assert not w.short and w.indices.tolist() == list(range(103))
    w = window_indices(5000, 103, "last", end=1200)
    assert w.indices.tolist() == list(range(1097, 1200))
    assert window_indices(300, 103, "last").indices[-1] == 299
    w = window_indices(1000, 160, "uniform")
    assert w.indices[0] == 0 and w.indices[-1] == 999 and len(w.indices) == 160
    assert (np.diff(w.indices) > 0).all()
    assert window_indices(160, 160, "uniform").indices.tolist() == list(range(160))
    w = window_indices(500, 10, "first", start=100, end=300)
    assert w.indices.tolist() == list(range(100, 110))


def test_short_policy():
    w = window_indices(90, 103, "first")
    assert w.short and len(w.indices) == 103
    assert w.indices[:90].tolist() == list(range(90)) and (w.indices[90:] == 89).all()
    w = window_indices(5000, 103, "last", end=50)  # dive ends before frame 103: pad after frame 49
    assert w.short and w.indices[49] == 49 and (w.indices[50:] == 49).all()
    w = window_indices(100, 160, "uniform")
    assert w.short and w.indices[-1] == 99 and w.indices[99] == 99
    with pytest.raises(ShortVideoError, match="only 90 frames"):
        window_indices(90, 103, "first", short_policy="error")
    with pytest.raises(ValueError, match="only 100 frames"):
        window_indices(100, 103, "last", end=120)
    with pytest.raises(ValueError, match="unknown short_policy"):
        window_indices(100, 10, "first", short_policy="drop")
    with pytest.raises(ValueError, match="unknown window mode"):
        window_indices(100, 10, "middle")
