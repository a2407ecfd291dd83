"""The cache manifest: what a cache holds, how it was made, and the hash that names its directory.

A cache directory is ``<cache_root>/<dataset>-<config_hash>/`` holding ``manifest.json``,
``samples.parquet`` and one or both stores (``features.h5``, ``features.zarr/``). The hash covers
everything that changes the stored numbers (see :func:`extraction_key`), so a changed setting never
mixes with old features and an unchanged one finds and reuses its directory. Settings that do not
change the numbers (backend, batch size, workers, device) are recorded in ``extraction`` but not
hashed.

Every manifest write is atomic (temporary file, fsync, ``os.replace``): a kill at any moment
leaves the previous manifest or the new one, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import config_hash
from ..errors import UdaqaError
from ..fileutil import atomic_write_bytes

#: Bumped whenever the on-disk layout changes; readers refuse other versions.
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SAMPLES = "samples.parquet"
#: Store file/folder name per backend, inside the cache directory.
STORE_NAMES = {"hdf5": "features.h5", "zarr": "features.zarr"}
FEATURE_DIM = 1024


class CacheError(UdaqaError, RuntimeError):
    """A cache that cannot be used as asked; the message names the directory and the fix."""


def write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    """Atomically (re)write ``manifest.json`` in ``cache_dir``."""
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(Path(cache_dir) / MANIFEST, text.encode())


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
    if version != SCHEMA_VERSION:
        raise CacheError(
            f"{p} has schema version {version!r}, this code reads {SCHEMA_VERSION}; rebuild the cache "
            f"with this version (`udaqa-pipeline features {manifest.get('dataset', 'DATASET')} ...`)"
        )
    return manifest


def extraction_key(
    *,
    dataset: str,
    cfg: dict[str, Any],
    views: list[dict[str, Any]],
    dtype: str,
    weights_sha256: str,
    samples_fingerprint: str,
) -> dict[str, Any]:
    """The object whose hash names the cache: everything that changes the stored numbers.

    - ``frames`` (L, short-video policy, ...), ``clips`` (layout, K, clip length) and
      ``preprocess`` (resize, crop, normalisation) sections of the stage config, whole: any key
      a helper adds there changes the numbers by definition.
    - ``video_size`` (the downsampled video), the feature ``views`` (flip/shift of each), the
      compute ``dtype`` (bf16 autocast changes the features) and the I3D ``weights_sha256``.
    - ``samples_fingerprint``: ids, sources relative to the dataset root, frame ranges and labels
      of the extracted samples, so a changed annotation file or ``--limit`` gets its own cache
      (the absolute root is deliberately left out: moving the data does not invalidate features).
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "frames": cfg.get("frames", {}),
        "clips": cfg.get("clips", {}),
        "preprocess": cfg.get("preprocess", {}),
        "video_size": list(cfg.get("cache", {}).get("video_size", [64, 64])),
        "views": views,
        "dtype": dtype,
        "weights_sha256": weights_sha256,
        "samples": samples_fingerprint,
    }


def key_hash(key: dict[str, Any]) -> str:
    """The 12-hex-digit hash of :func:`extraction_key` (``config.config_hash``)."""
    return config_hash(key)
