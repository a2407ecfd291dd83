"""Stores, manifest, verify, lock and shard arithmetic, on caches written straight from arrays."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from udaqa_pipeline.cache import CacheError, find_cache, open_cache, write_cache
from udaqa_pipeline.features import apply_view, make_views, shift_frames
from udaqa_pipeline.cache.lock import CacheLock, CacheLockedError, read_lock
from udaqa_pipeline.cache.manifest import read_manifest, write_manifest
from udaqa_pipeline.cache.shard import Shard, parse_shard, shard_indices
from udaqa_pipeline.cache.store import add_backend, samples_table
from udaqa_pipeline.cache.verify import cache_info, verify_cache

N, V, K, L = 4, 2, 3, 5


def _arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((N, V, K, 1024)).astype(np.float32)
    feats[2] = np.nan  # a failed sample
    video = rng.integers(0, 256, (N, L, 3, 6, 7), dtype=np.uint8)
    video[2] = 0
    rows = [{"id": f"s{i}", "final_score": float(i), "judge_scores": [1.0, 2.0 + i], "fold": i % 2,
             "status": "corrupt" if i == 2 else "ok", "error": "bad" if i == 2 else ""} for i in range(N)]
    return feats, video, rows


@pytest.mark.parametrize("backend", ["hdf5", "zarr"])
def test_write_open_roundtrip(tmp_path, backend):
    feats, video, rows = _arrays()
    p = write_cache(tmp_path / "c", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2], backend=backend,
                    dataset="toy", views=make_views(V))
    c = open_cache(p)
    np.testing.assert_array_equal(c.features, feats)  # NaN rows compare equal too
    np.testing.assert_array_equal(c.video, video)
    assert c.clip_starts.tolist() == [0, 1, 2]
    assert c.views == [{"flip": False, "shift": 0}, {"flip": True, "shift": 0}]
    assert c.samples.column("id").to_pylist() == ["s0", "s1", "s2", "s3"]
    assert c.samples.column("judge_scores").to_pylist()[1] == [1.0, 3.0]
    assert c.ok.tolist() == [True, True, False, True]
    np.testing.assert_array_equal(c.read(slice(1, 3))["video"], video[1:3])
    assert c.manifest["counts"] == {"ok": 3, "corrupt": 1}
    assert verify_cache(p)["ok"], verify_cache(p)["problems"]


def test_hdf5_and_zarr_identical(tmp_path):
    feats, video, rows = _arrays(1)
    p = write_cache(tmp_path / "c", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2])
    add_backend(p, "zarr")
    h, z = open_cache(p, backend="hdf5"), open_cache(p, backend="zarr")
    for name in ("features", "video"):
        a, b = getattr(h, name), getattr(z, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


def test_samples_table_rejects_unknown_and_fills_defaults():
    t = samples_table([{"id": "a"}])
    assert t.column("status").to_pylist() == ["ok"] and t.column("fold").to_pylist() == [-1]
    with pytest.raises(ValueError, match="unknown columns"):
        samples_table([{"id": "a", "scroe": 1}])


def test_open_refuses_incomplete_and_tampered(tmp_path):
    feats, video, rows = _arrays()
    p = write_cache(tmp_path / "c", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2])
    m = read_manifest(p)
    original = json.loads(json.dumps(m["hashed"]))
    m["hashed"]["config"] = {"frames": {"n_frames": 99}}  # claims other settings under the same hash
    write_manifest(p, m)
    with pytest.raises(CacheError, match="does not match"):
        open_cache(p)
    assert not verify_cache(p)["ok"]
    m["hashed"] = original
    m["complete"] = False
    write_manifest(p, m)
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(p)


def test_find_cache(tmp_path):
    with pytest.raises(CacheError, match="make features DATASET=toy"):
        find_cache("toy", tmp_path)
    feats, video, rows = _arrays()
    p = write_cache(tmp_path / "toy-abc", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2], dataset="toy")
    assert find_cache("toy", tmp_path) == p


def test_a_run_reads_the_cache_its_feature_settings_describe(tmp_path):
    """Two caches of one stage that differ in video size: a run's config picks the one it describes,
    not the newest; settings that neither has are refused, naming the setting and its two values."""
    from udaqa_pipeline import resolve
    from udaqa_pipeline.cache.manifest import extraction_key
    from udaqa_pipeline.config import resolve as resolve_config

    def cfg(size: int):
        return resolve_config("mtl", [f"cache.video_size=[{size}, {size}]"])

    feats, video, rows = _arrays()
    made = {}
    for size, when in ((64, "2026-01-01T00:00:00"), (32, "2026-01-02T00:00:00")):  # the 32 px one is newer
        c = cfg(size)
        key = extraction_key(dataset="mtl", cfg=c, views=make_views(c.cache.views, c.cache.view_shift),
                             dtype=c.cache.dtype, weights_sha256="sha")
        made[size] = write_cache(tmp_path / f"mtl-{size}", features=feats, video=video, samples=rows,
                                 clip_starts=[0, 1, 2], dataset="mtl", hashed=key, extra={"finished": when})
    assert find_cache("mtl", tmp_path) == made[32]
    assert resolve.cache_dir("mtl", cache_root=tmp_path, cfg=cfg(64)) == made[64]
    assert resolve.cache_dir("mtl", cache_root=tmp_path, cfg=cfg(32)) == made[32]
    with pytest.raises(CacheError, match=r"cache.video_size = \[32, 32\] \(this run: \[16, 16\]\).*--cache"):
        resolve.cache_dir("mtl", cache_root=tmp_path, cfg=cfg(16))


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def test_verify_catches_flipped_byte_hdf5(tmp_path):
    import h5py

    feats, video, rows = _arrays()
    p = write_cache(tmp_path / "c", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2])
    with h5py.File(p / "features.h5", "r") as f:
        info = f["features"].id.get_chunk_info(3)  # sample 3's chunk
    _flip_byte(p / "features.h5", info.byte_offset + 100)
    report = verify_cache(p)
    assert not report["ok"]
    # only the damaged chunk is reported, by sample and id
    assert len(report["problems"]) == 1, report["problems"]
    assert report["problems"][0].startswith("features.h5/features: row 3 (s3): chunk checksum")
    assert report["checked"]["features.h5"] == {"samples": 4, "bad_chunks": 1}
    with pytest.raises(CacheError, match="cache verify"):
        open_cache(p).features


def test_verify_catches_flipped_byte_zarr(tmp_path):
    feats, video, rows = _arrays()
    p = write_cache(tmp_path / "c", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2], backend="zarr")
    chunk = p / "features.zarr" / "video" / "c" / "1" / "0" / "0" / "0" / "0"
    assert chunk.is_file()
    _flip_byte(chunk, 17)
    report = verify_cache(p)
    assert not report["ok"]
    assert len(report["problems"]) == 1, report["problems"]
    assert report["problems"][0].startswith("features.zarr/video: row 1 (s1): chunk checksum")
    assert report["checked"]["features.zarr"] == {"samples": 4, "bad_chunks": 1}


def test_verify_catches_changed_samples_table(tmp_path):
    feats, video, rows = _arrays()
    p = write_cache(tmp_path / "c", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2])
    _flip_byte(p / "samples.parquet", 40)
    report = verify_cache(p)
    assert not report["ok"] and all(x.startswith("samples.parquet: ") for x in report["problems"])
    assert ("samples.parquet: sha256 differs from the one recorded in the manifest (file changed or damaged); rerun "
            "`udaqa-pipeline features` with this cache's settings to rewrite it from the annotation files"
            in report["problems"])
    assert report["checked"]["features.h5"] == {"samples": 4, "bad_chunks": 0}  # the stores are intact


def test_cache_info(tmp_path):
    feats, video, rows = _arrays()
    p = write_cache(tmp_path / "c", features=feats, video=video, samples=rows, clip_starts=[0, 1, 2])
    info = cache_info(p)
    assert info["complete"] and info["features_shape"] == [N, V, K, 1024] and info["video_shape"] == [N, L, 3, 6, 7]
    assert info["bytes_per_sample"] >= V * K * 1024 * 4 + L * 3 * 6 * 7
    json.dumps(info)


def test_views_and_shift():
    assert make_views(1) == [{"flip": False, "shift": 0}]
    assert make_views(6, 3) == [
        {"flip": False, "shift": 0}, {"flip": True, "shift": 0}, {"flip": False, "shift": 3},
        {"flip": False, "shift": -3}, {"flip": True, "shift": 3}, {"flip": True, "shift": -3},
    ]
    assert make_views(7, 2)[6] == {"flip": False, "shift": 4}
    with pytest.raises(ValueError):
        make_views(0)
    f = np.arange(5)[:, None, None, None] * np.ones((5, 2, 2, 3), np.uint8)
    assert shift_frames(f, 2)[:, 0, 0, 0].tolist() == [2, 3, 4, 4, 4]
    assert shift_frames(f, -1)[:, 0, 0, 0].tolist() == [0, 0, 1, 2, 3]
    v = np.arange(2 * 5 * 3 * 1 * 2).reshape(2, 5, 3, 1, 2).astype(np.uint8)
    out = apply_view(v, {"flip": True, "shift": 1})
    np.testing.assert_array_equal(out[:, 0], v[:, 1, :, :, ::-1])
    np.testing.assert_array_equal(out[:, 4], v[:, 4, :, :, ::-1])


def test_shards():
    assert parse_shard(None) == Shard(0, 1)
    assert parse_shard("1/3") == Shard(1, 3) and Shard(1, 3).name == "shard-1-of-3"
    for bad in ("3/3", "-1/2", "a/b", "1"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    parts = [shard_indices(10, Shard(i, 3)) for i in range(3)]
    assert sorted(sum(parts, [])) == list(range(10)) and parts[1] == [1, 4, 7]


def test_lock_refuses_second_writer_and_takes_over_stale(tmp_path):
    lockfile = tmp_path / "writer.lock"
    with CacheLock(lockfile) as first:
        assert first.previous is None
        with pytest.raises(CacheLockedError, match=rf"pid {os.getpid()} on host"):
            CacheLock(lockfile).acquire()
        assert read_lock(lockfile)["pid"] == os.getpid()
    assert read_lock(lockfile) is None  # released
    # a holder killed with SIGKILL leaves its record but not its lock: the next writer takes over
    code = (f"from udaqa_pipeline.cache.lock import CacheLock; import time; CacheLock({str(lockfile)!r}).acquire(); "
            f"print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(CacheLockedError, match=f"pid {proc.pid}"):
            CacheLock(lockfile).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.05)
    with CacheLock(lockfile) as again:
        assert again.previous["pid"] == proc.pid


def test_cache_key_covers_what_changes_numbers():
    from udaqa_pipeline.config import resolve
    from udaqa_pipeline.cache.manifest import extraction_key, key_hash

    def h(overrides=(), views=1, dtype="fp32", weights="w", **kw):
        cfg = resolve("folder", overrides, {"cache.views": views, "cache.dtype": dtype, **{f"cache.{k}": v for k, v in kw.items()}})
        return key_hash(extraction_key(dataset="folder", cfg=cfg, views=make_views(views), dtype=cfg.cache.dtype,
                                       weights_sha256=weights))

    base = h()
    assert h(backend="zarr") == base  # the store format does not change the numbers
    # labels, folds and the annotation file's options are not features: the label table refreshes instead
    assert h(["dataset.rule=identity", "dataset.annotations=other.csv"]) == base
    changed = [h(["frames.n_frames=50"]), h(["clips.n_clips=5"]), h(["preprocess.norm=imagenet"]),
               h(["cache.video_size=[32, 32]"]), h(views=2), h(dtype="bf16"), h(weights="x")]
    assert base not in changed and len(set(changed)) == len(changed)
