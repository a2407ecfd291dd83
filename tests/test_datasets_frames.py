"""sample_frames: the configured window of a sample, decoded from a frame folder or a video file."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures.videos import encode_video
from udaqa_pipeline.config import Frames
from udaqa_pipeline.datasets.base import Sample
from udaqa_pipeline.datasets.frames import sample_frames
from udaqa_pipeline.video.decode import VideoError


def _folder(path: Path, n: int, pattern: str = "{:05d}.png") -> np.ndarray:
    frames = np.random.default_rng(n).integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    path.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(path / pattern.format(i))
    return frames


def _cfg(n_frames: int, mode: str, policy: str = "pad_last", **kw) -> Frames:
    return Frames(n_frames=n_frames, mode=mode, short_policy=policy, **kw)


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


# ----------------------------------------------------------------------------- frame numbers, gaps


def _numbered(path: Path, numbers, pattern: str = "{:05d}.png") -> dict[int, np.ndarray]:
    """A folder whose file ``pattern.format(k)`` holds a frame unique to number k; returns number -> frame."""
    path.mkdir(parents=True)
    out = {}
    for k in numbers:
        f = np.random.default_rng(k).integers(0, 256, (6, 8, 3), dtype=np.uint8)
        Image.fromarray(f).save(path / pattern.format(k))
        out[k] = f
    return out


def test_untrimmed_gap_inside_the_window_is_an_error_naming_the_numbers(tmp_path):
    # CoRe layout: frames 00000..00199 with 00100..00119 gone; a dive ending at frame 130
    frames = _numbered(tmp_path / "u", [k for k in range(200) if not 100 <= k < 120])
    with pytest.raises(VideoError) as e:
        sample_frames(_sample(tmp_path / "u", frame_end=130), _cfg(103, "auto"))
    assert e.value.kind == "gap"
    assert "100-119" in e.value.reason and "00099.png -> 00120.png" in e.value.reason
    assert "gap_policy" in e.value.fix and str(tmp_path / "u") in str(e.value)
    # windows on either side of the gap are taken by number, not shifted by the 20 missing files
    before = sample_frames(_sample(tmp_path / "u", frame_end=100), _cfg(90, "auto"))
    after = sample_frames(_sample(tmp_path / "u", frame_end=200), _cfg(50, "auto"))
    assert before.n_source_frames == after.n_source_frames == 200
    assert before.indices.tolist() == list(range(10, 100)) and not before.short
    np.testing.assert_array_equal(before.frames, np.stack([frames[k] for k in range(10, 100)]))
    np.testing.assert_array_equal(after.frames, np.stack([frames[k] for k in range(150, 200)]))
    assert after.indices.tolist() == list(range(150, 200))


def test_gap_policy_nearest_fills_and_flags(tmp_path):
    frames = _numbered(tmp_path / "g", [k for k in range(1, 41) if k not in (10, 11, 12, 30)], "img_{:05d}.png")
    cfg = dataclasses.replace(_cfg(40, "first"), gap_policy="nearest")
    out = sample_frames(_sample(tmp_path / "g"), cfg)  # AQA-7 style: 1-based, index 0 = frame 1
    assert out.filled == (10, 11, 12, 30) and not out.short and out.n_source_frames == 40
    used = [k for k in range(1, 41)]
    used[9], used[10], used[11], used[29] = 9, 9, 13, 29  # nearest; the earlier one on a tie
    assert (out.indices + 1).tolist() == used
    np.testing.assert_array_equal(out.frames, np.stack([frames[k] for k in used]))
    cfg = dataclasses.replace(cfg, gap_policy="skip")
    for source in (tmp_path / "g", encode_video(tmp_path / "v.mkv", frames[1][None].repeat(3, 0))):
        with pytest.raises(VideoError, match="gap_policy") as e:
            sample_frames(_sample(source), cfg)
        assert e.value.kind == "bad_request"


def test_complete_numbered_folder_reads_as_before(tmp_path):
    """1-based numbering (AQA-7 img_00001) or 0-based: index i is the i-th frame, as by name order."""
    for start, pattern in ((1, "img_{:05d}.png"), (0, "{:05d}.png")):
        d = tmp_path / f"c{start}"
        frames = _numbered(d, range(start, start + 30), pattern)
        out = sample_frames(_sample(d), _cfg(20, "first"))
        assert out.indices.tolist() == list(range(20)) and out.filled == ()
        np.testing.assert_array_equal(out.frames, np.stack([frames[start + i] for i in range(20)]))


def test_names_without_numbers_keep_name_order(tmp_path):
    from udaqa_pipeline.video.decode import FrameFolder, frame_numbers

    d = tmp_path / "n"
    d.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((4, 4, 3), ord(name), np.uint8)).save(d / f"{name}.png")
    f = FrameFolder(d)
    assert f.numbers is None and f.n_frames() == 3
    assert f.read([2, 0])[:, 0, 0, 0].tolist() == [ord("c"), ord("a")]
    assert frame_numbers(["v03_0009.jpg", "v03_0010.jpg"]) == (9, 10)


@pytest.mark.parametrize("names, says", [
    (["00001.jpg", "00002.jpg", "00001.png", "00002.png"], "mixes image types (.jpg, .png)"),  # two exports
    (["img_00001.png", "img_00002.png", "img_00001_copy.png"], "used twice"),
    (["cam1_0002.png", "cam1_0003.png", "cam2_0001.png"], "do not increase"),  # two cameras in one folder
    (["00001.png", "00002.png", "poster.png"], "without a frame number"),
])
def test_a_folder_without_one_frame_order_is_refused(tmp_path, names, says):
    d = tmp_path / "amb"
    d.mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(d / name)
    with pytest.raises(VideoError, match=re.escape(says)) as e:
        sample_frames(_sample(d), _cfg(2, "first"))
    assert e.value.kind == "ambiguous" and str(d) in str(e.value) and "move the other files out" in str(e.value)


# ----------------------------------------------------------------------------- video files: counts, one pass


def test_video_window_on_a_lying_container_count_is_laid_out_on_the_exact_count(tmp_path, monkeypatch):
    """A container whose stated count is off (trusted or not) still gives floor(linspace(0, n-1, L))
    over the frames that really decode: the read that reaches the end counts them and retries."""
    from udaqa_pipeline.video.decode import VideoFile

    frames = np.random.default_rng(2).integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    path = encode_video(tmp_path / "v.mkv", frames)
    real = VideoFile.container_count
    for wrong, trusted in ((43, True), (37, True), (37, False)):
        def lying(self, wrong=wrong, trusted=trusted):
            return real(self)._replace(frames=wrong, trusted=trusted)

        monkeypatch.setattr(VideoFile, "container_count", lying)
        out = sample_frames(_sample(path), _cfg(10, "uniform"))
        expect = np.floor(np.linspace(0, 39, 10)).astype(int)
        assert out.n_source_frames == 40 and out.indices.tolist() == expect.tolist(), (wrong, trusted)
        np.testing.assert_array_equal(out.frames, frames[expect])


def test_truncated_video_is_not_a_short_sample(tmp_path):
    from fixtures.videos import cut

    y, x = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([(x * 5 + t * 7) % 256, (y * 3 + t) % 256, (x + y) % 256], -1)
                       for t in range(120)]).astype(np.uint8)
    whole = encode_video(tmp_path / "w.mp4", frames, "libx264", "yuv420p", container_options={"movflags": "faststart"})
    part = cut(whole, 0.6, tmp_path / "part.mp4")
    for mode, n in (("first", 103), ("uniform", 103), ("uniform", 20)):
        with pytest.raises(VideoError) as e:
            sample_frames(_sample(part), _cfg(n, mode))
        assert e.value.kind == "truncated" and "120 frames" in str(e.value), (mode, n)
    ok = sample_frames(_sample(part), _cfg(10, "first"))  # a window inside what survived is fine
    assert not ok.short and ok.n_source_frames == 120
    short = encode_video(tmp_path / "s.mp4", frames[:30], "libx264", "yuv420p")  # complete, just short
    out = sample_frames(_sample(short), _cfg(103, "uniform"))
    assert out.short and out.n_source_frames == 30 and out.indices[-1] == 29


def test_rotated_phone_video_samples_upright(tmp_path):
    from fixtures.videos import stored_for_display

    shown = np.random.default_rng(4).integers(0, 256, (24, 40, 24, 3), dtype=np.uint8)
    up = encode_video(tmp_path / "up.mkv", shown)
    side = encode_video(tmp_path / "side.mkv", stored_for_display(shown, -90), rotation=-90)
    a, b = (sample_frames(_sample(p), _cfg(10, "uniform")) for p in (up, side))
    assert b.frames.shape == (10, 40, 24, 3)
    np.testing.assert_array_equal(a.frames, b.frames)


# ----------------------------------------------------------------------------- decoder damage


def _moving(n: int = 30, h: int = 64, w: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(xx * 3 + t * 5) % 256, (yy * 4 + t * 3) % 256, ((xx + yy) * 2 + t * 7) % 256], -1)
                     for t in range(n)]).astype(np.uint8)


@pytest.mark.parametrize("codec, pix_fmt", [("libx264", "yuv420p"), ("mpeg4", "yuv420p")])
def test_a_window_over_damaged_frames_fails_unless_kept(tmp_path, codec, pix_fmt):
    from fixtures.videos import KEY_EVERY_10, damage_key_frame

    clean = encode_video(tmp_path / "clean.mp4", _moving(), codec, pix_fmt, KEY_EVERY_10 if codec == "libx264" else None,
                         gop=10, max_b_frames=0)
    bad = damage_key_frame(clean, 1, tmp_path / "bad.mp4")  # the key frame at 10: frames 10..19 carry it
    assert bad.stat().st_size == clean.stat().st_size
    whole = _cfg(30, "first")
    assert sample_frames(_sample(clean), whole).damaged == ()
    with pytest.raises(VideoError, match=r"10 of the window's 30 frames decode from damaged data") as e:
        sample_frames(_sample(bad), whole)
    assert e.value.kind == "damaged" and str(bad) in str(e.value) and 'frames.damaged = "keep"' in str(e.value)
    kept = sample_frames(_sample(bad), dataclasses.replace(whole, damaged="keep"))
    assert kept.damaged == tuple(range(10, 20)) and kept.frames.shape[0] == 30
    # a window that ends before the damage never sees it (decoding stops at its last frame)
    assert sample_frames(_sample(bad), _cfg(10, "first")).damaged == ()
    # a sparse window (MPEG-4: the pass that skips B-frames nobody needs) counts its own frames only
    sparse = sample_frames(_sample(bad), _cfg(6, "uniform", damaged="keep"))
    assert sparse.indices.tolist() == [0, 5, 11, 17, 23, 29] and sparse.damaged == (11, 17)
