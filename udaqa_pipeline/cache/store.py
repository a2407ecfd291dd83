"""Feature cache stores: one logical schema, two backends (HDF5 and Zarr v3).

Layout of a cache directory (see :mod:`.manifest` for the naming hash)::

    manifest.json      schema version, dataset, config_hash + the hashed object, resolved config
    samples.parquet    one row per sample (``SAMPLE_SCHEMA``), in store order
    features.h5        HDF5 store, and/or
    features.zarr/     Zarr v3 store

Arrays in a store (N samples, V views, K clips, L frames):

- ``features`` (N, V, K, 1024) float32; rows of failed samples are NaN so accidental use is loud.
- ``video`` (N, L, 3, h, w) uint8, the view-0 video downsampled for the latent branch (zeros for
  failed samples). Apply ``views[v]`` to it with :func:`apply_view` to match feature view v.
- ``clip_starts`` (K,) int64, clip start indices into the L sampled frames.

Design choices:

- One chunk per sample (features: (1, V, K, 1024), video: (1, L, 3, h, w)), so reading one sample
  touches one chunk and a flipped byte is pinned to one sample by ``cache verify``.
- Every chunk is checksummed: HDF5 ``fletcher32``, Zarr ``crc32c`` codec. Reading a damaged chunk
  raises instead of returning wrong numbers.
- No compression: float features barely compress, small uint8 frames compress ~1.5x with generic
  lossless codecs, and whole-cache load time matters more than disk for stage two.
- Stores are written whole by :func:`write_cache` / the extraction's finalise step into a
  temporary name and renamed into place, so a store that exists is complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import cache_root as _cache_root
from ..fileutil import file_sha256
from .manifest import (
    FEATURE_DIM,
    SAMPLES,
    SCHEMA_VERSION,
    STORE_NAMES,
    CacheError,
    atomic_write_bytes,
    key_hash,
    read_manifest,
    write_manifest,
)

BACKENDS = tuple(STORE_NAMES)

#: Columns of ``samples.parquet``; the contract's columns first, then traceability columns
#: (source path, frame range and the L source-frame indices each cached frame came from).
SAMPLE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("dataset", pa.string()),
        ("action", pa.string()),
        ("group", pa.string()),
        ("difficulty", pa.float64()),
        ("judge_scores", pa.list_(pa.float64())),
        ("final_score", pa.float64()),
        ("rule", pa.string()),
        ("n_source_frames", pa.int64()),
        ("short", pa.bool_()),
        ("fold", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("source", pa.string()),
        ("frame_start", pa.int64()),
        ("frame_end", pa.int64()),
        ("frame_indices", pa.list_(pa.int64())),
    ]
)

_DEFAULTS: dict[str, Any] = {
    "dataset": "",
    "action": "",
    "group": "",
    "difficulty": None,
    "judge_scores": [],
    "final_score": float("nan"),
    "rule": "identity",
    "n_source_frames": 0,
    "short": False,
    "fold": -1,
    "status": "ok",
    "error": "",
    "source": "",
    "frame_start": None,
    "frame_end": None,
    "frame_indices": [],
}


def samples_table(rows: Sequence[Mapping[str, Any]] | pa.Table) -> pa.Table:
    """Build a ``SAMPLE_SCHEMA`` table from dict rows (missing keys take defaults, ``id`` required)."""
    if isinstance(rows, pa.Table):
        rows = rows.to_pylist()
    cols: dict[str, list] = {name: [] for name in SAMPLE_SCHEMA.names}
    for i, row in enumerate(rows):
        if "id" not in row:
            raise ValueError(f"sample row {i} has no 'id'")
        unknown = set(row) - set(cols)
        if unknown:
            raise ValueError(f"sample row {i}: unknown columns {sorted(unknown)}; known: {SAMPLE_SCHEMA.names}")
        for name in cols:
            v = row.get(name, _DEFAULTS.get(name))
            if name == "judge_scores" or name == "frame_indices":
                v = [float(x) if name == "judge_scores" else int(x) for x in (v if v is not None else [])]
            cols[name].append(v)
    return pa.table(cols, schema=SAMPLE_SCHEMA)


def apply_view(video: np.ndarray, view: Mapping[str, Any]) -> np.ndarray:
    """Apply a feature view's flip/shift to a cached view-0 video (..., L, 3, h, w).

    ``shift`` s moves the window s frames later (earlier when negative) with the edge frame
    repeated, exactly as :mod:`.extract` shifts the L sampled frames before I3D.
    """
    out = video
    s = int(view.get("shift", 0))
    if s:
        L = video.shape[-4]
        idx = np.clip(np.arange(L) + s, 0, L - 1)
        out = np.take(out, idx, axis=-4)
    if view.get("flip", False):
        out = out[..., ::-1]
    return np.ascontiguousarray(out)


# ----------------------------------------------------------------------------- backends


class _H5Writer:
    def __init__(self, path: Path, shapes: dict[str, tuple[tuple[int, ...], Any, Any]], attrs: dict[str, Any]):
        import h5py

        self.f = h5py.File(path, "w")
        for name, (shape, dtype, fill) in shapes.items():
            chunks = (1,) + tuple(shape[1:]) if name != "clip_starts" else tuple(shape) or None
            # fletcher32 needs a chunked dataset; clip_starts gets one chunk for its checksum too.
            self.f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, fletcher32=True, fillvalue=fill)
        for k, v in attrs.items():
            self.f.attrs[k] = json.dumps(v)

    def write(self, name: str, index: int | slice, value: np.ndarray) -> None:
        self.f[name][index] = value

    def close(self) -> None:
        self.f.close()


class _ZarrWriter:
    def __init__(self, path: Path, shapes: dict[str, tuple[tuple[int, ...], Any, Any]], attrs: dict[str, Any]):
        import zarr
        from zarr.codecs import Crc32cCodec

        self.g = zarr.open_group(str(path), mode="w", zarr_format=3, attributes=attrs)
        self.arrays = {}
        for name, (shape, dtype, fill) in shapes.items():
            chunks = (1,) + tuple(shape[1:]) if name != "clip_starts" else tuple(shape)
            self.arrays[name] = self.g.create_array(
                name, shape=shape, dtype=dtype, chunks=chunks, filters=None, compressors=[Crc32cCodec()],
                fill_value=fill,
            )

    def write(self, name: str, index: int | slice, value: np.ndarray) -> None:
        self.arrays[name][index] = value

    def close(self) -> None:
        pass  # zarr writes each chunk through to its file on assignment


def _open_writer(backend: str, path: Path, shapes, attrs):
    if backend == "hdf5":
        return _H5Writer(path, shapes, attrs)
    if backend == "zarr":
        return _ZarrWriter(path, shapes, attrs)
    raise CacheError(f"unknown cache backend {backend!r}; use one of {', '.join(BACKENDS)}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def write_store(
    store_path: Path,
    backend: str,
    *,
    n: int,
    n_views: int,
    n_clips: int,
    video_shape: tuple[int, int, int, int],
    clip_starts: Sequence[int],
    rows: Iterable[tuple[int, np.ndarray | None, np.ndarray | None]],
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete store at ``store_path`` from ``rows`` of (index, features (V,K,1024), video (L,3,h,w)).

    A row with ``None`` arrays (failed sample) keeps the fill values (NaN features, zero video).
    The store is written under a temporary name and renamed into place when complete.
    """
    store_path = Path(store_path)
    tmp = store_path.with_name(store_path.name + ".partial")
    _remove(tmp)
    shapes = {
        "features": ((n, n_views, n_clips, FEATURE_DIM), np.float32, np.float32(np.nan)),
        "video": ((n,) + tuple(video_shape), np.uint8, 0),
        "clip_starts": ((len(clip_starts),), np.int64, 0),
    }
    w = _open_writer(backend, tmp, shapes, dict(attrs or {}))
    try:
        if n and len(clip_starts):
            w.write("clip_starts", slice(None), np.asarray(clip_starts, dtype=np.int64))
        for i, feats, video in rows:
            if feats is not None:
                feats = np.asarray(feats, dtype=np.float32)
                if feats.shape != (n_views, n_clips, FEATURE_DIM):
                    raise ValueError(f"row {i}: features shape {feats.shape}, expected {(n_views, n_clips, FEATURE_DIM)}")
                w.write("features", i, feats)
            if video is not None:
                video = np.asarray(video)
                if video.shape != tuple(video_shape) or video.dtype != np.uint8:
                    raise ValueError(f"row {i}: video {video.shape} {video.dtype}, expected {tuple(video_shape)} uint8")
                w.write("video", i, video)
    finally:
        w.close()
    _remove(store_path)
    os.replace(tmp, store_path)
    return store_path


def read_store_arrays(store_path: Path, backend: str, names: Sequence[str], index: Any = slice(None)) -> dict[str, np.ndarray]:
    """Read arrays (all rows, or ``index``) from a store; a checksum failure raises :class:`CacheError`."""
    out: dict[str, np.ndarray] = {}
    try:
        if backend == "hdf5":
            import h5py

            with h5py.File(store_path, "r") as f:
                for name in names:
                    out[name] = f[name][index] if name != "clip_starts" else f[name][()]
        elif backend == "zarr":
            import zarr

            g = zarr.open_group(str(store_path), mode="r")
            for name in names:
                out[name] = g[name][index] if name != "clip_starts" else g[name][...]
        else:
            raise CacheError(f"unknown cache backend {backend!r}; use one of {', '.join(BACKENDS)}")
    except (OSError, ValueError, KeyError) as e:
        raise CacheError(
            f"{store_path}: cannot read {', '.join(names)} ({e}); run `udaqa-pipeline cache verify "
            f"{store_path.parent}` to locate the damage, then rebuild the cache"
        ) from e
    return out


# ----------------------------------------------------------------------------- reading


@dataclass
class FeatureCache:
    """An opened, complete cache. ``features``/``video`` load the whole array into memory on first
    access (stage two trains from memory); use :meth:`read` for a few rows."""

    path: Path
    manifest: dict[str, Any]
    samples: pa.Table
    backend: str
    clip_starts: np.ndarray
    views: list[dict[str, Any]]
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def store_path(self) -> Path:
        return self.path / STORE_NAMES[self.backend]

    @property
    def config_hash(self) -> str:
        return self.manifest["config_hash"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    def __len__(self) -> int:
        return self.samples.num_rows

    def _load(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = read_store_arrays(self.store_path, self.backend, [name])[name]
        return self._arrays[name]

    @property
    def features(self) -> np.ndarray:
        """(N, V, K, 1024) float32, NaN rows for failed samples."""
        return self._load("features")

    @property
    def video(self) -> np.ndarray:
        """(N, L, 3, h, w) uint8 view-0 downsampled video."""
        return self._load("video")

    @property
    def ok(self) -> np.ndarray:
        """Boolean mask of samples whose extraction succeeded (status ``ok``)."""
        return np.asarray(self.samples.column("status").to_pylist()) == "ok"

    def read(self, index: Any, names: Sequence[str] = ("features", "video")) -> dict[str, np.ndarray]:
        """Read only the rows ``index`` (int, slice or sorted index array) of the named arrays."""
        return read_store_arrays(self.store_path, self.backend, names, index)


def _check_manifest(path: Path, manifest: dict[str, Any], require_complete: bool) -> None:
    if require_complete and not manifest.get("complete", False):
        raise CacheError(
            f"cache {path} is incomplete (extraction still running, killed, or shards not merged); "
            f"rerun `udaqa-pipeline features {manifest.get('dataset', 'DATASET')} ...` with the same "
            f"settings to finish it, or `udaqa-pipeline cache merge {path}` after sharded runs"
        )
    key = manifest.get("hashed")
    if key is None or key_hash(key) != manifest.get("config_hash"):
        raise CacheError(
            f"cache {path}: manifest config_hash {manifest.get('config_hash')!r} does not match the hash of "
            f"its recorded settings; the manifest was edited or damaged: rebuild the cache"
        )


def open_cache(path: str | Path, *, backend: str | None = None, require_complete: bool = True) -> FeatureCache:
    """Open the cache directory ``path`` (complete and self-consistent unless told otherwise).

    ``backend`` picks a store when the directory holds both; default: the manifest's ``backend``.
    Raises :class:`CacheError` (naming the directory and the fix) for a missing, incomplete,
    inconsistent or unreadable cache.
    """
    path = Path(path)
    manifest = read_manifest(path)
    _check_manifest(path, manifest, require_complete)
    stores = manifest.get("stores", {})
    backend = backend or manifest.get("backend") or next(iter(stores), None)
    if backend not in stores or not (path / stores[backend]).exists():
        have = ", ".join(b for b in stores if (path / stores[b]).exists()) or "none"
        raise CacheError(f"cache {path} has no {backend} store (present: {have}); choose --backend accordingly")
    sp = path / SAMPLES
    try:
        samples = pq.read_table(sp)
    except (OSError, pa.ArrowInvalid) as e:
        raise CacheError(f"{sp} unreadable ({e}); rerun the extraction to rebuild it") from e
    if samples.num_rows != manifest.get("n_samples"):
        raise CacheError(
            f"cache {path}: samples.parquet has {samples.num_rows} rows, manifest says "
            f"{manifest.get('n_samples')}; rebuild the cache"
        )
    return FeatureCache(
        path=path,
        manifest=manifest,
        samples=samples,
        backend=backend,
        clip_starts=np.asarray(manifest.get("clip_starts", []), dtype=np.int64),
        views=list(manifest.get("views", [{"flip": False, "shift": 0}])),
    )


def find_cache(dataset: str, cache_root: str | Path | None = None) -> Path:
    """The complete cache of ``dataset`` under the cache root (the newest when there are several).

    Raises :class:`CacheError` naming ``make features DATASET=...`` when there is none.
    """
    root = _cache_root(cache_root)
    found = []
    for d in sorted(root.glob(f"{dataset}-*")):
        try:
            m = read_manifest(d)
        except CacheError:
            continue
        if m.get("dataset") == dataset and m.get("complete"):
            found.append((m.get("finished", ""), d))
    if not found:
        raise CacheError(
            f"no complete feature cache for {dataset!r} under {root}; build one with "
            f"`make features DATASET={dataset} ROOT=/path/to/data` "
            f"(or `udaqa-pipeline features {dataset} --root /path/to/data`)"
        )
    return max(found)[1]


# ----------------------------------------------------------------------------- writing


def write_cache(
    path: str | Path,
    *,
    features: np.ndarray,
    video: np.ndarray,
    samples: Sequence[Mapping[str, Any]] | pa.Table,
    clip_starts: Sequence[int],
    views: Sequence[Mapping[str, Any]] | None = None,
    dataset: str = "synthetic",
    config: Mapping[str, Any] | None = None,
    hashed: Mapping[str, Any] | None = None,
    backend: str = "hdf5",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a complete cache directory at ``path`` straight from in-memory arrays.

    For tests, benchmarks and tools that make features some other way. ``features`` (N, V, K,
    1024) float32 (or (N, K, 1024), taken as V = 1), ``video`` (N, L, 3, h, w) uint8,
    ``samples`` dict rows or a table (see :func:`samples_table`). ``hashed`` is the object whose
    hash becomes ``config_hash`` (default: dataset, config, views, shapes). Returns ``path``.
    """
    path = Path(path)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 3:
        features = features[:, None]
    video = np.asarray(video)
    table = samples_table(samples)
    n = table.num_rows
    if features.shape[0] != n or video.shape[0] != n:
        raise ValueError(f"{n} samples but features {features.shape} and video {video.shape}")
    if features.ndim != 4 or features.shape[-1] != FEATURE_DIM or video.ndim != 5 or video.dtype != np.uint8:
        raise ValueError(f"features must be (N,V,K,{FEATURE_DIM}) and video (N,L,3,h,w) uint8; got {features.shape}, {video.shape} {video.dtype}")
    V, K = features.shape[1:3]
    views = [dict(v) for v in views] if views is not None else [{"flip": False, "shift": 0}] + [
        {"flip": True, "shift": 0} for _ in range(V - 1)
    ]
    if len(views) != V:
        raise ValueError(f"{len(views)} views given for {V} feature views")
    config = dict(config or {})
    if hashed is None:
        hashed = {"schema_version": SCHEMA_VERSION, "dataset": dataset, "config": config, "views": views,
                  "shape": [n, V, K, *video.shape[1:]]}
    hashed = json.loads(json.dumps(hashed, default=str))
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "config_hash": key_hash(hashed),
        "hashed": hashed,
        "config": config,
        "complete": False,
        "backend": backend,
        "stores": {},
        "n_samples": n,
        "n_views": V,
        "n_clips": K,
        "n_frames": int(video.shape[1]),
        "video_size": [int(video.shape[3]), int(video.shape[4])],
        "feature_dim": FEATURE_DIM,
        "clip_starts": [int(s) for s in clip_starts],
        "views": views,
        "counts": _status_counts(table),
        **dict(extra or {}),
    }
    write_manifest(path, manifest)
    write_store(
        path / STORE_NAMES[backend], backend, n=n, n_views=V, n_clips=K, video_shape=video.shape[1:],
        clip_starts=clip_starts, rows=((i, features[i], video[i]) for i in range(n)),
        attrs={"schema_version": SCHEMA_VERSION, "config_hash": manifest["config_hash"]},
    )
    write_samples(path, table)
    manifest.update(complete=True, stores={backend: STORE_NAMES[backend]},
                    files_sha256={SAMPLES: file_sha256(path / SAMPLES)})
    manifest.setdefault("finished", _now())
    write_manifest(path, manifest)
    return path


def write_samples(cache_dir: Path, table: pa.Table) -> None:
    """Atomically write ``samples.parquet``."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)  # `cache verify` checks page CRCs
    atomic_write_bytes(Path(cache_dir) / SAMPLES, sink.getvalue().to_pybytes())


def add_backend(path: str | Path, backend: str) -> Path:
    """Add a ``backend`` store to a complete cache by copying its existing store (no I3D work)."""
    cache = open_cache(path)
    if backend in cache.manifest["stores"] and (cache.path / STORE_NAMES[backend]).exists():
        return cache.path / STORE_NAMES[backend]
    m = cache.manifest
    n, V, K = m["n_samples"], m["n_views"], m["n_clips"]

    def rows() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for i in range(n):
            r = cache.read(i)
            yield i, r["features"], r["video"]

    h, w = m["video_size"]
    out = write_store(
        cache.path / STORE_NAMES[backend], backend, n=n, n_views=V, n_clips=K,
        video_shape=(m["n_frames"], 3, h, w), clip_starts=m["clip_starts"], rows=rows(),
        attrs={"schema_version": SCHEMA_VERSION, "config_hash": m["config_hash"]},
    )
    m = read_manifest(cache.path)
    m["stores"][backend] = STORE_NAMES[backend]
    write_manifest(cache.path, m)
    return out


def _status_counts(table: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in table.column("status").to_pylist():
        counts[s] = counts.get(s, 0) + 1
    return counts


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "BACKENDS", "SAMPLE_SCHEMA", "CacheError", "FeatureCache", "add_backend", "apply_view", "find_cache",
    "open_cache", "read_store_arrays", "samples_table", "write_cache", "write_samples", "write_store",
]
