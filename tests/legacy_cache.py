"""Fixture generator (no tests here): a feature cache laid out exactly as stage one wrote it before
labels left the cache key (schema 1, up to commit a490347).

Schema 1: the directory is named by a hash that includes a fingerprint of the sample list and its
labels (:func:`udaqa_pipeline.cache.legacy.legacy_key`); ``samples.parquet`` is one row per store
row, in store order, without ``feature_row``; there is no ``rows.parquet``; the manifest has no
``n_rows``/``labels``. The manifest fields and their values below are those the old
``extract_features`` wrote (checked against a cache made by that code: same directory name, same
``samples.parquet`` rows, same features).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from udaqa_pipeline.config import Config
from udaqa_pipeline.cache.legacy import legacy_key, samples_fingerprint
from udaqa_pipeline.features import layout_of, make_views
from udaqa_pipeline.cache.manifest import STORE_NAMES, key_hash, write_manifest
from udaqa_pipeline.cache.store import write_store
from udaqa_pipeline.fileutil import file_sha256

#: ``samples.parquet`` columns of schema 1 (today's ``SAMPLE_SCHEMA`` without ``feature_row``).
LEGACY_SAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()), ("dataset", pa.string()), ("action", pa.string()), ("group", pa.string()),
    ("difficulty", pa.float64()), ("judge_scores", pa.list_(pa.float64())), ("final_score", pa.float64()),
    ("rule", pa.string()), ("n_source_frames", pa.int64()), ("short", pa.bool_()), ("fold", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("source", pa.string()), ("frame_start", pa.int64()),
    ("frame_end", pa.int64()), ("frame_indices", pa.list_(pa.int64())),
])


def write_legacy_cache(
    cache_root: Path,
    stage: str,
    cfg: Config,
    rows: Sequence[Mapping[str, Any]],
    features: np.ndarray,
    video: np.ndarray,
    *,
    weights_sha256: str,
    root: Path,
    batch_size: int,
    backend: str = "hdf5",
    stopped_after: Sequence[int] | None = None,
) -> Path:
    """Write ``<cache_root>/<stage>-<schema-1 hash>/`` holding ``rows`` (label rows with their
    extraction columns: ``base_rows`` + status, error, n_source_frames, short, frame_indices) and
    their ``features`` (N, V, K, 1024) / ``video`` (N, L, 3, h, w), as the old code did; returns it.

    ``stopped_after``: the sample indices staged when the old extraction was stopped (killed): the
    cache is left incomplete, with ``samples_base.parquet`` and ``staging/shard-0-of-1/<index:07d>.npz``."""
    c = cfg.cache
    old_config = cfg.to_dict()
    del old_config["frames"]["damaged"]  # the old code had no such key
    views = make_views(c.views, c.view_shift)
    layout = layout_of(cfg)
    key = legacy_key(dataset=stage, cfg=cfg, views=views, dtype=c.dtype, weights_sha256=weights_sha256,
                     samples_fingerprint=samples_fingerprint(rows))
    chash = key_hash(key)
    d = Path(cache_root) / f"{stage}-{chash}"
    d.mkdir(parents=True)
    h, w = (int(x) for x in c.video_size)
    manifest = {
        "schema_version": 1, "dataset": stage, "adapter": cfg.dataset.name,
        "config_hash": chash, "hashed": key, "config": old_config, "complete": False, "backend": backend,
        "stores": {}, "n_samples": len(rows), "n_views": len(views), "n_clips": len(layout.starts),
        "clip_len": layout.clip_len, "n_frames": layout.n_frames, "clip_layout": layout.kind,
        "clip_starts": list(layout.starts), "video_size": [h, w], "feature_dim": 1024,
        "views": views, "weights_sha256": weights_sha256, "dtype": c.dtype, "root": str(root),
        "extraction": {"batch_size": batch_size, "device": "cpu", "torch": torch.__version__,
                       "torch_threads": torch.get_num_threads(), "started": "2026-01-01T00:00:00+00:00"},
    }
    write_manifest(d, manifest)
    if stopped_after is not None:
        base = [{**{k: r.get(k) for k in LEGACY_SAMPLE_SCHEMA.names}, "status": "pending", "error": "",
                 "n_source_frames": 0, "short": False, "frame_indices": []} for r in rows]
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(base, schema=LEGACY_SAMPLE_SCHEMA), sink)
        (d / "samples_base.parquet").write_bytes(sink.getvalue().to_pybytes())
        staging = d / "staging" / "shard-0-of-1"
        staging.mkdir(parents=True)
        for i in stopped_after:
            r = rows[i]
            record = {k: r[k] for k in ("id", "status", "error", "n_source_frames", "short", "frame_indices")}
            arrays = {"record": np.asarray(json.dumps(record, sort_keys=True))}
            if r["status"] == "ok":
                arrays.update(features=np.asarray(features[i], np.float32), video=np.asarray(video[i], np.uint8))
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            (staging / f"{i:07d}.npz").write_bytes(buf.getvalue())
        return d
    write_store(d / STORE_NAMES[backend], backend, n=len(rows), n_views=len(views), n_clips=len(layout.starts),
                video_shape=(layout.n_frames, 3, h, w), clip_starts=layout.starts,
                rows=((i, features[i] if r["status"] == "ok" else None, video[i] if r["status"] == "ok" else None)
                      for i, r in enumerate(rows)),
                attrs={"schema_version": 1, "config_hash": chash})
    table = pa.Table.from_pylist([{k: r.get(k) for k in LEGACY_SAMPLE_SCHEMA.names} for r in rows],
                                 schema=LEGACY_SAMPLE_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)
    (d / "samples.parquet").write_bytes(sink.getvalue().to_pybytes())
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    manifest.update(complete=True, stores={backend: STORE_NAMES[backend]}, counts=counts,
                    finished="2026-01-01T00:00:01+00:00",
                    files_sha256={"samples.parquet": file_sha256(d / "samples.parquet")})
    write_manifest(d, manifest)
    return d
