"""The cache manifest: what a cache holds, how it was made, and the hash that names its directory.

A cache directory is ``<cache_root>/<dataset>-<config_hash>/`` holding ``manifest.json``, the label
table ``samples.parquet``, the store row table ``rows.parquet`` and one or both stores
(``features.h5``, ``features.zarr/``). The hash covers everything that changes the stored numbers and
nothing else (see :func:`extraction_key`): a changed setting never mixes with old features, an
unchanged one finds and reuses its directory, and a changed label, fold or group reuses it too (the
label table is refreshed, see :mod:`.plan`). Settings that do not change the numbers (backend, batch
size, workers, device) are recorded in ``extraction`` but not hashed.

Schema versions: 2 (this code) keys the directory by the feature settings alone; 1 (before labels
left the key) hashed the sample list and its labels too (:func:`.legacy.legacy_key`). Both are read;
a version-1 cache whose feature settings match is adopted by ``features`` (:mod:`.legacy`).

Every manifest write is atomic (temporary file, fsync, ``os.replace``): a kill at any moment
leaves the previous manifest or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from ..config import Config, config_hash
from ..errors import UdaqaError
from ..fileutil import atomic_write_bytes

#: Bumped whenever the on-disk layout changes; readers refuse versions outside :data:`READABLE_SCHEMAS`.
SCHEMA_VERSION = 2
#: Version 1: one store row per label row, the label table inside the hash (still opened, and adopted).
LEGACY_SCHEMA = 1
READABLE_SCHEMAS = (LEGACY_SCHEMA, SCHEMA_VERSION)
MANIFEST = "manifest.json"
#: The label table: one row per sample of the annotation files (refreshed by every ``features`` run).
SAMPLES = "samples.parquet"
#: The store row table: one row per extracted (source, frame window), in store order.
ROWS = "rows.parquet"
#: Store file/folder name per backend, inside the cache directory.
STORE_NAMES = {"hdf5": "features.h5", "zarr": "features.zarr"}
FEATURE_DIM = 1024


class CacheError(UdaqaError, RuntimeError):
    """A cache that cannot be used as asked; the message names the directory and the fix."""


#: errno values of a write the storage refuses, as opposed to a bug: a full disk or quota, a
#: read-only mount or a folder the process may not write.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def storage_error(exc: BaseException, path: str | Path, needed: int | None = None,
                  what: str = "cache") -> CacheError | None:
    """The one-line :class:`CacheError` for a write to ``path`` that the storage refused (``exc`` an
    ``OSError`` of :data:`NO_SPACE` or :data:`NOT_WRITABLE`, also when wrapped, as h5py does), else
    ``None`` (the caller re-raises ``exc``). ``needed``: the bytes the write takes, when known."""
    code = getattr(exc, "errno", None)
    if code not in NO_SPACE | NOT_WRITABLE:
        cause = exc.__cause__ or exc.__context__
        code = getattr(cause, "errno", None)
        if code not in NO_SPACE | NOT_WRITABLE:
            text = str(exc)  # h5py reports the errno only in its message
            code = next((c for c in NO_SPACE | NOT_WRITABLE if f"errno = {c}," in text or f"[Errno {c}]" in text), None)
    if code is None:
        return None
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if code in NO_SPACE:
        need = f", {needed / 1e6:.1f} MB needed" if needed else ""
        return CacheError(f"no space left writing {path} ({os.strerror(code)}{need}); free space on that disk and "
                          f"rerun the same command (what is staged is kept), or pass --cache-root DIR on a disk with "
                          f"room")
    return CacheError(f"cannot write {path} ({os.strerror(code)}): the {what} directory {folder} is read-only "
                      f"for this process; make it writable, or pass --cache-root DIR (a writable folder) to build the "
                      f"{what} there")


def write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Atomically (re)write ``manifest.json`` in ``cache_dir``."""
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
    try:
        atomic_write_bytes(Path(cache_dir) / MANIFEST, text.encode())
    except OSError as e:
        raise (storage_error(e, Path(cache_dir) / MANIFEST) or e) from None


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """Read ``manifest.json``; :class:`CacheError` when missing, unreadable or of another schema."""
    p = Path(cache_dir) / MANIFEST
    if not p.is_file():
        raise CacheError(
            f"{cache_dir} is not a feature cache (no {MANIFEST}); build one with "
            f"`make features DATASET=...` or `udaqa-pipeline features DATASET --root DIR`"
        )
    try:
        manifest = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"{p} is unreadable ({e}); delete {cache_dir} and rebuild the cache") from e
    version = manifest.get("schema_version")
    if version not in READABLE_SCHEMAS:
        raise CacheError(
            f"{p} has schema version {version!r}, this code reads {' and '.join(map(str, READABLE_SCHEMAS))}; "
            f"rebuild the cache with this version (`udaqa-pipeline features {manifest.get('dataset', 'DATASET')} ...`)"
        )
    return manifest


#: ``[frames]`` keys outside the cache key: they select samples, they do not change a sample's numbers.
NOT_HASHED_FRAMES = ("damaged",)


def extraction_key(
    *,
    dataset: str,
    cfg: Config,
    views: list[dict[str, Any]],
    dtype: str,
    weights_sha256: str,
) -> dict[str, Any]:
    """The object whose hash names the cache: everything that changes the stored numbers.

    - ``frames`` (L, short-video policy, ...), ``clips`` (layout, K, clip length) and
      ``preprocess`` (resize, crop, normalisation) sections of the stage config, whole but for
      :data:`NOT_HASHED_FRAMES` (``frames.damaged`` decides whether a damaged window is kept, not
      what any kept window's numbers are).
    - ``video_size`` (the downsampled video), the feature ``views`` (flip/shift of each), the
      compute ``dtype`` (bf16 autocast changes the features) and the I3D ``weights_sha256``.

    Not in it: the samples. Which videos a cache holds is its row table (each row keyed by its source
    relative to the dataset root, its frame window and the source's size, :func:`.plan.row_identity`),
    and labels, folds, groups and judge panels are its label table; both change without a new
    directory (the schema-1 key, which hashed the samples too, is :func:`.legacy.legacy_key`).
    """
    return {"schema_version": SCHEMA_VERSION, **_feature_settings(dataset, cfg, views, dtype, weights_sha256)}


def _feature_settings(dataset: str, cfg: Config, views: list[dict[str, Any]], dtype: str,
                      weights_sha256: str) -> dict[str, Any]:
    saved = cfg.to_dict()
    return {
        "dataset": dataset,
        "frames": {k: v for k, v in saved["frames"].items() if k not in NOT_HASHED_FRAMES},
        "clips": saved["clips"],
        "preprocess": saved["preprocess"],
        "video_size": saved["cache"]["video_size"],
        "views": views,
        "dtype": dtype,
        "weights_sha256": weights_sha256,
    }


def feature_settings(key: dict[str, Any]) -> dict[str, Any]:
    """The feature settings of a recorded key of either schema (without ``schema_version`` and the
    schema-1 ``samples``), JSON-normalised so that a key read from a manifest compares equal to one
    computed from a config."""
    out = {k: v for k, v in key.items() if k not in ("schema_version", "samples")}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def key_hash(key: dict[str, Any]) -> str:
    """The 12-hex-digit hash of :func:`extraction_key` (``config.config_hash``)."""
    return config_hash(key)
