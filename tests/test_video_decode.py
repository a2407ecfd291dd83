"""Decoding of videos the test writes itself (lossless, so frames compare exactly) and of frame folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures.videos import encode_video
from udaqa_pipeline.video.decode import VideoError, count_frames, natural_key, read_frames


def _frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mkv(tmp_path_factory) -> tuple[Path, np.ndarray]:
    frames = _frames(20)
    return encode_video(tmp_path_factory.mktemp("v") / "clip.mkv", frames), frames


def test_lossless_mkv_exact(mkv):
    path, frames = mkv
    out = read_frames(path)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    np.testing.assert_array_equal(out, frames)
    assert count_frames(path) == 20
    assert count_frames(path, exact=False) == 20


def test_range_and_indices(mkv):
    path, frames = mkv
    np.testing.assert_array_equal(read_frames(path, start=3, stop=7), frames[3:7])
    np.testing.assert_array_equal(read_frames(path, start=15, stop=99), frames[15:])
    idx = [5, 2, 2, 19]
    np.testing.assert_array_equal(read_frames(path, indices=idx), frames[idx])
    with pytest.raises(VideoError, match="only 20 frames"):
        read_frames(path, indices=[0, 20])


def test_x264rgb_lossless_mp4(tmp_path):
    frames = _frames(12)
    path = encode_video(tmp_path / "c.mp4", frames, "libx264rgb", "rgb24", {"qp": "0", "preset": "ultrafast"})
    np.testing.assert_array_equal(read_frames(path), frames)
    np.testing.assert_array_equal(read_frames(path, indices=[11, 0]), frames[[11, 0]])


def test_frame_folder_natural_order(tmp_path):
    frames = _frames(12, 20, 30)
    d = tmp_path / "f"
    d.mkdir()
    for i, f in enumerate(frames):  # unpadded names: img_2 must come before img_10
        Image.fromarray(f).save(d / f"img_{i}.png")
    (d / "notes.txt").write_text("ignored")
    assert count_frames(d) == 12
    np.testing.assert_array_equal(read_frames(d), frames)
    np.testing.assert_array_equal(read_frames(d, start=9), frames[9:])
    np.testing.assert_array_equal(read_frames(d, indices=[10, 2, 10]), frames[[10, 2, 10]])
    assert sorted(["img_10", "img_2", "img_1"], key=natural_key) == ["img_1", "img_2", "img_10"]


def test_greyscale_frames_become_rgb(tmp_path):
    d = tmp_path / "g"
    d.mkdir()
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(d / "0.png")
    out = read_frames(d)
    assert out.shape == (1, 8, 8, 3) and (out == 7).all()


def test_missing_empty_corrupt(tmp_path, mkv):
    with pytest.raises(VideoError, match="no such file") as e:
        read_frames(tmp_path / "nope.mp4")
    assert e.value.path == tmp_path / "nope.mp4"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match="empty"):
        count_frames(empty)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError) as e:
        read_frames(junk)
    assert str(junk) in str(e.value) and e.value.reason
    # a real video cut in half: header fine, data truncated
    src, _ = mkv
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(src.read_bytes()[:600])
    with pytest.raises(VideoError):
        read_frames(cut, indices=[19])
    d = tmp_path / "nofr"
    d.mkdir()
    with pytest.raises(VideoError, match="no images"):
        read_frames(d)
    bad = tmp_path / "badfr"
    bad.mkdir()
    (bad / "0001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(VideoError, match="0001.jpg"):
        read_frames(bad)


def test_decoding_stops_at_last_needed_frame(tmp_path, mkv):
    # Damage the second half: the first frames still read, because decoding never gets there.
    src, frames = mkv
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid: mid + 3000] = bytes(b ^ 0xFF for b in data[mid: mid + 3000])
    bad = tmp_path / "half.mkv"
    bad.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_frames(bad, indices=[0, 1]), frames[:2])
    with pytest.raises(VideoError, match="half.mkv"):
        read_frames(bad)


@pytest.mark.parametrize("name,codec,pix_fmt", [("c.avi", "mpeg4", "yuv420p"), ("c.mp4", "libx264", "yuv420p"),
                                                ("c.gif", "gif", "rgb8")])
def test_lossy_containers(tmp_path, name, codec, pix_fmt):
    # smooth gradients that lossy codecs keep close; exactness is covered by the lossless tests
    y, x = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([(x * 5 + t * 8) % 256, (y * 7) % 256, np.full_like(x, 128)], -1)
                       for t in range(12)]).astype(np.uint8)
    path = encode_video(tmp_path / name, frames, codec, pix_fmt)
    out = read_frames(path)
    assert out.shape == frames.shape and count_frames(path) == 12
    assert np.abs(out.astype(int) - frames).mean() < 32  # unrelated frames differ by ~85
    np.testing.assert_array_equal(read_frames(path, indices=[11, 3]), out[[11, 3]])


def test_error_kinds_are_machine_readable(tmp_path, mkv):
    """Every failure carries a ``kind`` from VIDEO_ERROR_KINDS; code reads it, never the wording."""
    from udaqa_pipeline.video.decode import VIDEO_ERROR_KINDS

    def kind_of(fn, *a, **kw):
        with pytest.raises(VideoError) as e:
            fn(*a, **kw)
        assert e.value.kind in VIDEO_ERROR_KINDS
        return e.value.kind

    src, _ = mkv
    assert kind_of(read_frames, tmp_path / "nope.mp4") == "missing"
    assert kind_of(count_frames, tmp_path / "nope") == "missing"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    assert kind_of(count_frames, empty) == "empty"
    d = tmp_path / "nofr"
    d.mkdir()
    assert kind_of(read_frames, d) == "empty"
    junk = tmp_path / "junk.avi"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert kind_of(read_frames, junk) in ("corrupt", "empty")  # FFmpeg may open junk and find no frames
    assert kind_of(read_frames, src, indices=[0, 20]) == "too_short"  # 20 frames decoded
    assert kind_of(read_frames, src, indices=[-1]) == "bad_request"
    bad = tmp_path / "badfr"
    bad.mkdir()
    (bad / "0001.jpg").write_bytes(b"not a jpeg")
    assert kind_of(read_frames, bad) == "corrupt"
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(sizes / "0.png")
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(sizes / "1.png")
    assert kind_of(read_frames, sizes) == "corrupt"
    idx_folder = tmp_path / "fr"
    idx_folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(idx_folder / "0.png")
    assert kind_of(read_frames, idx_folder, indices=[1]) == "too_short"
    # the default kind is the generic one, and an unknown kind is a programming error
    assert VideoError(src, "x").kind == "corrupt"
    with pytest.raises(ValueError, match="unknown VideoError kind"):
        VideoError(src, "x", kind="broken")
