"""Feature cache stores: one logical schema, two backends (HDF5 and Zarr v3).

Layout of a cache directory (see :mod:`.manifest` for the naming hash)::

    manifest.json      schema version, dataset, config_hash + the hashed object, resolved config,
                       the label table's provenance (``labels``)
    samples.parquet    the label table: one row per sample of the annotation files (``SAMPLE_SCHEMA``),
                       in annotation order; ``feature_row`` is the store row holding its features
    rows.parquet       the store row table: one row per store row (``ROW_SCHEMA``): the source, frame
                       window and source size it was extracted from, and how extraction went
    features.h5        HDF5 store, and/or
    features.zarr/     Zarr v3 store

Arrays in a store (R store rows, V views, K clips, L frames):

- ``features`` (R, V, K, 1024) float32; rows of failed samples are NaN so accidental use is loud.
- ``video`` (R, L, 3, h, w) uint8, the view-0 video downsampled for the latent branch (zeros for
  failed samples). Apply ``views[v]`` to it with :func:`udaqa_pipeline.features.apply_view` to match feature view v.
- ``clip_starts`` (K,) int64, clip start indices into the L sampled frames.

:class:`FeatureCache` shows the store through the label table: ``features[i]`` / ``video[i]`` are
those of sample ``i`` of ``samples`` (store row ``feature_row[i]``), so stage two never sees store
rows. Usually the two orders are the same (a cache extracted in one go); they differ after samples
were added in the middle of the annotation files, removed (their store rows are kept: see
:mod:`.plan`) or point at the same source and window. A schema-1 cache has no ``rows.parquet``: its
label table is its row table, one to one.

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
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import cache_root as _cache_root
from ..fileutil import file_sha256
from .manifest import (
    FEATURE_DIM,
    LEGACY_SCHEMA,
    ROWS,
    SAMPLES,
    SCHEMA_VERSION,
    STORE_NAMES,
    CacheError,
    atomic_write_bytes,
    key_hash,
    read_manifest,
    storage_error,
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
        ("feature_row", pa.int64()),
    ]
)

#: Columns a sample row takes from its store row (how the extraction of its source went).
EXTRACTION_COLUMNS = ("status", "error", "n_source_frames", "short", "frame_indices")

#: Columns of ``rows.parquet``, one row per store row: what was extracted (``source`` relative to the
#: dataset root, frame window, ``stamp`` = the source's size when it was extracted, see
#: :func:`.plan.source_stamp`; ``fingerprint`` = its content hash, :func:`.plan.source_fingerprint`,
#: "" in caches made before it), for which sample id first, and how it went.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("frame_start", pa.int64()),
        ("frame_end", pa.int64()),
        ("stamp", pa.string()),
        ("fingerprint", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("n_source_frames", pa.int64()),
        ("short", pa.bool_()),
        ("frame_indices", pa.list_(pa.int64())),
    ]
)

EXTRACTION_DEFAULTS: dict[str, Any] = {
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
    "feature_row": None,
    "stamp": "",
    "fingerprint": "",
}


def samples_table(rows: Sequence[Mapping[str, Any]] | pa.Table) -> pa.Table:
    """Build a ``SAMPLE_SCHEMA`` table from dict rows (missing keys take defaults, ``id`` required)."""
    return _table(rows, SAMPLE_SCHEMA, "sample")


def rows_table(rows: Sequence[Mapping[str, Any]] | pa.Table) -> pa.Table:
    """Build a ``ROW_SCHEMA`` table (``rows.parquet``) from dict rows (missing keys take defaults)."""
    return _table(rows, ROW_SCHEMA, "store")


def _table(rows: Sequence[Mapping[str, Any]] | pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    if isinstance(rows, pa.Table):
        rows = rows.to_pylist()
    cols: dict[str, list] = {name: [] for name in schema.names}
    for i, row in enumerate(rows):
        if "id" not in row:
            raise ValueError(f"{what} row {i} has no 'id'")
        unknown = set(row) - set(cols)
        if unknown:
            raise ValueError(f"{what} row {i}: unknown columns {sorted(unknown)}; known: {schema.names}")
        for name in cols:
            v = row.get(name, EXTRACTION_DEFAULTS.get(name))
            if name == "judge_scores" or name == "frame_indices":
                v = [float(x) if name == "judge_scores" else int(x) for x in (v if v is not None else [])]
            cols[name].append(v)
    return pa.table(cols, schema=schema)


def rows_of_samples(samples: pa.Table) -> pa.Table:
    """The row table of a cache whose store rows are its sample rows, one to one (schema 1,
    :func:`write_cache`); ``stamp`` is unknown there ("")."""
    names = [n for n in ROW_SCHEMA.names if n in samples.column_names]
    return rows_table(samples.select(names).to_pylist())


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
    try:
        w = _open_writer(backend, tmp, shapes, dict(attrs or {}))
        try:
            _write_rows(w, n, n_views, n_clips, video_shape, clip_starts, rows)
        except BaseException:
            try:
                w.close()
            except Exception:  # noqa: BLE001 - the write failed already (a full disk fails the close too)
                pass
            raise
        w.close()
    except BaseException as e:
        # the partial store goes; the store in place and the staged rows stay for the rerun
        try:
            _remove(tmp)
        except OSError:
            pass
        needed = n * (n_views * n_clips * FEATURE_DIM * 4 + int(np.prod(video_shape)))
        err = storage_error(e, tmp, needed) if isinstance(e, Exception) else None
        if err is None:
            raise
        raise err from None
    _remove(store_path)
    os.replace(tmp, store_path)
    return store_path


def _write_rows(w: Any, n: int, n_views: int, n_clips: int, video_shape: tuple[int, int, int, int],
                clip_starts: Sequence[int], rows: Iterable[tuple[int, np.ndarray | None, np.ndarray | None]]) -> None:
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
                if name == "clip_starts":
                    out[name] = g[name][...]
                elif isinstance(index, list):  # increasing row indices
                    out[name] = g[name].oindex[np.asarray(index, dtype=np.int64)]
                else:
                    out[name] = g[name][index]
        else:
            raise CacheError(f"unknown cache backend {backend!r}; use one of {', '.join(BACKENDS)}")
    except (OSError, ValueError, KeyError) as e:
        raise CacheError(
            f"{store_path}: cannot read {', '.join(names)} ({e}); run `udaqa-pipeline cache verify "
            f"{store_path.parent}` to locate the damage, then rebuild the cache"
        ) from e
    return out


class StoreReader:
    """One store held open while rows are read one at a time (merges, :func:`add_backend`):
    ``reader.row(i)`` -> (features (V, K, 1024), video (L, 3, h, w)). A checksum failure raises
    :class:`CacheError` naming the store and the row."""

    def __init__(self, store_path: Path, backend: str) -> None:
        self.path = Path(store_path)
        self._h5 = None
        try:
            if backend == "hdf5":
                import h5py

                self._h5 = h5py.File(self.path, "r")
                self._arrays = (self._h5["features"], self._h5["video"])
            elif backend == "zarr":
                import zarr

                g = zarr.open_group(str(self.path), mode="r")
                self._arrays = (g["features"], g["video"])
            else:
                raise CacheError(f"unknown cache backend {backend!r}; use one of {', '.join(BACKENDS)}")
        except (OSError, KeyError, ValueError) as e:
            self.close()
            raise CacheError(f"{self.path}: cannot open the store ({e}); run `udaqa-pipeline cache verify "
                             f"{self.path.parent}`, or delete {self.path.parent} and rebuild the cache") from e

    def __len__(self) -> int:
        return int(self._arrays[0].shape[0])

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            return np.asarray(self._arrays[0][i]), np.asarray(self._arrays[1][i])
        except (OSError, ValueError, KeyError, IndexError) as e:
            raise CacheError(f"{self.path}: cannot read row {i} ({e}); run `udaqa-pipeline cache verify "
                             f"{self.path.parent}` to locate the damage, then rebuild the cache") from e

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- reading


@dataclass
class FeatureCache:
    """An opened, complete cache. ``features``/``video`` load the whole array into memory on first
    access (stage two trains from memory); use :meth:`read` for a few rows. Row ``i`` of
    ``features``, ``video`` and :meth:`read` is sample ``i`` of ``samples`` (the label table);
    ``rows`` is the store row table and ``store_index[i]`` the store row of sample ``i``."""

    path: Path
    manifest: dict[str, Any]
    samples: pa.Table
    backend: str
    clip_starts: np.ndarray
    views: list[dict[str, Any]]
    rows: pa.Table | None = None
    store_index: np.ndarray | None = None
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.store_index is None:
            self.store_index = np.arange(self.samples.num_rows, dtype=np.int64)
        if self.rows is None:
            self.rows = rows_of_samples(self.samples)

    @property
    def n_rows(self) -> int:
        """Rows in the store (>= the samples in the label table when samples were removed)."""
        return self.rows.num_rows

    @property
    def in_store_order(self) -> bool:
        """Sample ``i`` is store row ``i`` for every sample and every store row is a sample."""
        return len(self.store_index) == self.n_rows and bool((self.store_index == np.arange(self.n_rows)).all())

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
            whole = read_store_arrays(self.store_path, self.backend, [name])[name]
            self._arrays[name] = whole if self.in_store_order else whole[self.store_index]
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
        """Read only the samples ``index`` (int, slice or index array, into the label table) of the named arrays."""
        if self.in_store_order:
            return read_store_arrays(self.store_path, self.backend, names, index)
        rows = self.store_index[index]
        if np.ndim(rows) == 0:
            return read_store_arrays(self.store_path, self.backend, names, int(rows))
        rows = np.asarray(rows, dtype=np.int64)
        order = np.unique(rows)  # the stores read increasing, unique indices
        got = read_store_arrays(self.store_path, self.backend, names, order.tolist())
        pos = np.searchsorted(order, rows)
        return {k: (v if k == "clip_starts" else v[pos]) for k, v in got.items()}


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


def present_stores(path: Path, manifest: Mapping[str, Any]) -> list[str]:
    """The backends the manifest lists whose store is on disk."""
    return [b for b, name in manifest.get("stores", {}).items() if (Path(path) / name).exists()]


def _no_store_message(path: Path, manifest: Mapping[str, Any], backend: str | None) -> str:
    # Most commands (train, evaluate, score) have no --backend: the fix is the features command that
    # rebuilds the store, and --backend is named only where another store could serve instead.
    stage = manifest.get("dataset", "STAGE")
    have = present_stores(path, manifest)
    name = STORE_NAMES.get(backend or "", f"{backend} store")
    rerun = f"rerun `udaqa-pipeline features {stage} ...` with the settings it was made with"
    if backend in manifest.get("stores", {}):
        what = f"cache {path}: its {backend} store {path / name} is missing (deleted or moved)"
    else:
        what = f"cache {path} has no {backend} store"
    if not have:
        return f"{what} and it has no other store; {rerun}: it extracts the features again into this cache"
    other = have[0]
    return (f"{what}; its {other} store is there: {rerun} and `--backend {backend}`, which copies the {other} store "
            f"into a new {name} (no I3D work), or pass `--backend {other}` where the command takes one")


def open_cache(path: str | Path, *, backend: str | None = None, require_complete: bool = True) -> FeatureCache:
    """Open the cache directory ``path`` (complete and self-consistent unless told otherwise).

    ``backend`` picks a store when the directory holds both; default: the manifest's ``backend``.
    Raises :class:`CacheError` (naming the directory and the fix) for a missing, incomplete,
    inconsistent or unreadable cache. Caches of schema 1 (written before labels left the cache key)
    open too, their label table being their row table.
    """
    path = Path(path)
    manifest = read_manifest(path)
    _check_manifest(path, manifest, require_complete)
    stores = manifest.get("stores", {})
    backend = backend or manifest.get("backend") or next(iter(stores), None)
    if backend not in stores or not (path / stores[backend]).exists():
        raise CacheError(_no_store_message(path, manifest, backend))
    sp = path / SAMPLES
    try:
        samples = pq.read_table(sp)
    except (OSError, pa.ArrowInvalid) as e:
        raise CacheError(f"{sp} unreadable ({e}); rerun the extraction to rebuild it") from e
    rerun = (f"rerun `udaqa-pipeline features {manifest.get('dataset', 'DATASET')} ...` with the settings it was "
             f"made with (it rewrites the table from the annotation files, no I3D work)")
    if samples.num_rows != manifest.get("n_samples"):
        raise CacheError(f"cache {path}: {SAMPLES} has {samples.num_rows} rows, the manifest says "
                         f"{manifest.get('n_samples')} (a label refresh was interrupted?); {rerun}")
    rows = store_index = None
    if manifest.get("schema_version", LEGACY_SCHEMA) != LEGACY_SCHEMA:
        rp = path / ROWS
        try:
            rows = pq.read_table(rp)
        except (OSError, pa.ArrowInvalid) as e:
            raise CacheError(f"{rp} unreadable ({e}); delete {path} and rebuild the cache") from e
        n_rows = int(manifest.get("n_rows", rows.num_rows))
        if rows.num_rows != n_rows:
            raise CacheError(f"cache {path}: {ROWS} has {rows.num_rows} rows, the manifest says {n_rows}; "
                             f"delete {path} and rebuild the cache")
        col = samples.column("feature_row").to_pylist() if "feature_row" in samples.column_names else []
        if len(col) != samples.num_rows or any(r is None or not 0 <= r < n_rows for r in col):
            raise CacheError(f"cache {path}: {SAMPLES} does not map every sample to one of the {n_rows} store rows "
                             f"(column feature_row); {rerun}")
        store_index = np.asarray(col, dtype=np.int64)
    return FeatureCache(
        path=path,
        manifest=manifest,
        samples=samples,
        backend=backend,
        clip_starts=np.asarray(manifest.get("clip_starts", []), dtype=np.int64),
        views=list(manifest.get("views", [{"flip": False, "shift": 0}])),
        rows=rows,
        store_index=store_index,
    )


def complete_caches(dataset: str, cache_root: str | Path | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """The complete caches of ``dataset`` under the cache root with their manifests, oldest first by
    when a ``features`` run wrote them last (extraction or label refresh: manifest ``updated``, else
    ``finished``); unreadable manifests are left out."""
    found = []
    for d in sorted(_cache_root(cache_root).glob(f"{dataset}-*")):
        try:
            m = read_manifest(d)
        except CacheError:
            continue
        if m.get("dataset") == dataset and m.get("complete"):
            found.append((m.get("updated") or m.get("finished", ""), d, m))
    return [(d, m) for _, d, m in sorted(found, key=lambda t: t[:2])]


def find_cache(dataset: str, cache_root: str | Path | None = None) -> Path:
    """The complete cache of ``dataset`` under the cache root; when there are several, the one a
    ``features`` run wrote last (:func:`complete_caches`).

    Raises :class:`CacheError` naming ``make features DATASET=...`` when there is none.
    """
    root = _cache_root(cache_root)
    found = complete_caches(dataset, root)
    if not found:
        raise CacheError(
            f"no complete feature cache for {dataset!r} under {root}; build one with "
            f"`make features DATASET={dataset} ROOT=/path/to/data` "
            f"(or `udaqa-pipeline features {dataset} --root /path/to/data`)"
        )
    return found[-1][0]


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
    table = samples_table([{**r, "feature_row": i} for i, r in enumerate(table.to_pylist())])
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
        "n_rows": n,
        "n_views": V,
        "n_clips": K,
        "n_frames": int(video.shape[1]),
        "video_size": [int(video.shape[3]), int(video.shape[4])],
        "feature_dim": FEATURE_DIM,
        "clip_starts": [int(s) for s in clip_starts],
        "views": views,
        "counts": status_counts(table),
        **dict(extra or {}),
    }
    write_manifest(path, manifest)
    write_store(
        path / STORE_NAMES[backend], backend, n=n, n_views=V, n_clips=K, video_shape=video.shape[1:],
        clip_starts=clip_starts, rows=((i, features[i], video[i]) for i in range(n)),
        attrs={"schema_version": SCHEMA_VERSION, "config_hash": manifest["config_hash"]},
    )
    write_rows(path, rows_of_samples(table))
    write_samples(path, table)
    manifest.update(complete=True, stores={backend: STORE_NAMES[backend]},
                    files_sha256={SAMPLES: file_sha256(path / SAMPLES), ROWS: file_sha256(path / ROWS)})
    manifest.setdefault("finished", now_iso())
    write_manifest(path, manifest)
    return path


def write_samples(cache_dir: Path, table: pa.Table) -> None:
    """Atomically write ``samples.parquet`` (the label table)."""
    _write_parquet(Path(cache_dir) / SAMPLES, table)


def write_rows(cache_dir: Path, table: pa.Table) -> None:
    """Atomically write ``rows.parquet`` (the store row table)."""
    _write_parquet(Path(cache_dir) / ROWS, table)


def _write_parquet(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, write_page_checksum=True)  # `cache verify` checks page CRCs
    data = sink.getvalue().to_pybytes()
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise (storage_error(e, path, len(data)) or e) from None


def add_backend(path: str | Path, backend: str) -> Path:
    """Add a ``backend`` store to a complete cache by copying its existing store row by row (no I3D work)."""
    m = read_manifest(Path(path))
    source = [b for b in present_stores(Path(path), m) if b != backend]
    cache = open_cache(path, backend=source[0] if source else None)
    if backend in cache.manifest["stores"] and (cache.path / STORE_NAMES[backend]).exists():
        return cache.path / STORE_NAMES[backend]
    m = cache.manifest
    n, V, K = cache.n_rows, m["n_views"], m["n_clips"]

    h, w = m["video_size"]
    with StoreReader(cache.store_path, cache.backend) as src:
        out = write_store(
            cache.path / STORE_NAMES[backend], backend, n=n, n_views=V, n_clips=K,
            video_shape=(m["n_frames"], 3, h, w), clip_starts=m["clip_starts"],
            rows=((i, *src.row(i)) for i in range(n)),
            attrs={"schema_version": m["schema_version"], "config_hash": m["config_hash"]},
        )
    m = read_manifest(cache.path)
    m["stores"][backend] = STORE_NAMES[backend]
    write_manifest(cache.path, m)
    return out


def status_counts(table: pa.Table) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in table.column("status").to_pylist():
        counts[s] = counts.get(s, 0) + 1
    return counts


def now_iso() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "BACKENDS", "EXTRACTION_COLUMNS", "ROW_SCHEMA", "SAMPLE_SCHEMA", "CacheError", "FeatureCache", "StoreReader",
    "add_backend", "find_cache", "open_cache", "read_store_arrays", "rows_of_samples", "rows_table",
    "samples_table", "write_cache", "write_rows", "write_samples", "write_store",
]
