"""sample_frames: the configured window of a sample, decoded from a frame folder or a video file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures.videos import encode_video
from udaqa_pipeline.datasets.base import Sample
from udaqa_pipeline.datasets.frames import sample_frames
from udaqa_pipeline.video.decode import VideoError


def _folder(path: Path, n: int, pattern: str = "{:05d}.png") -> np.ndarray:
    frames = np.random.default_rng(n).integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    path.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / pattern.format(i))
    return frames


def _cfg(n_frames: int, mode: str, policy: str = "pad_last") -> dict:
    return {"frames": {"n_frames": n_frames, "mode": mode, "short_policy": policy}}


def _sample(source: Path, **kw) -> Sample:
    return Sample(id="x", dataset="t", source=source, final_score=1.0, **kw)


def test_trimmed_folder_first(tmp_path):
    frames = _folder(tmp_path / "f", 30, "img_{}.png")  # unpadded names, natural order
    out = sample_frames(_sample(tmp_path / "f"), _cfg(20, "auto"))
    assert out.indices.tolist() == list(range(20)) and out.n_source_frames == 30 and not out.short
    np.testing.assert_array_equal(out.frames, frames[:20])


def test_untrimmed_folder_ends_at_frame_end(tmp_path):
    frames = _folder(tmp_path / "u", 140)
    out = sample_frames(_sample(tmp_path / "u", frame_end=120), _cfg(103, "auto"))  # CoRe MTL layout
    assert out.indices.tolist() == list(range(17, 120))
    np.testing.assert_array_equal(out.frames, frames[17:120])
    with pytest.raises(VideoError, match="only 140 frames"):
        sample_frames(_sample(tmp_path / "u", frame_end=141), _cfg(103, "auto"))


def test_short_folder_padded_and_flagged(tmp_path):
    frames = _folder(tmp_path / "s", 5)
    out = sample_frames(_sample(tmp_path / "s"), _cfg(8, "first"))
    assert out.short and out.frames.shape == (8, 6, 8, 3) and out.n_source_frames == 5
    np.testing.assert_array_equal(out.frames, frames[[0, 1, 2, 3, 4, 4, 4, 4]])
    with pytest.raises(VideoError, match="too short"):
        sample_frames(_sample(tmp_path / "s"), _cfg(8, "first", "error"))


def test_video_file_uniform(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    path = tmp_path / "v.mkv"
    encode_video(path, frames, rate=30)
    out = sample_frames(_sample(path), _cfg(10, "uniform"))
    expect = np.floor(np.linspace(0, 39, 10)).astype(int)
    assert out.indices.tolist() == expect.tolist() and out.n_source_frames == 40 and not out.short
    np.testing.assert_array_equal(out.frames, frames[expect])
    out = sample_frames(_sample(path), _cfg(50, "uniform"))
    assert out.short and out.indices[-1] == 39 and len(out.frames) == 50


def test_missing_source(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        sample_frames(_sample(tmp_path / "gone"), _cfg(10, "first"))


def test_error_kinds(tmp_path):
    """frames.py sets VideoError.kind where it wraps ShortVideoError and window errors."""
    _folder(tmp_path / "k", 12)
    cases = [(_sample(tmp_path / "gone"), _cfg(4, "first"), "missing"),
             (_sample(tmp_path / "k"), _cfg(20, "first", "error"), "too_short"),  # wrapped ShortVideoError
             (_sample(tmp_path / "k", frame_end=13), _cfg(4, "auto"), "too_short"),  # span ends past the source
             (_sample(tmp_path / "k", frame_start=6, frame_end=6), _cfg(4, "auto"), "bad_request"),  # empty span
             (_sample(tmp_path / "k"), _cfg(4, "sideways"), "bad_request")]  # unknown window mode
    for sample, cfg, kind in cases:
        with pytest.raises(VideoError) as e:
            sample_frames(sample, cfg)
        assert e.value.kind == kind, (sample, cfg, str(e.value))
