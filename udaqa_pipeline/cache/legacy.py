"""Schema-1 caches (named by a key that hashed the samples and their labels too,
:func:`.manifest.legacy_key`): the one place that finds them and reads the rows a newer cache adopts
from them, so that the plan (:func:`.plan.build_plan`, through its ``legacy`` callable) and the
commit (:mod:`.merge`) never look inside one themselves.

A schema-1 cache with the same feature settings and the same dataset root is *adopted*: its ``ok``
rows (or, for an extraction that was stopped, its ``ok`` staged samples) are copied into the new
cache instead of being extracted again; the old directory is left as it was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq

from ..config import Config
from .manifest import (LEGACY_SCHEMA, MANIFEST, SAMPLES, STORE_NAMES, CacheError, extraction_key, feature_settings,
                       read_manifest)
from .staging import read_staged, staged_files
from .store import StoreReader

#: A stopped schema-1 extraction's sample list (its staged files are numbered by index into it).
LEGACY_BASE = "samples_base.parquet"


def legacy_key(*, dataset: str, cfg: Config, views: list[dict[str, Any]], dtype: str, weights_sha256: str,
               samples_fingerprint: str) -> dict[str, Any]:
    """The schema-1 key, byte for byte: the feature settings of :func:`.manifest.extraction_key` plus
    ``samples``, a fingerprint of the ids, sources, frame ranges and labels of the extracted samples
    (so a changed label got a new cache). Fine-tuning still names its frame data with it."""
    key = extraction_key(dataset=dataset, cfg=cfg, views=views, dtype=dtype, weights_sha256=weights_sha256)
    return {**key, "schema_version": LEGACY_SCHEMA, "samples": samples_fingerprint}


def samples_fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    """The schema-1 cache key's fingerprint of label rows (ids, sources, windows, labels); fine-tuning
    still names its frame data with it (:func:`legacy_key`)."""
    keys = ("id", "source", "frame_start", "frame_end", "final_score", "judge_scores", "difficulty", "rule",
            "action", "group", "fold")
    blob = json.dumps([[r[k] for k in keys] for r in rows], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Legacy:
    """A schema-1 cache with this cache's feature settings: its ok rows by (source, start, end)
    (store rows of a complete one; staged samples, by their index, of one whose extraction was
    stopped: in schema 1 both are numbered by the sample's index)."""

    path: Path
    by_window: dict[tuple, int]


def find_legacy(cache_root: Path, stage: str, key: Mapping[str, Any], root: Path,
                log: Callable[[str], None] | None = None) -> list[Legacy]:
    """The schema-1 caches of ``stage`` under ``cache_root`` whose recorded feature settings
    (everything but the sample fingerprint) equal ``key``'s and whose dataset root is ``root``; newest
    first. Complete ones offer their ok store rows, stopped ones (killed, or still being written by
    the code before this change) their ok staged samples. One of another root is named through
    ``log`` and skipped: other data can sit under the same relative paths, and schema 1 recorded no
    source stamps to tell."""
    want = feature_settings(dict(key))
    found: list[tuple[str, Legacy]] = []
    for d in sorted(Path(cache_root).glob(f"{stage}-*")):
        if not (d / MANIFEST).is_file():
            continue
        try:
            m = read_manifest(d)
        except CacheError:
            continue
        if m.get("schema_version") != LEGACY_SCHEMA or m.get("dataset") != stage:
            continue
        if feature_settings(m.get("hashed") or {}) != want:
            continue
        if not _same_root(m.get("root"), root):
            if log is not None:
                log(f"{d}: an older cache with these feature settings, extracted from another data root "
                    f"({m.get('root')}); not reused (extract from that root to reuse it)")
            continue
        try:
            by_window = _legacy_rows(d, m)
        except (OSError, ValueError, KeyError):
            continue  # unreadable: nothing to adopt from it
        if by_window:
            found.append((str(m.get("finished", "")), Legacy(d, by_window)))
    return [lg for _, lg in sorted(found, key=lambda x: x[0], reverse=True)]


def _legacy_rows(d: Path, m: Mapping[str, Any]) -> dict[tuple, int]:
    by_window: dict[tuple, int] = {}
    if m.get("complete"):
        stores = m.get("stores", {})
        if not any((d / name).exists() for name in stores.values()):
            return by_window
        t = pq.read_table(d / SAMPLES, columns=["source", "frame_start", "frame_end", "status"]).to_pylist()
        ok = [i for i, r in enumerate(t) if r["status"] == "ok"]
    else:
        t = pq.read_table(d / LEGACY_BASE, columns=["source", "frame_start", "frame_end"]).to_pylist()
        ok = [i for i, f in sorted(legacy_staged(d).items()) if i < len(t) and read_staged(f)[0].get("status") == "ok"]
    for i in ok:
        r = t[i]
        by_window.setdefault((str(r["source"]), r["frame_start"], r["frame_end"]), i)
    return by_window


def legacy_staged(d: Path) -> dict[int, Path]:
    """Sample index -> staged file of a stopped schema-1 extraction (``staging/<shard>/<index:07d>.npz``)."""
    return {int(name): f for name, f in staged_files(d).items() if name.isdigit()}


def _same_root(recorded: Any, root: Path) -> bool:
    if not recorded:
        return False
    try:
        return Path(str(recorded)).resolve() == Path(root).resolve()
    except OSError:
        return False


class AdoptedRows:
    """Rows of a schema-1 cache being adopted, by sample index: from its store when it is complete,
    else from its staged samples (it may have been completed by older code since it was planned)."""

    def __init__(self, d: Path) -> None:
        self.path = d
        try:
            m = read_manifest(d)
            self.complete = bool(m.get("complete"))
            if self.complete:
                stores = m.get("stores", {})
                self.backend = m.get("backend") if m.get("backend") in stores else next(iter(stores))
                self.rows = pq.read_table(d / SAMPLES).to_pylist()
            else:
                self.staged = legacy_staged(d)
        except (CacheError, OSError, ValueError, StopIteration) as e:
            raise CacheError(f"{d}, whose rows this cache is adopting, cannot be read ({e}); rerun "
                             f"`udaqa-pipeline features ...` (it plans again without it)") from e
        self._reader: StoreReader | None = None

    def _staged(self, i: int) -> Path:
        if i not in self.staged:
            raise CacheError(f"{self.path} no longer holds sample {i} that this cache is adopting; rerun "
                             f"`udaqa-pipeline features ...` (it plans again)")
        return self.staged[i]

    def record(self, i: int) -> dict[str, Any]:
        return self.rows[i] if self.complete else read_staged(self._staged(i))[0]

    def row(self, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if not self.complete:
            return read_staged(self._staged(i))[1:]
        if self._reader is None:
            self._reader = StoreReader(self.path / STORE_NAMES[self.backend], self.backend)
        return self._reader.row(i)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def adopted(cache_dir: Path, name: str, memo: dict) -> AdoptedRows:
    """The rows of schema-1 cache ``name`` (beside ``cache_dir``) being adopted, opened once per ``memo``."""
    if name not in memo:
        memo[name] = AdoptedRows(cache_dir.parent / name)
    return memo[name]
