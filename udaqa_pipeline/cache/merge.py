"""Staging of finished samples, and the commit that turns a plan and its staged samples into the
cache's store, row table, label table and manifest.

Why staging: an HDF5 file killed mid-write can lose its whole B-tree, and "nothing lost" must hold
for kill -9 at any moment. So extraction never writes into a store. Each extracted row (success or
failure) becomes one file ``staging/<shard>/<name>.npz`` (``name``: :func:`.plan.row_name` of its
identity) holding its features, its video and a JSON record (id, name, status, error,
n_source_frames, short, frame indices), written to a temporary name, fsynced and renamed: the rename
is the "done" mark, so a row is either wholly staged or not at all. A rerun skips every row staged by
any shard, whatever the plan has become since (the name is the identity, not a position).

The plan (:class:`.plan.Plan`, ``staging/plan.json``) says what the next store holds: this store's
rows at their index, staged rows, rows adopted from schema-1 caches. The merge (automatic at the end of
a single-process run and of torchrun rank 0, else ``udaqa-pipeline cache merge``) commits it in this
order: the manifest marks the cache ``merging`` (and not ``complete``); each store is written whole
under a temporary name and renamed into place; then ``rows.parquet``, ``samples.parquet`` and the
manifest (``complete``, new counts), each by temporary name + rename; only then is ``staging/``
deleted. A kill anywhere before the last manifest write leaves the plan and every staged row, and
the next ``features`` run (or ``cache merge``) redoes the commit: rows of this store keep their index
in every plan, so reading them from a store that was already replaced gives the same bytes. Which
shard (or how many) staged a row does not change a byte of the result.

Until the commit starts, a cache being extended stays ``complete`` and readable as it was; a label
refresh (:func:`refresh_labels`) rewrites only ``samples.parquet`` and the manifest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np
import pyarrow.parquet as pq

from ..fileutil import atomic_write_bytes, file_sha256
from .lock import CacheLock
from .manifest import ROWS, SAMPLES, STORE_NAMES, CacheError, read_manifest, storage_error, write_manifest
from .legacy import AdoptedRows, adopted
from .plan import JOB, SELF, Plan, label_table_rows, labels_hash
from .staging import STAGING, cleanup_staging, read_staged, shard_dir, staged_files
from .store import (
    EXTRACTION_DEFAULTS,
    EXTRACTION_COLUMNS,
    StoreReader,
    now_iso,
    status_counts,
    rows_table,
    samples_table,
    write_rows,
    write_samples,
    write_store,
)

PLAN = "plan.json"


def write_plan(cache_dir: Path, plan: Plan) -> None:
    target = Path(cache_dir) / STAGING / PLAN
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, plan.to_json())
    except OSError as e:
        err = storage_error(e, target)
        if err is None:
            raise
        raise err from None


def read_plan(cache_dir: Path) -> Plan | None:
    """The staged plan, or None when there is none."""
    p = Path(cache_dir) / STAGING / PLAN
    if not p.is_file():
        return None
    try:
        return Plan.from_json(p.read_bytes())
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise CacheError(f"{p} is unreadable ({e}); rerun `udaqa-pipeline features ...` with the same settings "
                         f"(it writes the plan again and keeps every staged row)") from e


def import_shards(cache_dir: Path, sources: Iterable[str | Path]) -> int:
    """Copy staged rows from other cache directories of the same settings (e.g. shards run on other
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
        for name, f in staged_files(src).items():
            if name in have:
                continue
            dst = shard_dir(cache_dir, f.parent.name)
            dst.mkdir(parents=True, exist_ok=True)
            tmp = dst / f".{f.name}.import.tmp"
            shutil.copyfile(f, tmp)
            os.replace(tmp, dst / f.name)
            copied += 1
    return copied


def missing_jobs(cache_dir: Path, plan: Plan) -> list[int]:
    """Row indices of ``plan`` to extract that no shard has staged yet."""
    have = staged_files(cache_dir)
    return [i for i in plan.jobs if plan.rows[i]["name"] not in have]


def merge_cache(cache_dir: str | Path, sources: Iterable[str | Path] = (), backend: str | None = None) -> Path:
    """Commit the staged plan (staged rows plus those of ``sources``) into the cache; returns the cache dir.

    Refuses (``CacheError``) while rows are missing, naming how many and which shards to rerun.
    A complete cache with nothing staged is left as is (a ``backend`` store it lacks is added).
    """
    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    backend = backend or manifest.get("backend", "hdf5")
    plan = read_plan(cache_dir)
    if plan is None:
        if not manifest.get("complete"):
            raise CacheError(
                f"cache {cache_dir} is incomplete and has no staged plan to merge; rerun `udaqa-pipeline features "
                f"{manifest.get('dataset', 'DATASET')} ...` with the settings it was made with")
        if backend not in manifest.get("stores", {}):
            from .store import add_backend

            add_backend(cache_dir, backend)
        cleanup_staging(cache_dir)
        return cache_dir
    with CacheLock(cache_dir / "merge.lock", "cache"):
        if sources:
            import_shards(cache_dir, sources)
        files = staged_files(cache_dir)
        missing = [i for i in plan.jobs if plan.rows[i]["name"] not in files]
        if missing:
            shards = sorted({f.parent.name for f in files.values()})
            raise CacheError(
                f"cache {cache_dir}: {len(missing)} of {len(plan.jobs)} samples to extract are not extracted yet "
                f"(first: {', '.join(plan.rows[i]['id'] for i in missing[:5])}); staged shards: "
                f"{', '.join(shards) or 'none'}. Rerun the unfinished extraction (same settings; `--shard i/n` for "
                f"each unfinished shard), or copy their cache folders here and "
                f"`udaqa-pipeline cache merge {cache_dir} OTHER_DIRS...`"
            )
        _commit(cache_dir, read_manifest(cache_dir), plan, files, backend)
    cleanup_staging(cache_dir)
    return cache_dir


def refresh_labels(cache_dir: Path, plan: Plan) -> bool:
    """Commit a plan that changes no store row: rewrite the label table (and the manifest) when it
    differs from the one on disk. Returns whether anything was written."""
    assert not plan.store_work, "refresh_labels commits label-only plans"
    cache_dir = Path(cache_dir)
    if _labels_current(cache_dir, plan, read_manifest(cache_dir)):
        return False  # nothing to write, so no write lock: a reuse run works on a read-only cache
    with CacheLock(cache_dir / "merge.lock", "cache"):
        manifest = read_manifest(cache_dir)
        if _labels_current(cache_dir, plan, manifest):  # another writer refreshed them meanwhile
            return False
        _commit(cache_dir, manifest, plan, {}, manifest.get("backend", "hdf5"))
    return True


def _labels_current(cache_dir: Path, plan: Plan, manifest: Mapping[str, Any]) -> bool:
    """Whether the complete cache's label table on disk is the one ``plan`` would write."""
    records = existing_rows(cache_dir, manifest)
    new = samples_table(label_table_rows(plan.samples, records))
    try:
        unchanged = new.equals(pq.read_table(cache_dir / SAMPLES))
    except (OSError, ValueError):
        unchanged = False
    return bool(unchanged and manifest.get("complete") and manifest.get("labels", {}).get("limit") == plan.limit
                and not plan.fingerprints_added)


def existing_rows(cache_dir: Path, manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """This store's row records (the first ``n_rows`` of ``rows.parquet``: a redone commit may find the
    next table there already, whose first rows are these)."""
    n = int(manifest.get("n_rows", 0) or 0)
    if n == 0:
        return []
    p = cache_dir / ROWS
    try:
        t = pq.read_table(p).to_pylist()
    except (OSError, ValueError) as e:
        raise CacheError(f"{p} unreadable ({e}); delete {cache_dir} and rebuild the cache") from e
    if len(t) < n:
        raise CacheError(f"{p} has {len(t)} rows, the manifest says {n}; delete {cache_dir} and rebuild the cache")
    return t[:n]


def _commit(cache_dir: Path, manifest: dict[str, Any], plan: Plan, files: Mapping[str, Path], backend: str) -> None:
    existing = existing_rows(cache_dir, manifest)
    legacy: dict[str, AdoptedRows] = {}
    records: list[dict[str, Any]] = []
    for i, r in enumerate(plan.rows):
        keep = {k: r.get(k, "") for k in ("id", "source", "frame_start", "frame_end", "stamp", "fingerprint")}
        if r["origin"] == JOB:
            rec, _, _ = read_staged(files[r["name"]])
            if rec.get("name") != r["name"]:
                raise CacheError(f"{files[r['name']]} holds row {rec.get('name')!r}, not {r['name']!r}: the staging "
                                 f"is damaged; delete {cache_dir / STAGING} and rerun the extraction")
        elif r["origin"] == SELF:
            if r["origin_row"] != i or i >= len(existing):
                raise CacheError(f"{cache_dir / STAGING / PLAN} moves store row {r['origin_row']} to {i}; "
                                 f"delete {cache_dir / STAGING} and rerun the extraction")
            rec = existing[i]
        else:
            rec = adopted(cache_dir, r["origin"], legacy).record(int(r["origin_row"]))
        # a failed row's record has no frame counts: the table defaults (0 frames, not short) as before
        records.append({**keep, **{k: rec[k] if rec.get(k) is not None else EXTRACTION_DEFAULTS[k] for k in EXTRACTION_COLUMNS}})
    label_rows = label_table_rows(plan.samples, records)
    table = samples_table(label_rows)
    stores = dict(manifest.get("stores", {}))
    if plan.store_work:
        manifest.update(merging=True, complete=False)
        write_manifest(cache_dir, manifest)
        primary = manifest.get("backend") if manifest.get("backend") in stores else next(iter(stores), None)
        try:
            for b in sorted(set(stores) | {backend}):
                _write_store(cache_dir, manifest, plan, files, b, primary, legacy)
                stores[b] = STORE_NAMES[b]
        finally:
            for lg in legacy.values():
                lg.close()
        write_rows(cache_dir, rows_table(records))
    elif plan.fingerprints_added:
        write_rows(cache_dir, rows_table(records))
    write_samples(cache_dir, table)
    now = now_iso()
    changes = plan.changes
    manifest.pop("merging", None)
    manifest.update(
        complete=True,
        backend=manifest.get("backend") if manifest.get("backend") in stores else backend,
        stores=stores,
        n_samples=table.num_rows,
        n_rows=len(records),
        counts=status_counts(table),
        updated=now,
        root=plan.root or manifest.get("root"),
        files_sha256={SAMPLES: file_sha256(cache_dir / SAMPLES), ROWS: file_sha256(cache_dir / ROWS)},
        labels={"hash": labels_hash(label_rows), "n_samples": table.num_rows, "limit": plan.limit,
                "refreshed": now, "changes": changes},
    )
    if plan.store_work:
        manifest["finished"] = now
    if plan.dataset_config:
        manifest.setdefault("config", {})["dataset"] = plan.dataset_config
    if plan.adopted:
        manifest["adopted_from"] = sorted(set(manifest.get("adopted_from", [])) | set(plan.adopted))
    write_manifest(cache_dir, manifest)


def _write_store(cache_dir: Path, manifest: Mapping[str, Any], plan: Plan, files: Mapping[str, Path], backend: str,
                 primary: str | None, legacy: dict) -> None:
    L = int(manifest["n_frames"])
    h, w = manifest["video_size"]
    own: StoreReader | None = None

    def arrays() -> Iterator[tuple[int, np.ndarray | None, np.ndarray | None]]:
        nonlocal own
        for i, r in enumerate(plan.rows):
            if r["origin"] == JOB:
                _, feats, video = read_staged(files[r["name"]])
                yield i, feats, video
            elif r["origin"] == SELF:
                if own is None:
                    own = StoreReader(cache_dir / STORE_NAMES[primary], primary)
                yield (i, *own.row(int(r["origin_row"])))
            else:
                yield (i, *adopted(cache_dir, r["origin"], legacy).row(int(r["origin_row"])))

    try:
        write_store(
            cache_dir / STORE_NAMES[backend], backend, n=len(plan.rows), n_views=int(manifest["n_views"]),
            n_clips=int(manifest["n_clips"]), video_shape=(L, 3, h, w), clip_starts=manifest["clip_starts"],
            rows=arrays(), attrs={"schema_version": manifest["schema_version"], "config_hash": manifest["config_hash"]},
        )
    finally:
        if own is not None:
            own.close()


