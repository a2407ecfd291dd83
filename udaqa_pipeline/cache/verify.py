"""``cache info`` and ``cache verify``: describe a cache, and re-read every byte of it.

:func:`cache_info` gives shapes, settings, sizes, status counts, the label table's provenance
(``labels``: when it was last refreshed from the annotation files, what changed, ``limit``), store
rows no sample uses (``unused_rows``: samples removed from the annotation files keep their features)
and, for a complete cache, the ``ok`` samples that are not plain (``padded``: short videos padded with
their last frame, with the shortest length, and frame folders whose gaps were filled from the
nearest frame).

:func:`verify_cache` checks, and reports every problem it finds (it does not stop at the first):

- the manifest parses, has this schema version, says ``complete`` and its ``config_hash`` equals
  the hash of its own recorded settings (an edited manifest cannot pass as another extraction);
- ``samples.parquet`` (the label table) and ``rows.parquet`` (the store row table, schema 2) match
  the sha256 recorded when they were written, and their page checksums; every sample points at a
  store row;
- every store listed: opens, has the manifest's shapes, and every chunk of every array reads back
  with a valid checksum (HDF5 fletcher32, Zarr crc32c), read one store row at a time so a damaged
  chunk is reported with its row index and the id it was extracted for;
- features of ``ok`` rows are finite and those of failed rows are NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..fileutil import file_sha256
from .manifest import LEGACY_SCHEMA, MANIFEST, ROWS, SAMPLES, CacheError, key_hash, read_manifest


#: Start of the ``error`` text of an ``ok`` sample whose frame folder had missing frames filled from a
#: neighbour (``frames.gap_policy = "nearest"``): the sample table has no column of its own for it.
FILLED_NOTE = "filled:"
#: Start of the ``error`` text of an ``ok`` sample kept although frames of its window decode from damaged
#: data (``frames.damaged = "keep"``).
DAMAGED_NOTE = "damaged:"


def padding_summary(cache_dir: Path) -> dict[str, Any]:
    """The ``ok`` samples that are not plain, counted apart: ``short`` (fewer source frames than the
    window, padded with the last frame) and ``filled`` (not short, frame-folder gaps filled under
    ``frames.gap_policy = "nearest"``).

    Returns ``{"short": k, "shortest_frames": m or None, "shortest_id": id or None,
    "window_frames": L, "filled": j, "damaged": d}`` (``damaged``: not short, kept with frames FFmpeg
    decoded from damaged data under ``frames.damaged = "keep"``).
    """
    m = read_manifest(cache_dir)
    cols = ["id", "status", "error", "short", "n_source_frames"]  # of the label table: the samples stage two sees
    t = [r for r in pq.read_table(cache_dir / SAMPLES, columns=cols).to_pylist() if r["status"] == "ok"]
    short = [r for r in t if r["short"]]
    low = min(short, key=lambda r: r["n_source_frames"]) if short else None
    return {"short": len(short), "shortest_frames": None if low is None else int(low["n_source_frames"]),
            "shortest_id": None if low is None else low["id"], "window_frames": m.get("n_frames"),
            "filled": sum(1 for r in t if not r["short"] and str(r["error"] or "").startswith(FILLED_NOTE)),
            "damaged": sum(1 for r in t if not r["short"] and str(r["error"] or "").startswith(DAMAGED_NOTE))}


def _dir_bytes(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def cache_info(path: str | Path) -> dict[str, Any]:
    """A JSON-able summary of a cache directory (works on incomplete caches too)."""
    path = Path(path)
    m = read_manifest(path)
    n_rows = _n_rows(m)
    info: dict[str, Any] = {
        "path": str(path),
        "dataset": m.get("dataset"),
        "config_hash": m.get("config_hash"),
        "complete": bool(m.get("complete")),
        "schema_version": m.get("schema_version"),
        "n_samples": m.get("n_samples"),
        "n_rows": n_rows,
        "counts": m.get("counts", {}),
        "labels": m.get("labels"),
        "features_shape": [n_rows, m.get("n_views"), m.get("n_clips"), m.get("feature_dim")],
        "video_shape": [n_rows, m.get("n_frames"), 3, *m.get("video_size", [])],
        "clip_starts": m.get("clip_starts"),
        "views": m.get("views"),
        "dtype": m.get("dtype"),
        "weights_sha256": m.get("weights_sha256"),
        "stores": {b: {"path": name, "bytes": _dir_bytes(path / name)} for b, name in m.get("stores", {}).items()
                   if (path / name).exists()},
        "missing_stores": [name for name in m.get("stores", {}).values() if not (path / name).exists()],
        "extraction": m.get("extraction", {}),
        "finished": m.get("finished"),
    }
    if m.get("adopted_from"):
        info["adopted_from"] = m["adopted_from"]
    if m.get("cuts"):
        from .cut import cut_info

        info["cuts"] = cut_info(path, m)
    from .staging import staged_files

    staged = len(staged_files(path))
    if staged or not info["complete"]:
        info["staged"] = staged  # extracted rows waiting for the merge
    if info["complete"] and (path / SAMPLES).exists():
        info["padded"] = padding_summary(path)  # ok samples that are short (padded) or gap-filled, counted apart
        if m.get("schema_version") != LEGACY_SCHEMA:
            used = set(pq.read_table(path / SAMPLES, columns=["feature_row"]).column(0).to_pylist())
            info["unused_rows"] = n_rows - len(used)  # rows of samples no longer in the annotation files
    total = sum(s["bytes"] for s in info["stores"].values())
    if info["stores"] and n_rows:
        info["bytes_per_sample"] = round(total / len(info["stores"]) / n_rows)
    return info


def _n_rows(m: dict[str, Any]) -> int:
    """Store rows: ``n_rows`` (schema 2), else one per sample (schema 1)."""
    return int(m.get("n_rows", m.get("n_samples") or 0) or 0)


def verify_cache(path: str | Path) -> dict[str, Any]:
    """Re-read a whole cache; returns {"path", "ok": bool, "problems": [str], "checked": {...}}."""
    path = Path(path)
    problems: list[str] = []
    checked: dict[str, Any] = {}
    try:
        m = read_manifest(path)
    except CacheError as e:
        return {"path": str(path), "ok": False, "problems": [str(e)], "checked": checked}
    if not m.get("complete"):
        problems.append(f"{MANIFEST}: cache is incomplete (finish the extraction or `cache merge`)")
    key = m.get("hashed")
    if key is None or key_hash(key) != m.get("config_hash"):
        problems.append(f"{MANIFEST}: config_hash {m.get('config_hash')!r} is not the hash of the recorded settings")
    elif path.name.rsplit("-", 1)[-1] != m.get("config_hash") and path.name.startswith(f"{m.get('dataset')}-"):
        problems.append(f"directory name {path.name} does not end with the manifest's config_hash {m.get('config_hash')}")
    n = _n_rows(m)
    legacy = m.get("schema_version") == LEGACY_SCHEMA
    samples = _check_table(path, SAMPLES, m, m.get("n_samples"), problems, checked)
    rows = samples if legacy else _check_table(path, ROWS, m, n, problems, checked)
    if samples is not None and not legacy:
        col = samples.column("feature_row").to_pylist() if "feature_row" in samples.column_names else []
        bad = [i for i, r in enumerate(col) if r is None or not 0 <= r < n]
        if len(col) != samples.num_rows or bad:
            problems.append(f"{SAMPLES}: {len(bad) or samples.num_rows} samples point at no store row (column "
                            f"feature_row); rerun `udaqa-pipeline features` with this cache's settings")
    status = rows.column("status").to_pylist() if rows is not None else None
    ids = rows.column("id").to_pylist() if rows is not None else [str(i) for i in range(n)]
    for backend, name in m.get("stores", {}).items():
        sp = path / name
        if not sp.exists():
            problems.append(f"{name}: listed in the manifest but missing")
            continue
        problems += _verify_store(sp, backend, m, status, ids, checked)
    if not m.get("stores"):
        problems.append("no store listed in the manifest")
    for key, e in (m.get("cuts") or {}).items():
        problems += _verify_cut(path, key, e, checked)
    return {"path": str(path), "ok": not problems, "problems": problems, "checked": checked}


def _verify_cut(path: Path, key: str, e: dict, checked: dict) -> list[str]:
    """Every row of a cut store (:mod:`.cut`) read back through its checksums, and its shape."""
    from .cut import _read_rows

    sp = path / e["store"]
    fix = f"; rerun `udaqa-pipeline features` with --set cache.cut={e['block']} after deleting {sp.name}"
    if not sp.exists():
        return [f"{e['store']}: the {key} cut is listed in the manifest but missing{fix}"]
    problems, bad = [], 0
    try:
        it = _read_rows(sp, e["backend"], range(len(e["rows"])))
        for i in range(len(e["rows"])):
            try:
                a = next(it)
            except StopIteration:
                problems.append(f"{sp.name}: {i} rows, the manifest lists {len(e['rows'])}{fix}")
                break
            except Exception as err:  # noqa: BLE001 - a checksum mismatch lands here; the generator is spent
                bad += 1
                problems.append(f"{sp.name}/cut: row {i}: chunk checksum/read error ({type(err).__name__}: {err}){fix}")
                it = _read_rows(sp, e["backend"], range(i + 1, len(e["rows"])))
                continue
            if list(a.shape) != list(e["shape"][1:]):
                problems.append(f"{sp.name}/cut: row {i} has shape {list(a.shape)}, the manifest says {e['shape'][1:]}")
    except Exception as err:  # noqa: BLE001
        return [f"{sp.name}: cannot open ({type(err).__name__}: {err}){fix}"]
    checked[sp.name] = {"rows": len(e["rows"]), "bad_chunks": bad}
    return problems


def _check_table(path: Path, name: str, m: dict, n: Any, problems: list[str], checked: dict):
    """Read ``name`` with page checksums against the recorded sha256 and row count; the table or None."""
    sp = path / name
    if not sp.exists():
        problems.append(f"{name}: missing")
        return None
    want = m.get("files_sha256", {}).get(name)
    if want and file_sha256(sp) != want:
        fix = ("; rerun `udaqa-pipeline features` with this cache's settings to rewrite it from the annotation files"
               if name == SAMPLES else "")
        problems.append(f"{name}: sha256 differs from the one recorded in the manifest (file changed or damaged){fix}")
    try:
        t = pq.read_table(sp, page_checksum_verification=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is a finding, not a crash
        problems.append(f"{name}: unreadable ({e})")
        return None
    checked[name] = t.num_rows
    if t.num_rows != n:
        problems.append(f"{name}: {t.num_rows} rows, manifest says {n}")
    return t


def _verify_store(sp: Path, backend: str, m: dict, status, ids, checked) -> list[str]:
    problems: list[str] = []
    n = _n_rows(m)
    shapes = {
        "features": (n, m["n_views"], m["n_clips"], m["feature_dim"]),
        "video": (n, m["n_frames"], 3, *m["video_size"]),
        "clip_starts": (len(m["clip_starts"]),),
    }
    try:
        if backend == "hdf5":
            import h5py

            handle = h5py.File(sp, "r")
            arrays = {k: handle[k] for k in shapes}
        else:
            import zarr

            handle = None
            g = zarr.open_group(str(sp), mode="r")
            arrays = {k: g[k] for k in shapes}
    except Exception as e:  # noqa: BLE001
        return [f"{sp.name}: cannot open ({type(e).__name__}: {e})"]
    try:
        for name, shape in shapes.items():
            if tuple(arrays[name].shape) != tuple(shape):
                problems.append(f"{sp.name}/{name}: shape {tuple(arrays[name].shape)}, manifest says {tuple(shape)}")
        try:
            cs = np.asarray(arrays["clip_starts"][...])
            if cs.tolist() != list(m["clip_starts"]):
                problems.append(f"{sp.name}/clip_starts: {cs.tolist()} differs from the manifest {m['clip_starts']}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"{sp.name}/clip_starts: checksum/read error ({e})")
        bad = 0
        what = "sample" if m.get("schema_version") == LEGACY_SCHEMA or m.get("n_rows") is None else "row"
        for i in range(min(n, arrays["features"].shape[0])):
            for name in ("features", "video"):
                try:
                    row = arrays[name][i]
                except Exception as e:  # noqa: BLE001 - fletcher32 / crc32c mismatch lands here
                    bad += 1
                    problems.append(f"{sp.name}/{name}: {what} {i} ({ids[i] if i < len(ids) else '?'}): "
                                    f"chunk checksum/read error ({type(e).__name__}: {e})")
                    continue
                if name == "features" and status is not None and i < len(status):
                    finite = bool(np.isfinite(row).all())
                    if status[i] == "ok" and not finite:
                        problems.append(f"{sp.name}/features: {what} {i} ({ids[i]}) is ok but has non-finite values")
                    if status[i] != "ok" and not bool(np.isnan(row).all()):
                        problems.append(f"{sp.name}/features: {what} {i} ({ids[i]}) failed but holds numbers")
        checked[sp.name] = {"samples": n, "bad_chunks": bad}
    finally:
        if handle is not None:
            handle.close()
    return problems
