"""Extraction mechanics on tiny generated videos: failure isolation, resume after kill -9, the
writer lock, reuse, views/featurize, and HDF5 vs Zarr.

These use a seeded, randomly initialised I3D (``tiny_model``) and the ``TINY`` stage overrides:
they test the cache machinery, which does not depend on what the weights are (the real-weights
path is ``test_cache_cli``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from test_cache_util import TINY, make_dataset, tiny_model
from udaqa_pipeline.cache import open_cache
from udaqa_pipeline.cache.extract import ExtractionError, extract_features
from udaqa_pipeline.config import resolve
from udaqa_pipeline.features import featurize
from udaqa_pipeline.cache.lock import CacheLockedError
from udaqa_pipeline.cache.staging import STAGING

TESTS = Path(__file__).resolve().parent
BS = 4


def _logged(caplog) -> str:
    """The log records since the last call, as text."""
    text = caplog.text
    caplog.clear()
    return text


def _extract(root, cache_root, overrides=TINY, **kw):
    kw.setdefault("model", tiny_model())
    kw.setdefault("batch_size", BS)
    cfg = resolve("folder", overrides, {f"cache.{k}": kw.pop(k) for k in ("backend", "views", "dtype") if k in kw})
    return extract_features("folder", cfg, root, cache_root=cache_root, progress=False, **kw)


def _same_cache(a: Path, b: Path) -> None:
    ca, cb = open_cache(a), open_cache(b)
    assert ca.config_hash == cb.config_hash
    assert ca.features.tobytes() == cb.features.tobytes()  # bit-identical, NaN rows included
    assert ca.video.tobytes() == cb.video.tobytes()
    assert ca.samples.equals(cb.samples)


def test_failure_isolation(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", {"good": 14, "short": 5, "broken": "corrupt", "gone": "missing"})
    over = TINY + ("frames.short_policy=error",)
    p = _extract(root, tmp_path / "cache", over)
    c = open_cache(p)
    status = dict(zip(c.samples.column("id").to_pylist(), c.samples.column("status").to_pylist()))
    assert status == {"good": "ok", "short": "too_short", "broken": "corrupt", "gone": "missing"}
    errors = dict(zip(c.samples.column("id").to_pylist(), c.samples.column("error").to_pylist()))
    assert "broken.mkv" in errors["broken"] and "gone.mkv" in errors["gone"] and "too short" in errors["short"]
    assert np.isfinite(c.features[0]).all() and np.isnan(c.features[1:]).all()
    assert "1 of 4 samples ok, 3 failed" in _logged(caplog)
    # --strict: same cache (reused, nothing recomputed), but an error
    with pytest.raises(ExtractionError, match="3 samples failed"):
        _extract(root, tmp_path / "cache", over, strict=True)


def test_short_video_padded_and_flagged_and_views_match_featurize(tmp_path):
    from udaqa_pipeline.datasets import load_dataset
    from udaqa_pipeline.datasets.frames import sample_frames

    root = make_dataset(tmp_path / "data", {"short": 7})
    model = tiny_model()
    p = _extract(root, tmp_path / "cache", views=2, model=model, batch_size=2)
    c = open_cache(p)
    row = c.samples.to_pylist()[0]
    assert row["status"] == "ok" and row["short"] and row["n_source_frames"] == 7
    assert row["frame_indices"] == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 6, 6]
    assert c.features.shape == (1, 2, 2, 1024) and c.views[1] == {"flip": True, "shift": 0}
    cfg = resolve("folder", TINY, {"cache.views": 2})
    frames = sample_frames(load_dataset("folder", root, cfg)[0], cfg.frames).frames
    for v in range(2):
        feats, video = featurize(frames, model, cfg, v, batch_size=2)
        assert feats.tobytes() == c.features[0, v].tobytes()  # scoring path == cached numbers
        np.testing.assert_array_equal(video, c.video[0] if v == 0 else c.video[0][..., ::-1])
    assert not np.array_equal(c.features[0, 0], c.features[0, 1])


def test_nothing_succeeded_is_an_error(tmp_path):
    root = make_dataset(tmp_path / "data", {"a": "corrupt", "b": "missing"})
    with pytest.raises(ExtractionError, match="no sample"):
        _extract(root, tmp_path / "cache")


def test_hdf5_and_zarr_extractions_identical(tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 14, "b": "corrupt", "c": 20})
    ph = _extract(root, tmp_path / "c1", backend="hdf5")
    pz = _extract(root, tmp_path / "c2", backend="zarr")
    assert (ph / "features.h5").is_file() and (pz / "features.zarr").is_dir()
    _same_cache(ph, pz)
    # an unchanged rerun reuses the cache: nothing extracted
    stats: dict = {}
    assert _extract(root, tmp_path / "c1", stats=stats) == ph and stats["processed"] == 0
    # (a changed setting gets another directory: test_cache_store.test_cache_key_covers_what_changes_numbers)


DRIVER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_cache_util import TINY, tiny_model
    import udaqa_pipeline.cache.extract as ex
    import udaqa_pipeline.cache.merge as mg
    from udaqa_pipeline.config import resolve
    root, cache, mode = sys.argv[1:4]
    kind, _, arg = mode.partition(":")
    if kind == "during":  # die inside the k-th staged write: temp file written, not yet renamed
        real, calls = os.replace, [0]
        def replace(src, dst):
            if str(dst).endswith(".npz"):
                calls[0] += 1
                if calls[0] == int(arg):
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        mg.os.replace = replace
    elif kind == "merge":  # die after the store is written, before samples.parquet and the manifest
        mg.write_samples = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    ex.extract_features("folder", resolve("folder", TINY), root, cache_root=cache, batch_size={bs},
                        progress=False, model=tiny_model())
""")


def _driver(tmp_path: Path, root: Path, cache: Path, mode: str) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(tests=str(TESTS), bs=BS))
    return subprocess.Popen([sys.executable, str(script), str(root), str(cache), mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


VIDEOS = {"a": 14, "b": "corrupt", "c": 5, "d": 16, "e": 13}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run, for comparison."""
    tmp = tmp_path_factory.mktemp("ref")
    root = make_dataset(tmp / "data", VIDEOS)
    return root, _extract(root, tmp / "cache")


def test_kill9_mid_run_then_resume_is_identical_and_lock_refuses_second_writer(tmp_path, reference):
    root, ref = reference
    cache = tmp_path / "cache"
    proc = _driver(tmp_path, root, cache, "run")
    try:
        deadline = time.time() + 120
        staged = []
        while time.time() < deadline and proc.poll() is None:
            staged = list(cache.glob(f"*/{STAGING}/*/*.npz"))
            if len(staged) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"driver ended before it could be killed: {proc.stderr.read()}"
        # a second writer on the same cache is refused, naming the live holder
        with pytest.raises(CacheLockedError, match=f"pid {proc.pid} on host"):
            _extract(root, cache)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 2 <= len(list(cache.glob(f"*/{STAGING}/*/*.npz"))) < len(VIDEOS)
    stats: dict = {}
    p = _extract(root, cache, stats=stats)
    assert 0 < stats["processed"] <= len(VIDEOS) - 2
    _same_cache(p, ref)
    assert not (p / STAGING).exists()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["during:1", "during:4", "merge"])
def test_kill9_at_fixed_points_then_resume_is_identical(tmp_path, reference, mode):
    root, ref = reference
    cache = tmp_path / "cache"
    proc = _driver(tmp_path, root, cache, mode)
    assert proc.wait(timeout=300) == -signal.SIGKILL, proc.stderr.read()
    p = _extract(root, cache)
    _same_cache(p, ref)


TORCHRUN_DRIVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_cache_util import TINY, tiny_model
    from udaqa_pipeline.cache.extract import extract_features
    from udaqa_pipeline.config import resolve
    p = extract_features("folder", resolve("folder", TINY), sys.argv[1], cache_root=sys.argv[2],
                         batch_size={bs}, progress=False, model=tiny_model())
    print("CACHE", p, flush=True)
""")


def test_torchrun_two_gloo_processes_equal_single_process(tmp_path, reference):
    root, ref = reference
    script = tmp_path / "rank.py"
    script.write_text(TORCHRUN_DRIVER.format(tests=str(TESTS), bs=BS))
    import torch

    # Same intra-op thread count as the in-process reference: oneDNN picks other kernels for 1 thread
    # than for several (features then differ at ~1e-11), so bit equality needs equal thread counts.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(root), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    paths = {line.split(" ", 1)[1] for line in out.stdout.splitlines() if line.startswith("CACHE ")}
    assert len(paths) == 1  # both ranks return the same, merged cache
    p = Path(paths.pop())
    assert p.name == ref.name
    _same_cache(p, ref)  # rank 0 merged automatically


def test_shards_on_separate_hosts_then_cache_merge(tmp_path, reference):
    from click.testing import CliRunner

    from udaqa_pipeline.cli import main

    root, ref = reference
    a = _extract(root, tmp_path / "host0", shard="0/2")
    b = _extract(root, tmp_path / "host1", shard="1/2")
    assert a.name == b.name == ref.name
    assert not (a / "features.h5").exists()  # not mergeable alone: the other half is elsewhere
    res = CliRunner().invoke(main, ["cache", "merge", str(a)])
    assert res.exit_code != 0 and "not extracted yet" in res.output
    res = CliRunner().invoke(main, ["cache", "merge", str(a), str(b)])
    assert res.exit_code == 0, res.output
    _same_cache(a, ref)


def test_retry_failed_after_fixing_a_video(tmp_path):
    from test_cache_util import write_video

    root = make_dataset(tmp_path / "data", {"a": 14, "late": "missing"})
    p = _extract(root, tmp_path / "cache")
    before = open_cache(p)
    assert before.samples.column("status").to_pylist() == ["ok", "missing"]
    kept = before.features[0].copy()
    write_video(root / "videos" / "late.mkv", 15, seed=9)  # the user fixes the file
    stats: dict = {}
    assert _extract(root, tmp_path / "cache", retry_failed=True, stats=stats) == p
    after = open_cache(p)
    assert stats["processed"] == 1 and after.samples.column("status").to_pylist() == ["ok", "ok"]
    assert after.features[0].tobytes() == kept.tobytes()  # kept, not recomputed
    assert np.isfinite(after.features[1]).all()


def test_failure_status_follows_the_error_kind_not_its_wording(tmp_path):
    from udaqa_pipeline.features import STATUS_OF_KIND, failure_status
    from udaqa_pipeline.video.clips import ShortVideoError
    from udaqa_pipeline.video.decode import VIDEO_ERROR_KINDS, VideoError

    assert set(STATUS_OF_KIND) == set(VIDEO_ERROR_KINDS)  # every kind has a status
    p = tmp_path / "v.mkv"
    # wording that used to decide the status now does not: the kind does
    assert failure_status(VideoError(p, "no such file or folder", kind="corrupt")) == "corrupt"
    assert failure_status(VideoError(p, "frame 9 requested but only 3 frames", kind="bad_request")) == "error"
    assert failure_status(VideoError(p, "anything", kind="missing")) == "missing"
    assert failure_status(VideoError(p, "anything", kind="too_short")) == "too_short"
    assert failure_status(VideoError(p, "anything", kind="empty")) == "corrupt"
    assert failure_status(VideoError(p, "anything", kind="unreadable")) == "error"
    assert failure_status(ShortVideoError("x")) == "too_short"
    assert failure_status(FileNotFoundError("x")) == "missing"
    assert failure_status(RuntimeError("x")) == "error"


def test_bad_input_kinds_in_one_run(tmp_path, caplog):
    """Through stage one: a phone video stored on its side equals its upright twin
    (frames, features, small video); a cut download is a failure naming both counts, never a padded
    sample; a short complete video is padded and counted apart from ok in the summary and cache info;
    a frame folder with a gap fails naming the missing numbers."""
    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    import csv

    from PIL import Image

    from fixtures.videos import cut, encode_video, stored_for_display
    from test_cache_util import write_video
    from udaqa_pipeline.cache.verify import cache_info

    root = tmp_path / "data"
    shown = np.random.default_rng(5).integers(0, 256, (14, 40, 24, 3), dtype=np.uint8)
    encode_video(root / "v" / "upright.mkv", shown)
    encode_video(root / "v" / "phone.mp4", stored_for_display(shown, -90), "libx264rgb", "rgb24",
                 {"qp": "0", "preset": "ultrafast"}, rotation=-90)
    web = encode_video(tmp_path / "web.mp4", np.repeat(shown, 9, axis=0)[:120], "libx264", "yuv420p",
                       container_options={"movflags": "faststart"})
    cut(web, 0.6, root / "v" / "download.mp4")
    write_video(root / "v" / "short.mkv", 7, seed=3)
    write_video(root / "v" / "shorter.mkv", 5, seed=4)
    gap = root / "v" / "gapped"
    gap.mkdir()
    for k in [k for k in range(20) if k not in (4, 5)]:
        Image.fromarray(shown[k % 14]).save(gap / f"{k:05d}.png")
    rows = [("upright", "v/upright.mkv"), ("phone", "v/phone.mp4"), ("download", "v/download.mp4"),
            ("short", "v/short.mkv"), ("shorter", "v/shorter.mkv"), ("gapped", "v/gapped")]
    with (root / "annotations.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "final_score"])
        w.writerows([(sid, rel, 10 + i) for i, (sid, rel) in enumerate(rows)])

    p = _extract(root, tmp_path / "cache")
    c = open_cache(p)
    by = {r["id"]: (i, r) for i, r in enumerate(c.samples.to_pylist())}
    up, ph = by["upright"][0], by["phone"][0]
    assert by["phone"][1]["status"] == "ok" and not by["phone"][1]["short"]
    assert c.features[ph].tobytes() == c.features[up].tobytes()  # same frames in, same features out
    np.testing.assert_array_equal(c.video[ph], c.video[up])
    dl = by["download"][1]
    assert dl["status"] == "corrupt" and "truncated" in dl["error"] and "120 frames" in dl["error"]
    assert "download.mp4" in dl["error"]
    gapped = by["gapped"][1]  # the uniform window samples frame 5 (not 4): it names what it needs
    assert gapped["status"] == "corrupt" and "number 5 needed" in gapped["error"] and "00003.png -> 00006.png" in gapped["error"]
    assert by["short"][1]["short"] and by["shorter"][1]["n_source_frames"] == 5
    err = _logged(caplog)
    assert "2 of 6 samples ok, 2 short (padded to 12 frames; shortest 5 frames: shorter), 2 failed" in err
    info = cache_info(p)
    assert info["counts"]["ok"] == 4
    assert info["padded"] == {"short": 2, "shortest_frames": 5, "shortest_id": "shorter", "window_frames": 12,
                              "filled": 0, "damaged": 0}


def test_gap_policy_nearest_is_counted_apart(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    from PIL import Image

    from udaqa_pipeline.cache.verify import cache_info

    root = tmp_path / "data"
    rng = np.random.default_rng(1)
    for sid, missing in (("whole", ()), ("holed", (3,))):
        d = root / "f" / sid
        d.mkdir(parents=True)
        for k in range(1, 17):
            if k not in missing:
                Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(d / f"img_{k:05d}.png")
    (root / "annotations.csv").write_text("id,path,final_score\nwhole,f/whole,1\nholed,f/holed,2\n")
    p = _extract(root, tmp_path / "cache", TINY + ("frames.gap_policy=nearest",))
    rows = {r["id"]: r for r in open_cache(p).samples.to_pylist()}
    assert rows["holed"]["status"] == "ok" and rows["holed"]["error"].startswith("filled: frame numbers 3 ")
    window = np.floor(np.linspace(0, 15, 12)).astype(int).tolist()  # folder stage: uniform, L = 12
    assert rows["holed"]["frame_indices"] == [1 if i == 2 else i for i in window]  # frame 3 shows frame 2 (tie: earlier)
    assert rows["whole"]["frame_indices"] == window
    assert "1 of 2 samples ok, 1 with frame-folder gaps filled from the nearest frame" in _logged(caplog)
    assert cache_info(p)["padded"]["filled"] == 1


def test_decoder_damage_fails_the_sample_unless_kept_and_is_counted_apart(tmp_path, caplog):
    """A few flipped bytes inside an H.264 key frame (size and container unchanged): FFmpeg conceals
    the damage and flags the frame corrupt; stage one fails that sample (the batch goes on) unless
    frames.damaged = "keep", which keeps it flagged in the table, the summary and ``cache info``,
    in the same cache (the policy is not part of the key)."""
    from fixtures.videos import KEY_EVERY_10, damage_key_frame, encode_video

    from udaqa_pipeline.cache.verify import cache_info

    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", {"a": 14, "b": 14, "c": 14})
    yy, xx = np.mgrid[0:48, 0:64]
    moving = np.stack([np.stack([(xx * 3 + t * 5) % 256, (yy * 4 + t * 3) % 256, (xx + yy + t * 7) % 256], -1)
                       for t in range(30)]).astype(np.uint8)
    clean = encode_video(tmp_path / "b.mkv", moving, "libx264", "yuv420p", KEY_EVERY_10, gop=10, max_b_frames=0)
    damage_key_frame(clean, 1, root / "videos" / "b.mkv")  # the key frame at 10: frames 10..19 carry it
    over = TINY + ("frames.mode=uniform",)
    failed = _extract(root, tmp_path / "c", over)
    rows = {r["id"]: r for r in open_cache(failed).samples.to_pylist()}
    assert rows["b"]["status"] == "corrupt" and "decode from damaged data" in rows["b"]["error"]
    assert rows["a"]["status"] == rows["c"]["status"] == "ok"
    assert "2 of 3 samples ok, 1 failed" in _logged(caplog)
    kept = _extract(root, tmp_path / "c", over + ("frames.damaged=keep",), retry_failed=True)
    assert kept == failed  # one cache: the policy selects samples, it does not change their numbers
    rows = {r["id"]: r for r in open_cache(kept).samples.to_pylist()}
    assert rows["b"]["status"] == "ok" and rows["b"]["error"].startswith("damaged: ")
    assert "2 of 3 samples ok, 1 kept with frames decoded from damaged data" in _logged(caplog)
    assert cache_info(kept)["padded"]["damaged"] == 1


def test_frame_size_change_fails_its_sample_only(tmp_path):
    """A video whose frame size changes mid-stream (two segments joined) and a frame folder with one
    image of another size fail as `unsupported` (status error) naming the frame and both sizes; the
    good sample beside them is extracted."""
    from PIL import Image

    from fixtures.videos import encode_video

    root = make_dataset(tmp_path / "data", {"good": 14, "joined": 14, "folder": 14})
    y, x = np.mgrid[0:24, 0:32]
    frames = np.stack([np.stack([(x * 7 + t * 5) % 256, (y * 3 + t) % 256, (x + y) % 256], -1)
                       for t in range(14)]).astype(np.uint8)
    a = encode_video(tmp_path / "a.ts", frames[:6], "mpeg2video", "yuv420p")
    b = encode_video(tmp_path / "b.ts", np.repeat(np.repeat(frames[6:], 2, 1), 2, 2), "mpeg2video", "yuv420p")
    (root / "videos" / "joined.mkv").write_bytes(a.read_bytes() + b.read_bytes())  # FFmpeg goes by content
    folder = root / "videos" / "folder.mkv"
    folder.unlink()
    folder.mkdir()  # the annotation names it; a folder there is read as frames
    for t, f in enumerate(frames):
        Image.fromarray(f if t != 9 else f[:, :30]).save(folder / f"{t:05d}.png")
    c = open_cache(_extract(root, tmp_path / "cache"))
    got = {r["id"]: r for r in c.samples.to_pylist()}
    assert got["good"]["status"] == "ok"
    for sid, odd, name in (("joined", "64x48", "joined.mkv"), ("folder", "30x24", "00009.png")):
        assert got[sid]["status"] == "error", got[sid]
        err = got[sid]["error"]
        assert name in err and "frame size changes" in err and odd in err and "32x24" in err


def test_deleted_store_says_how_to_rebuild_it(tmp_path, caplog):
    """A deleted features.h5: every reader names the missing store and the features command that
    rebuilds it (no --backend where there is no other store); the rerun extracts it again, equal
    to a clean build. With a zarr store beside it, the message names both and the rerun copies it."""
    from udaqa_pipeline.cache.manifest import CacheError

    caplog.set_level(logging.INFO, logger="udaqa_pipeline")
    root = make_dataset(tmp_path / "data", {"a": 14, "b": 14})
    clean = _extract(root, tmp_path / "clean")
    p = _extract(root, tmp_path / "cache")
    (p / "features.h5").unlink()
    with pytest.raises(CacheError) as e:
        open_cache(p)
    msg = str(e.value)
    assert "features.h5 is missing" in msg and "udaqa-pipeline features folder" in msg and "again" in msg
    assert "--backend" not in msg and "\n" not in msg
    assert _extract(root, tmp_path / "cache") == p
    assert "extracting the features again" in caplog.text
    _same_cache(p, clean)
    # another store there: it is named, and the rerun copies it back without I3D work
    _extract(root, tmp_path / "cache", backend="zarr")
    (p / "features.h5").unlink()
    with pytest.raises(CacheError) as e:
        open_cache(p)
    assert "zarr store is there" in str(e.value) and "--backend hdf5" in str(e.value)
    assert open_cache(p, backend="zarr").features.tobytes() == open_cache(clean).features.tobytes()
    stats: dict = {}
    _extract(root, tmp_path / "cache", backend="hdf5", stats=stats)
    assert stats["processed"] == 0
    assert open_cache(p, backend="hdf5").features.tobytes() == open_cache(clean).features.tobytes()
    _same_cache(p, clean)


def _read_only(monkeypatch, directory: Path) -> None:
    """Every open for writing under ``directory`` fails with EROFS, as on a read-only mount (the
    tests run as root, whom chmod does not stop)."""
    import errno

    real = os.open
    inside = str(directory)

    def ro_open(path, flags, *a, **kw):
        if str(path).startswith(inside) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", ro_open)


def _add_sample(root: Path, sid: str, k: int, n_frames: int) -> None:
    """Append sample ``sid`` to a ``make_dataset`` folder as its k-th video would be (same video seed,
    labels and split), leaving the other videos' files as they are (their bytes are their identity)."""
    import csv

    from test_cache_util import write_video

    write_video(root / "videos" / f"{sid}.mkv", n_frames, seed=k)
    with (root / "annotations.csv").open("a", newline="") as f:
        csv.writer(f).writerow([sid, f"videos/{sid}.mkv", 10.0 + k, f"{k % 5 + 3};{k % 4 + 4}",
                                "test" if k % 3 == 0 else "train"])


def test_read_only_cache_is_reused_and_a_write_is_one_line(tmp_path, monkeypatch):
    """A cache on a read-only mount with nothing to do is reused (no lock taken); a label change or
    a new sample, which must write, stops with one line naming the directory and the fix."""
    import csv

    from udaqa_pipeline.cache.manifest import CacheError

    root = make_dataset(tmp_path / "data", {"a": 14, "b": 14})
    p = _extract(root, tmp_path / "cache")
    before = {f.name: f.read_bytes() for f in p.iterdir() if f.is_file()}
    with monkeypatch.context() as m:
        _read_only(m, tmp_path / "cache")
        stats: dict = {}
        assert _extract(root, tmp_path / "cache", stats=stats) == p
        assert stats["processed"] == 0 and stats["reused"]
        rows = list(csv.DictReader((root / "annotations.csv").open()))
        rows[0]["final_score"] = "99.0"  # a label change: the label table must be rewritten
        with (root / "annotations.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        with pytest.raises(CacheError) as e:
            _extract(root, tmp_path / "cache")
        msg = str(e.value)
        assert str(p) in msg and "read-only" in msg and "writable" in msg and "--cache-root" in msg
        assert "\n" not in msg
        # a new sample (extraction, the shard's writer lock) says the same
        from test_cache_util import write_video

        write_video(root / "videos" / "c.mkv", 14, seed=2)
        with (root / "annotations.csv").open("a", newline="") as f:
            csv.writer(f).writerow(["c", "videos/c.mkv", "12.0", "3;4", "train"])
        with pytest.raises(CacheError, match="read-only.*--cache-root"):
            _extract(root, tmp_path / "cache")
    assert {f.name: f.read_bytes() for f in p.iterdir() if f.is_file()} == before
    assert open_cache(_extract(root, tmp_path / "cache")).n_rows == 3  # writable again: it goes on


def test_disk_full_during_merge_or_staging_is_one_line_and_a_rerun_recovers(tmp_path, monkeypatch):
    """ENOSPC while the store is written under its temporary name, or while a row is staged: one
    CacheError naming the file, the bytes and the fix; the partial store is removed, the store in
    place and the staged rows stay, and a rerun once there is room gives the clean cache."""
    import errno

    from udaqa_pipeline.cache import store as store_mod
    from udaqa_pipeline.cache import staging as staging_mod
    from udaqa_pipeline.cache.manifest import CacheError, storage_error

    vids = {"a": 14, "b": 14, "c": 14}
    clean = _extract(make_dataset(tmp_path / "clean-data", vids), tmp_path / "clean")
    root = make_dataset(tmp_path / "data", {"a": 14, "b": 14})
    p = _extract(root, tmp_path / "cache")
    before = (p / "features.h5").read_bytes()
    _add_sample(root, "c", 2, 14)  # as make_dataset(root, vids) would, without rewriting a and b

    real_write, calls = store_mod._H5Writer.write, []

    def full_disk(self, name, index, value):
        calls.append(name)
        if len(calls) > 3:  # mid-write: some rows are in the partial store already
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, name, index, value)

    with monkeypatch.context() as m:
        m.setattr(store_mod._H5Writer, "write", full_disk)
        with pytest.raises(CacheError) as e:
            _extract(root, tmp_path / "cache")
    msg = str(e.value)
    assert "no space left" in msg and "features.h5.partial" in msg and "MB needed" in msg
    assert "--cache-root" in msg and "\n" not in msg
    assert not (p / "features.h5.partial").exists() and (p / "features.h5").read_bytes() == before
    assert len(list((p / STAGING).rglob("*.npz"))) == 1  # c's row, extracted once, kept
    stats: dict = {}
    _extract(root, tmp_path / "cache", stats=stats)
    assert stats["processed"] == 0  # nothing extracted again: the staged row is merged
    _same_cache(p, clean)

    # the disk fills while rows are staged: the rows staged before stay, the rerun extracts the rest
    root2 = make_dataset(tmp_path / "data2", vids)
    real_atomic, n = staging_mod.atomic_write_bytes, []

    def full_staging(path, data):
        n.append(path)
        if len(n) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_atomic(path, data)

    with monkeypatch.context() as m:
        m.setattr(staging_mod, "atomic_write_bytes", full_staging)
        with pytest.raises(CacheError, match=r"no space left writing .*staging.*\.npz.*MB needed.*--cache-root"):
            _extract(root2, tmp_path / "cache2")
    q = next((tmp_path / "cache2").iterdir())
    staged = len(list((q / STAGING).rglob("*.npz")))  # the rows whose write went through (queued ones too)
    assert 1 <= staged < 3 and not list((q / STAGING).rglob("*.tmp"))
    stats = {}
    _same_cache(_extract(root2, tmp_path / "cache2", stats=stats), clean)
    assert stats["processed"] == 3 - staged
    # h5py reports the errno in its message only; a quota is the same kind
    h5 = OSError("Can't synchronously write data (file write failed: time = x, filename = 'f', errno = 28, "
                 "error message = 'No space left on device')")
    assert "no space left" in str(storage_error(h5, tmp_path / "f", 2_000_000))
    assert "2.0 MB needed" in str(storage_error(OSError(errno.EDQUOT, "quota"), tmp_path / "f", 2_000_000))
    assert storage_error(OSError(errno.EIO, "io"), tmp_path / "f") is None  # anything else keeps its traceback
