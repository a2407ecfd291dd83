"""Staged rows: one atomically written ``staging/<shard>/<name>.npz`` per extracted row (features,
video and its JSON record), the unit that makes an extraction resumable after kill -9 at any moment
(see :mod:`.merge` for the commit that turns them into a store)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..fileutil import atomic_write_bytes
from .manifest import storage_error

STAGING = "staging"


def shard_dir(cache_dir: Path, shard_name: str) -> Path:
    return Path(cache_dir) / STAGING / shard_name


def write_staged(
    directory: Path,
    name: str,
    record: Mapping[str, Any],
    features: np.ndarray | None = None,
    video: np.ndarray | None = None,
) -> Path:
    """Atomically stage one extracted row as ``<directory>/<name>.npz``."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (storage_error(e, directory) or e) from None
    arrays: dict[str, np.ndarray] = {"record": np.asarray(json.dumps(dict(record), sort_keys=True))}
    if features is not None:
        arrays["features"] = np.asarray(features, dtype=np.float32)
    if video is not None:
        arrays["video"] = np.asarray(video, dtype=np.uint8)
    final = directory / f"{name}.npz"
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(final, buf.getvalue())  # the rename is what marks the row done
    except OSError as e:  # the temporary file is gone (atomic_write_bytes); rows staged before are kept
        err = storage_error(e, final, buf.getbuffer().nbytes)
        if err is None:
            raise
        raise err from None
    return final


def read_staged(path: Path) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """(record, features or None, video or None) of a staged row file."""
    with np.load(path, allow_pickle=False) as z:
        record = json.loads(str(z["record"]))
        feats = z["features"] if "features" in z.files else None
        video = z["video"] if "video" in z.files else None
    return record, feats, video


def staged_files(cache_dir: Path) -> dict[str, Path]:
    """Row name -> staged file, over every shard folder (first by sorted shard name on duplicates)."""
    out: dict[str, Path] = {}
    root = Path(cache_dir) / STAGING
    if not root.is_dir():
        return out
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in d.iterdir():
            if f.suffix == ".npz" and not f.name.startswith("."):
                out.setdefault(f.stem, f)
    return out


def cleanup_staging(cache_dir: Path) -> None:
    shutil.rmtree(Path(cache_dir) / STAGING, ignore_errors=True)


def drop_failed_staged(cache_dir: Path) -> int:
    """Delete the staged records of failed rows so that the next run extracts them again."""
    n = 0
    for f in staged_files(cache_dir).values():
        record, _, _ = read_staged(f)
        if record.get("status") != "ok":
            f.unlink(missing_ok=True)
            n += 1
    return n
