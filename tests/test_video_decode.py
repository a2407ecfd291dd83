"""Decoding of videos the test writes itself (lossless, so frames compare exactly) and of frame folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import av
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
    assert kind_of(read_frames, sizes) == "unsupported"  # one frame size per read, as a video whose size changes
    idx_folder = tmp_path / "fr"
    idx_folder.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(idx_folder / "0.png")
    assert kind_of(read_frames, idx_folder, indices=[1]) == "too_short"
    # the default kind is the generic one, and an unknown kind is a programming error
    assert VideoError(src, "x").kind == "corrupt"
    with pytest.raises(ValueError, match="unknown VideoError kind"):
        VideoError(src, "x", kind="broken")


# ----------------------------------------------------------------------------- display rotation


def _portrait(n: int = 6) -> np.ndarray:
    """What a player shows: 40 wide, 56 tall, content with no symmetry a rotation could hide."""
    return np.random.default_rng(7).integers(0, 256, size=(n, 56, 40, 3), dtype=np.uint8)


@pytest.mark.parametrize("rotation", [90, -90, 180, 270])
@pytest.mark.parametrize("name,codec,pix_fmt,options", [
    ("c.mp4", "libx264rgb", "rgb24", {"qp": "0", "preset": "ultrafast"}),
    ("c.mov", "libx264rgb", "rgb24", {"qp": "0", "preset": "ultrafast"}),
    ("c.mkv", "ffv1", "bgr0", None),
])
def test_rotated_twin_decodes_to_the_upright_frames(tmp_path, rotation, name, codec, pix_fmt, options):
    from fixtures.videos import stored_for_display
    from udaqa_pipeline.video.decode import iter_frames

    shown = _portrait()
    upright = encode_video(tmp_path / ("up_" + name), shown, codec, pix_fmt, options)
    stored = stored_for_display(shown, rotation)
    assert stored.shape[1:3] != shown.shape[1:3] or rotation % 180 == 0  # really stored on its side
    rotated = encode_video(tmp_path / name, stored, codec, pix_fmt, options, rotation=rotation)
    with av.open(str(rotated)) as c:  # the file carries the matrix players rotate by
        assert next(c.decode(video=0)).rotation % 360 == rotation % 360
    np.testing.assert_array_equal(read_frames(upright), shown)
    np.testing.assert_array_equal(read_frames(rotated), shown)
    np.testing.assert_array_equal(read_frames(rotated, indices=[5, 0, 0]), shown[[5, 0, 0]])
    np.testing.assert_array_equal(read_frames(rotated, start=2, stop=4), shown[2:4])
    np.testing.assert_array_equal(np.concatenate(list(iter_frames(rotated, chunk=4))), shown)


@pytest.mark.parametrize("rotation", [0, 90, 180, -90])
def test_mirrored_display_matrix(tmp_path, rotation):
    """Rotation plus mirror (the other four of the eight orientations a display matrix can hold)."""
    from fixtures.videos import stored_for_display

    shown = _portrait(3)
    p = encode_video(tmp_path / "m.mkv", stored_for_display(shown, rotation, hflip=True), rotation=rotation, hflip=True)
    np.testing.assert_array_equal(read_frames(p), shown)


def test_rotation_off_the_right_angles_is_refused(tmp_path):
    p = encode_video(tmp_path / "tilted.mp4", _portrait(2), "libx264rgb", "rgb24", {"qp": "0"}, rotation=30)
    with pytest.raises(VideoError, match="not a multiple of 90") as e:
        read_frames(p)
    assert e.value.kind == "unsupported" and "tilted.mp4" in str(e.value) and "upright" in e.value.fix


def test_display_transform_follows_ffmpeg_for_raw_matrices():
    """The 16.16 matrices FFmpeg writes for the pure rotations and mirrors, and the operation each needs."""
    from udaqa_pipeline.video.decode import apply_display_transform, display_transform

    one = 1 << 16
    cases = {  # av_display_rotation_set(-deg) (counter-clockwise deg), av_display_matrix_flip
        (0, 0): [one, 0, 0, 0, one, 0, 0, 0, 1 << 30],
        (90, 0): [0, -one, 0, one, 0, 0, 0, 0, 1 << 30],
        (-90, 0): [0, one, 0, -one, 0, 0, 0, 0, 1 << 30],
        (180, 0): [-one, 0, 0, 0, -one, 0, 0, 0, 1 << 30],
        (0, 1): [-one, 0, 0, 0, one, 0, 0, 0, 1 << 30],  # mirrored left-right
    }
    a = np.arange(6).reshape(2, 3, 1)
    expect = {(0, 0): a, (90, 0): np.rot90(a, 1), (-90, 0): np.rot90(a, -1), (180, 0): a[::-1, ::-1],
              (0, 1): a[:, ::-1]}
    for key, m in cases.items():
        np.testing.assert_array_equal(apply_display_transform(a, display_transform(m)), expect[key], err_msg=str(key))
    assert display_transform(None) == ()
    with pytest.raises(ValueError, match="9 entries"):
        display_transform([1, 2, 3])


# ----------------------------------------------------------------------------- truncated files


def _moving(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(3)
    base = np.stack([np.stack([(x * 4 + t * 6) % 256, (y * 5 + t * 3) % 256, (x + y + 2 * t) % 256], -1)
                     for t in range(n)])
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def web_mp4(tmp_path_factory) -> Path:
    """120 frames of H.264 in mp4 with the index first (``faststart``), as downloads are."""
    return encode_video(tmp_path_factory.mktemp("w") / "dl.mp4", _moving(120), "libx264", "yuv420p",
                        container_options={"movflags": "faststart"})


@pytest.mark.parametrize("fraction", [0.6, 0.25])
def test_cut_download_is_truncated_naming_both_counts(tmp_path, web_mp4, fraction):
    from fixtures.videos import cut
    from udaqa_pipeline.video.decode import VideoFile

    part = cut(web_mp4, fraction, tmp_path / "part.mp4")
    with VideoFile(part) as v:
        count = v.container_count()
    assert count.header == 120 and count.truncated and not count.trusted
    for call in (lambda: read_frames(part), lambda: read_frames(part, indices=[0, 119]),
                 lambda: count_frames(part)):
        with pytest.raises(VideoError) as e:
            call()
        assert e.value.kind == "truncated", str(e.value)
        assert "part.mp4" in str(e.value) and "120 frames" in e.value.reason
        decoded = int(e.value.reason.split("stops after ")[1].split()[0])
        assert 0 < decoded < 120 * fraction  # the second count: what really decodes
        assert "again" in e.value.fix
    # frames before the cut still read: nothing that was fine is lost
    np.testing.assert_array_equal(read_frames(part, indices=[0, 1]), read_frames(web_mp4, indices=[0, 1]))


def test_avi_cut_before_its_index_is_truncated(tmp_path):
    from fixtures.videos import cut

    whole = encode_video(tmp_path / "v.avi", _moving(90), "mpeg4", "yuv420p")
    assert count_frames(whole) == 90
    part = cut(whole, 0.5, tmp_path / "half.avi")
    with pytest.raises(VideoError, match="states 90 frames") as e:
        read_frames(part)
    assert e.value.kind == "truncated"


def _overstate_avi_count(path: Path, frames: int, out: Path) -> Path:
    """``path`` (an FFmpeg-written AVI) with its headers stating ``frames`` frames: the main header's
    dwTotalFrames, the video stream header's dwLength and the OpenDML dmlh total. Data and index unchanged."""
    import struct

    data = bytearray(Path(path).read_bytes())
    assert data[:4] == b"RIFF" and data[24:28] == b"avih"
    struct.pack_into("<I", data, 48, frames)  # avih payload at 32: dwMicroSecPerFrame, ..., dwTotalFrames at +16
    strh = data.find(b"strh")
    struct.pack_into("<I", data, strh + 8 + 32, frames)  # fccType .. dwStart (32 bytes), then dwLength
    dmlh = data.find(b"dmlh")
    if dmlh > 0:
        struct.pack_into("<I", data, dmlh + 8, frames)
    Path(out).write_bytes(bytes(data))
    return Path(out)


@pytest.mark.parametrize("codec,stated", [("mpeg4", 45), ("mjpeg", 31)])
def test_avi_whose_header_overstates_its_count_is_whole(tmp_path, codec, stated):
    """Every frame and the index are there, only the header says more: the frames that decode are the
    video (a window past them is too long, never truncated)."""
    from udaqa_pipeline.video.decode import VideoFile

    frames = _moving(30, 32, 48)
    whole = encode_video(tmp_path / "v.avi", frames, codec, "yuv420p" if codec == "mpeg4" else "yuvj420p")
    over = _overstate_avi_count(whole, stated, tmp_path / "over.avi")
    with VideoFile(over) as v:
        count = v.container_count()
    assert count.header == stated and count.frames == 30 and not count.truncated
    assert count_frames(over) == 30 and count_frames(over, exact=False) == 30
    np.testing.assert_array_equal(read_frames(over), read_frames(whole))
    np.testing.assert_array_equal(read_frames(over, indices=[29, 0]), read_frames(whole, indices=[29, 0]))
    with pytest.raises(VideoError) as e:
        read_frames(over, indices=[stated - 1])
    assert e.value.kind == "too_short"
    # the same file cut short is still truncated: its trailing index is gone
    from fixtures.videos import cut

    long = encode_video(tmp_path / "l.avi", _moving(90), codec, "yuv420p" if codec == "mpeg4" else "yuvj420p")
    with pytest.raises(VideoError, match="states 150 frames") as e:
        read_frames(cut(_overstate_avi_count(long, 150, tmp_path / "lo.avi"), 0.5, tmp_path / "half.avi"))
    assert e.value.kind == "truncated"


def _size_change_ts(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """An MPEG-TS video whose frame size changes mid-stream (48x32, then 64x48): two segments joined
    byte for byte, as recorders and `cat` make them."""
    a = encode_video(tmp_path / "a.ts", _moving(10, 32, 48), "mpeg2video", "yuv420p")
    b = encode_video(tmp_path / "b.ts", _moving(10, 48, 64), "mpeg2video", "yuv420p")
    joined = tmp_path / "joined.ts"
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    return joined, read_frames(a), read_frames(b)


def test_frame_size_change_mid_stream_is_unsupported(tmp_path):
    from udaqa_pipeline.video.decode import iter_frames

    joined, first, _ = _size_change_ts(tmp_path)
    n1 = sum(1 for f in av.open(str(joined)).decode(video=0) if f.width == 48)  # frames before the change
    for call in (lambda: read_frames(joined), lambda: read_frames(joined, indices=[n1 + 2, 0, 1]),
                 lambda: list(iter_frames(joined, chunk=3)), lambda: read_frames(joined, start=2, stop=n1 + 1)):
        with pytest.raises(VideoError) as e:
            call()
        assert e.value.kind == "unsupported" and "joined.ts" in str(e.value)
        assert "64x48" in e.value.reason and "48x32" in e.value.reason and "scale=" in e.value.fix
    with pytest.raises(VideoError, match=f"frame {n1} is 64x48 but frame 0 is 48x32"):
        read_frames(joined)
    # a read inside one size is fine
    assert read_frames(joined, indices=[0, n1 - 1]).shape == (2, 32, 48, 3)
    assert read_frames(joined, start=n1).shape[1:] == (48, 64, 3)


def test_frame_folder_with_an_image_of_another_size_is_unsupported(tmp_path):
    from udaqa_pipeline.video.decode import iter_frames

    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(_moving(8, 32, 48)):
        Image.fromarray(f if i != 5 else f[:24]).save(d / f"{i + 1:05d}.png")
    for call in (lambda: read_frames(d), lambda: read_frames(d, indices=[7, 5]), lambda: list(iter_frames(d, chunk=5))):
        with pytest.raises(VideoError) as e:
            call()
        assert e.value.kind == "unsupported" and e.value.path.name == "00006.png"
        assert "48x24" in e.value.reason and "48x32" in e.value.reason and "frame 5" in e.value.reason
    assert read_frames(d, indices=[0, 4, 6]).shape == (3, 32, 48, 3)


def test_complete_files_are_not_truncated(tmp_path, web_mp4):
    from udaqa_pipeline.video.decode import VideoFile

    for p in (web_mp4, encode_video(tmp_path / "v.avi", _moving(30), "mpeg4", "yuv420p"),
              encode_video(tmp_path / "v.mkv", _moving(30))):
        with VideoFile(p) as v:
            count = v.container_count()
        assert not count.truncated and count.frames == count_frames(p)
        assert count.trusted == (p.suffix != ".mkv")  # Matroska states no frame count: packets alone
        with pytest.raises(VideoError) as e:
            read_frames(p, indices=[count.frames])
        assert e.value.kind == "too_short"  # a window past the end of a complete file is only too long


# ----------------------------------------------------------------------------- one pass, B-frames skipped


@pytest.mark.parametrize("name,codec", [("b.avi", "mpeg4"), ("b.mp4", "mpeg4"), ("b.mkv", "mpeg2video"),
                                        ("b.mpg", "mpeg1video")])
def test_skipping_unneeded_b_frames_gives_the_exact_frames(tmp_path, name, codec):
    from udaqa_pipeline.video.decode import VideoFile

    p = encode_video(tmp_path / name, _moving(150), codec, "yuv420p", max_b_frames=2, gop=40)
    every = read_frames(p)  # every frame, in order: the reference
    idx = np.floor(np.linspace(0, 149, 17)).astype(int)
    with VideoFile(p) as v:
        count = v.container_count()
        assert count.frames == 150 and v._skip_worthwhile(idx, 150)
        got = v._read_skipping(idx, 150)
        assert got is not None, "the one-pass model should hold for this stream"
        # the skipping pass placed every frame where decoding in order does
        for i in idx.tolist():
            np.testing.assert_array_equal(got[i], every[i])
        np.testing.assert_array_equal(v.read(idx, count=count), every[idx])
        assert v._read_skipping(idx, 151) is None  # a count the stream does not have: refused, not guessed


def test_read_with_a_count_decodes_to_the_end_and_reports_the_exact_count(tmp_path):
    from udaqa_pipeline.video.decode import VideoFile

    p = encode_video(tmp_path / "v.mkv", _frames(20))
    with VideoFile(p) as v:
        count = v.container_count()
        v.read([0, 5], count=count)
        assert v.decoded_frames is None  # the window stopped early: nothing learnt about the end
        v.read([0, 19], count=count)
        assert v.decoded_frames == 20


def test_mpeg4_packing_rule_for_skipping():
    """DivX packed B-frames (P+B in one packet, a not-coded N-VOP next) keep frames at their steps;
    a packed packet followed by a coded one, or an N-VOP with nothing packed before it, do not."""
    from udaqa_pipeline.video.decode import _mpeg4_step_safe

    vop = b"\x00\x00\x01\xb6"
    p_and_b = vop + b"\x50" * 300 + vop + b"\x90" * 200
    n_vop = vop + b"\x40\x00\x00\x7f"
    coded = vop + b"\x50" * 300
    assert _mpeg4_step_safe(p_and_b, packed_before=False)
    assert _mpeg4_step_safe(n_vop, packed_before=True)  # the placeholder FFmpeg fills with the held B-VOP
    assert _mpeg4_step_safe(coded, packed_before=False)
    assert not _mpeg4_step_safe(coded, packed_before=True)  # B-VOPs would decode one packet late
    assert not _mpeg4_step_safe(n_vop, packed_before=False)  # a dropped frame: decodes to nothing
