"""Staging of finished samples, and the merge that turns staged samples into the final store.

Why staging: an HDF5 file killed mid-write can lose its whole B-tree, and "nothing lost" must hold
for kill -9 at any moment. So extraction never writes into the final store. Each finished sample
(success or failure) becomes one file ``staging/<shard>/<index>.npz`` holding its features, its
video and a JSON record (id, status, error, n_source_frames, short, frame indices), written to a
temporary name, fsynced and renamed: the rename is the "done" mark, so a sample is either wholly
staged or not at all. A rerun skips every index staged by any shard.

The merge (automatic at the end of a single-process run and of torchrun rank 0, else
``udaqa-pipeline cache merge``) writes the store for the requested backend from the staged samples
in index order, then ``samples.parquet``, then the manifest with ``complete = true``, each by
temporary name + rename, and only then deletes ``staging/``. A kill during the merge leaves the
staging intact and the manifest incomplete, so rerunning redoes the merge. Which shard (or how
many) staged a sample does not change a byte of the result.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..fileutil import atomic_write_bytes, file_sha256
from .lock import CacheLock
from .manifest import SAMPLES, STORE_NAMES, CacheError, read_manifest, write_manifest
from .store import _now, _status_counts, samples_table, write_samples, write_store

STAGING = "staging"
BASE_SAMPLES = "samples_base.parquet"


def shard_dir(cache_dir: Path, shard_name: str) -> Path:
    return Path(cache_dir) / STAGING / shard_name


def write_staged(
    directory: Path,
    index: int,
    record: Mapping[str, Any],
    features: np.ndarray | None = None,
    video: np.ndarray | None = None,
) -> Path:
    """Atomically stage one finished sample as ``<directory>/<index:07d>.npz``."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {"record": np.asarray(json.dumps(dict(record), sort_keys=True))}
    if features is not None:
        arrays["features"] = np.asarray(features, dtype=np.float32)
    if video is not None:
        arrays["video"] = np.asarray(video, dtype=np.uint8)
    final = directory / f"{index:07d}.npz"
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(final, buf.getvalue())  # the rename is what marks the sample done
    return final


def read_staged(path: Path) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """(record, features or None, video or None) of a staged sample file."""
    with np.load(path, allow_pickle=False) as z:
        record = json.loads(str(z["record"]))
        feats = z["features"] if "features" in z.files else None
        video = z["video"] if "video" in z.files else None
    return record, feats, video


def staged_files(cache_dir: Path) -> dict[int, Path]:
    """Global index -> staged file, over every shard folder (first by sorted shard name on duplicates)."""
    out: dict[int, Path] = {}
    root = Path(cache_dir) / STAGING
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in d.iterdir():
            if f.suffix == ".npz" and f.stem.isdigit():
                out.setdefault(int(f.stem), f)
    return out


def import_shards(cache_dir: Path, sources: Iterable[str | Path]) -> int:
    """Copy staged samples from other cache directories of the same config (e.g. shards run on other
    hosts) into ``cache_dir``'s staging. Returns how many files were copied."""
    cache_dir = Path(cache_dir)
    mine = read_manifest(cache_dir)["config_hash"]
    copied = 0
    for src in sources:
        src = Path(src)
        theirs = read_manifest(src)
        if theirs.get("config_hash") != mine:
            raise CacheError(
                f"{src} was extracted with other settings (config_hash {theirs.get('config_hash')}, this cache "
                f"{mine}); only shards of the same extraction can be merged"
            )
        have = staged_files(cache_dir)
        for idx, f in staged_files(src).items():
            if idx in have:
                continue
            dst = shard_dir(cache_dir, f.parent.name)
            dst.mkdir(parents=True, exist_ok=True)
            tmp = dst / f".{f.name}.import.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst / f.name)
            copied += 1
    return copied


def missing_indices(cache_dir: Path, n: int) -> list[int]:
    have = staged_files(cache_dir)
    return [i for i in range(n) if i not in have]


def merge_cache(cache_dir: str | Path, sources: Iterable[str | Path] = (), backend: str | None = None) -> Path:
    """Merge staged samples (plus those of ``sources``) into the final store; returns the cache dir.

    Refuses (``CacheError``) while samples are missing, naming how many and which shards to rerun.
    A complete cache is left as is (its staging leftovers removed).
    """
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    backend = backend or manifest.get("backend", "hdf5")
    if manifest.get("complete") and backend in manifest.get("stores", {}):
        _cleanup(cache_dir)
        return cache_dir
    if manifest.get("complete"):
        from .store import add_backend

        add_backend(cache_dir, backend)
        return cache_dir
    with CacheLock(cache_dir / "merge.lock", "cache"):
        if sources:
            import_shards(cache_dir, sources)
        n = int(manifest["n_samples"])
        files = staged_files(cache_dir)
        missing = [i for i in range(n) if i not in files]
        base = pq.read_table(cache_dir / BASE_SAMPLES).to_pylist()
        if missing:
            shards = sorted({f.parent.name for f in files.values()})
            raise CacheError(
                f"cache {cache_dir}: {len(missing)} of {n} samples are not extracted yet (first: "
                f"{', '.join(base[i]['id'] for i in missing[:5])}); staged shards: {', '.join(shards) or 'none'}. "
                f"Rerun the unfinished extraction (same settings; `--shard i/n` for each unfinished shard), "
                f"or copy their cache folders here and `udaqa-pipeline cache merge {cache_dir} OTHER_DIRS...`"
            )
        rows = []
        for i in range(n):
            record, _, _ = read_staged(files[i])
            if record.get("id") != base[i]["id"]:
                raise CacheError(
                    f"{files[i]} holds sample {record.get('id')!r} but index {i} is {base[i]['id']!r}: the staging "
                    f"is from another sample list; delete {cache_dir / STAGING} and rerun the extraction"
                )
            row = dict(base[i])
            for k in ("status", "error", "n_source_frames", "short", "frame_indices"):
                if k in record:
                    row[k] = record[k]
            rows.append(row)
        table = samples_table(rows)
        L = int(manifest["n_frames"])
        h, w = manifest["video_size"]

        def arrays() -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
            for i in range(n):
                _, feats, video = read_staged(files[i])
                yield i, feats, video

        write_store(
            cache_dir / STORE_NAMES[backend], backend, n=n, n_views=int(manifest["n_views"]),
            n_clips=int(manifest["n_clips"]), video_shape=(L, 3, h, w), clip_starts=manifest["clip_starts"],
            rows=arrays(), attrs={"schema_version": manifest["schema_version"], "config_hash": manifest["config_hash"]},
        )
        write_samples(cache_dir, table)
        manifest = read_manifest(cache_dir)
        recorded = manifest.get("backend")
        manifest.update(
            complete=True,
            # keep the recorded default backend unless this merge wrote a different one only
            backend=recorded if recorded in manifest.get("stores", {}) else backend,
            stores={**manifest.get("stores", {}), backend: STORE_NAMES[backend]},
            counts=_status_counts(table),
            finished=_now(),
            files_sha256={SAMPLES: file_sha256(cache_dir / SAMPLES)},
        )
        write_manifest(cache_dir, manifest)
    _cleanup(cache_dir)
    return cache_dir


def _cleanup(cache_dir: Path) -> None:
    shutil.rmtree(cache_dir / STAGING, ignore_errors=True)
    (cache_dir / BASE_SAMPLES).unlink(missing_ok=True)


def drop_failed_staged(cache_dir: Path) -> int:
    """Delete the staged records of failed samples (incomplete cache) so the next run retries them."""
    n = 0
    for f in staged_files(cache_dir).values():
        record, _, _ = read_staged(f)
        if record.get("status") != "ok":
            f.unlink(missing_ok=True)
            n += 1
    return n


def unmerge_failed(cache_dir: str | Path) -> int:
    """Turn a complete cache back into staged samples minus its failed ones, so that rerunning the
    extraction retries only those (e.g. after fixing a broken video). Returns how many will be retried.

    Crash-safe in this order: stage every ok sample from the store, rewrite the base table, mark the
    manifest incomplete (atomic), then delete the stores. Killed before the manifest write, the cache
    is still complete (the next run removes the extra staging); after it, the staging is whole.
    """
    from .store import open_cache

    cache_dir = Path(cache_dir)
    with CacheLock(cache_dir / "merge.lock", "cache"):
        cache = open_cache(cache_dir)
        rows = cache.samples.to_pylist()
        failed = [i for i, r in enumerate(rows) if r["status"] != "ok"]
        if not failed:
            return 0
        out = shard_dir(cache_dir, "restaged")
        for i, r in enumerate(rows):
            if r["status"] == "ok":
                arr = cache.read(i)
                record = {k: r[k] for k in ("id", "status", "error", "n_source_frames", "short", "frame_indices")}
                write_staged(out, i, record, arr["features"], arr["video"])
        base = samples_table([{**r, "status": "pending", "error": ""} for r in rows])
        sink = pa.BufferOutputStream()
        pq.write_table(base, sink)
        atomic_write_bytes(cache_dir / BASE_SAMPLES, sink.getvalue().to_pybytes())
        manifest = read_manifest(cache_dir)
        stores = manifest.get("stores", {})
        manifest.update(complete=False, stores={})
        write_manifest(cache_dir, manifest)
        for name in stores.values():
            p = cache_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        (cache_dir / SAMPLES).unlink(missing_ok=True)
    return len(failed)
