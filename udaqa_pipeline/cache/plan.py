"""What a ``features`` run has to do to a cache: which store rows to keep, extract or adopt, and
the label table to write.

A cache holds two tables (:mod:`.store`). The **row table** (``rows.parquet``) has one row per store
row: the features of one *row identity* (:func:`identity`: the source relative to the dataset root,
the frame window, and the source's stamp). The **label table** (``samples.parquet``) has one row per
sample of the annotation files, in their order: labels, fold, group, judge panel, rule, and
``feature_row``, the store row holding its features. Labels are not in the cache key
(:func:`.manifest.extraction_key`), so every ``features`` run reads the annotation files and:

- a changed score, fold, group or judge panel rewrites the label table: no I3D work, no store write;
- a sample whose identity is not in the store yet (added to the annotation files, or its frame
  window changed) is extracted and appended as a new store row; every other row stays as it is;
- a sample removed from the annotation files leaves the label table, but its store row stays: features
  are never thrown away (put the sample back and it is reused); ``cache info`` counts such rows as
  ``unused_rows``;
- a source whose stamp changed (the file was replaced by another of another size, frames were added
  to a folder, or ``--root`` points at other data under the same relative names) is a new identity,
  extracted into a new row, the old row kept; except that a *failed* row of the same source and
  window (a missing or broken video that is now there) is re-extracted in its own place;
- ``retry_failed`` re-extracts, in place, the failed rows the label table uses;
- ``limit`` N: the label table holds the first N samples of the annotation files and only their rows
  are extracted; a later run without it extracts the rest and reuses these;
- a cache of schema 1 (written before labels left the key, so named by another hash) with the same
  feature settings and the same dataset root is *adopted*: its ``ok`` rows (or, for an extraction that
  was stopped, its ``ok`` staged samples) are copied into this cache instead of being extracted again
  (:func:`.legacy.find_legacy`); the old directory is left as it was.

Source stamp (:func:`source_stamp`): a video file's size in bytes; a frame folder's number of
entries and the sizes of its first and last entries (sorted by name); ``missing``. One stat, or one
listing and two stats, per source. It tells other data under the same relative path apart without
reading it, and moving the data does not change it (the absolute root stays out of the key).

Content fingerprint (:func:`source_fingerprint`): sha256 (16 hex digits) of a video file's bytes, or
of a frame folder's entry names, sizes and bytes. Every row records the fingerprint of the source
it was extracted from (``fingerprint`` in ``rows.parquet``), and a sample finds its row by source
relative to the root, frame window and fingerprint: an edit that keeps the size (a rotation flag
set in place, a re-encode that happens to match) is a new fingerprint and is extracted again, named
in the log; the same bytes under another root or mount are the same rows. Hashing reads every
source once (about 1 GB/s); the fingerprint is kept in ``fingerprints.json`` in the cache beside the
size and modification and change times it was taken at, so a later run only stats the sources. A row of a cache
made before fingerprints were recorded is found by its stamp as before, and gets its source's
fingerprint on its next run (said in the log); rows extracted from then on carry it in their stamp
too (``file:<bytes>|<fingerprint>``), so two contents of one size never share a row name.
A source's path relative to the root is taken as given (``root/a/b`` is ``a/b`` even when ``a`` is
a link to another disk), and only when that fails after resolving links.

:func:`build_plan` turns the existing row table and the samples into a :class:`Plan`: the next row
table, each row's ``origin`` (``self``: this store, same row; ``job``: to extract; or a schema-1
cache directory's name), and the next label table. A plan without jobs or adoptions is a label
refresh (:func:`.merge.refresh_labels`); any other is written to ``staging/plan.json`` and committed
by :func:`.merge.merge_cache` once every job is staged. Rows of this store keep their index in every
plan, which makes a merge interrupted at any point safe to redo.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..fileutil import file_sha256
from .staging import read_staged, staged_files
from .store import EXTRACTION_COLUMNS

PLAN_VERSION = 1
#: Origins of a store row in a plan (besides a schema-1 cache directory's name).
SELF, JOB = "self", "job"
#: Label-table columns whose change counts as a changed label (the rest come from the store row).
LABEL_COLUMNS = ("dataset", "action", "group", "difficulty", "judge_scores", "final_score", "rule", "fold",
                 "source", "frame_start", "frame_end", "feature_row")


# ----------------------------------------------------------------------------- identities


def source_stamp(path: str | Path, memo: dict[str, str] | None = None) -> str:
    """``file:<bytes>``, ``dir:<entries>:<first bytes>:<last bytes>`` (entries sorted by name, hidden
    ones skipped) or ``missing``; ``memo`` caches it per path within one run (many MTL-AQA samples
    share one untrimmed frame folder)."""
    key = str(path)
    if memo is not None and key in memo:
        return memo[key]
    p = Path(path)
    try:
        if p.is_dir():
            names = sorted(e.name for e in os.scandir(p) if not e.name.startswith("."))
            sizes = [(p / n).stat().st_size for n in (names[:1] + names[-1:])] if names else [0, 0]
            out = f"dir:{len(names)}:{sizes[0]}:{sizes[-1]}"
        elif p.exists():
            out = f"file:{p.stat().st_size}"
        else:
            out = "missing"
    except OSError as e:  # unreadable: a stamp of its own, so it is extracted (and fails, with the reason)
        out = f"unreadable:{e.errno}"
    if memo is not None:
        memo[key] = out
    return out


#: Name of the fingerprint memo in a cache directory (``{relpath: [size, mtime_ns, fingerprint]}``).
FINGERPRINTS = "fingerprints.json"


def source_fingerprint(path: str | Path, memo: dict[str, list] | None = None, key: str | None = None) -> str:
    """16 hex digits of sha256 over a file's bytes, or over a frame folder's sorted (name, size,
    bytes) of its non-hidden entries; ``"missing"`` / ``"unreadable:<errno>"`` when it cannot be read.
    ``memo`` (``{key: [size, times, fingerprint]}``, ``key`` default the path) skips the hashing
    when the size and the modification and change times (for a folder: of every entry) are the
    ones recorded; the change time cannot be set back, so an edit that restores the modification
    time is hashed again."""
    p = Path(path)
    key = key or str(p)
    try:
        if p.is_dir():
            entries = sorted((e for e in os.scandir(p) if not e.name.startswith(".")), key=lambda e: e.name)
            stats = [(e.name, e.stat().st_size, e.stat().st_mtime_ns, e.stat().st_ctime_ns) for e in entries]
            size = sum(st[1] for st in stats)
            mtime = int(hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:15], 16)
        elif p.exists():
            st = p.stat()
            # the change time too: a write that puts the modification time back still moves it
            entries, size, mtime = None, st.st_size, hash((st.st_mtime_ns, st.st_ctime_ns))
        else:
            return "missing"
        hit = memo.get(key) if memo is not None else None
        if hit is not None and hit[0] == size and hit[1] == mtime:
            return str(hit[2])
        if entries is None:
            fp = file_sha256(p)[:16]
        else:
            h = hashlib.sha256()
            for e in entries:
                h.update(json.dumps([e.name, e.stat().st_size]).encode())
                with open(e.path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            fp = h.hexdigest()[:16]
    except OSError as e:
        return f"unreadable:{e.errno}"
    if memo is not None:
        memo[key] = [size, mtime, fp]
    return fp


def read_fingerprints(cache_dir: Path) -> dict[str, list]:
    """The fingerprint memo of a cache ({} when there is none or it is unreadable)."""
    try:
        d = json.loads((Path(cache_dir) / FINGERPRINTS).read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def write_fingerprints(cache_dir: Path, memo: Mapping[str, list]) -> None:
    """Keep the memo for the next run; a cache that cannot be written to just hashes again next time."""
    from ..fileutil import atomic_write_bytes

    try:
        atomic_write_bytes(Path(cache_dir) / FINGERPRINTS, (json.dumps(memo, sort_keys=True) + "\n").encode())
    except OSError:
        pass


def identity(row: Mapping[str, Any]) -> tuple:
    """A store row's identity: (source relative to the root, frame_start, frame_end, stamp)."""
    return (str(row["source"]), row.get("frame_start"), row.get("frame_end"), str(row.get("stamp") or ""))


def row_name(ident: tuple) -> str:
    """The staged-file name of a row identity (16 hex digits of its sha256)."""
    return hashlib.sha256(json.dumps(list(ident), default=str).encode()).hexdigest()[:16]


def relpath(p: Path, root: Path) -> str:
    """``p`` relative to ``root`` as written (a linked subfolder stays under the root), else after
    resolving links, else ``p`` itself."""
    a, r = Path(os.path.abspath(p)), Path(os.path.abspath(root))
    try:
        return str(a.relative_to(r))
    except ValueError:
        pass
    try:
        return str(Path(p).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def base_rows(samples: Sequence[Any], stage: str, root: Path) -> list[dict[str, Any]]:
    """Label-table rows known from the annotation files (labels, source); extraction fills the rest."""
    rows = []
    for s in samples:
        rows.append({
            "id": str(s.id), "dataset": s.dataset or stage, "action": str(s.action or ""), "group": str(s.group or ""),
            "difficulty": None if s.difficulty is None else float(s.difficulty),
            "judge_scores": [float(j) for j in s.judge_scores], "final_score": float(s.final_score),
            "rule": str(s.rule), "fold": int(s.fold), "status": "pending", "error": "",
            "source": relpath(Path(s.source), root), "frame_start": s.frame_start, "frame_end": s.frame_end,
        })
    return rows


# ----------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """The next state of a cache. ``rows``: the next row table, each ``{"id", "source",
    "frame_start", "frame_end", "stamp", "name", "origin", "origin_row"}``; ``samples``: the next
    label table without its extraction columns (they come from ``rows[feature_row]`` at commit);
    ``n_before``: store rows now; ``changes``: labels added/removed/changed against the current
    label table; ``notes``: lines for the log."""

    rows: list[dict[str, Any]]
    samples: list[dict[str, Any]]
    n_before: int
    limit: int | None = None
    root: str = ""
    dataset_config: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fingerprints_added: int = 0
    version: int = PLAN_VERSION

    @property
    def jobs(self) -> list[int]:
        """Row indices to extract, in row order."""
        return [i for i, r in enumerate(self.rows) if r["origin"] == JOB]

    @property
    def adopted(self) -> dict[str, int]:
        """Rows copied from each schema-1 cache directory (by name)."""
        out: dict[str, int] = {}
        for r in self.rows:
            if r["origin"] not in (SELF, JOB):
                out[r["origin"]] = out.get(r["origin"], 0) + 1
        return out

    @property
    def store_work(self) -> bool:
        """Whether the store changes (rows to extract or adopt), or only the label table."""
        return any(r["origin"] != SELF for r in self.rows)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True, default=str) + "\n").encode()

    @classmethod
    def from_json(cls, text: str | bytes) -> "Plan":
        d = json.loads(text)
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"plan version {d.get('version')!r}, this code reads {PLAN_VERSION}")
        return cls(**d)


def build_plan(
    samples: Sequence[Any],
    labels: list[dict[str, Any]],
    existing: Sequence[Mapping[str, Any]],
    *,
    root: Path,
    retry_failed: bool = False,
    legacy: Callable[[], Sequence[Any]] | None = None,
    fingerprints: dict[str, list] | None = None,
) -> Plan:
    """The plan that gives ``samples`` (with their label rows ``labels``, :func:`base_rows`) features,
    starting from the store row table ``existing`` (see the module docstring for the rules).
    ``legacy`` (:func:`.legacy.find_legacy` bound to this cache: schema-1 caches, each with ``path`` and
    ``by_window``) is called only when some row would otherwise be extracted. ``fingerprints``: the
    cache's fingerprint memo (:func:`source_fingerprint`), updated in place. Fills each label row's
    ``feature_row``; the plan's ``notes`` say which sources changed and how many rows got a
    fingerprint."""
    memo: dict[str, str] = {}
    fps = fingerprints if fingerprints is not None else {}
    rows: list[dict[str, Any]] = [_row(r, SELF, i) for i, r in enumerate(existing)]
    status = [str(r.get("status", "ok")) for r in existing]
    index: dict[tuple, int] = {}  # rows of a cache from before fingerprints, by (source, window, stamp)
    by_content: dict[tuple, int] = {}  # every row with a fingerprint, by (source, window, fingerprint)
    for i, r in enumerate(rows):
        if r["fingerprint"]:
            by_content.setdefault(identity(r)[:3] + (r["fingerprint"],), i)
        else:
            index.setdefault(identity(r), i)
    failed_window = {identity(r)[:3]: i for i, r in enumerate(rows) if status[i] != "ok"}
    had_features = {identity(r)[:3] for i, r in enumerate(rows) if status[i] == "ok"}
    changed: list[str] = []
    upgraded = 0
    for s, lab in zip(samples, labels):
        stamp = source_stamp(s.source, memo)
        fp = source_fingerprint(s.source, fps, key=lab["source"]) if stamp != "missing" else "missing"
        window = (lab["source"], lab["frame_start"], lab["frame_end"])
        i = by_content.get(window + (fp,))
        if i is None and (window + (stamp,)) in index:
            i = index.pop(window + (stamp,))  # recorded before fingerprints: trusted by its stamp, once
            rows[i]["fingerprint"] = fp
            by_content[window + (fp,)] = i
            upgraded += 1
        if i is None:
            if window in had_features:
                changed.append(f"{lab['id']} ({lab['source']})")
                had_features.discard(window)
            j = failed_window.pop(window, None)
            new = _row({"id": lab["id"], "source": window[0], "frame_start": window[1], "frame_end": window[2],
                        "stamp": stamp if stamp in ("missing",) or stamp.startswith("unreadable") else f"{stamp}|{fp}",
                        "fingerprint": fp}, JOB, None)
            if j is not None and rows[j]["origin"] == SELF:
                i = j  # a failed row whose source changed (the missing video is there now): in place
                rows[i] = new
            else:
                i = len(rows)
                rows.append(new)
            by_content[window + (fp,)] = i
        elif retry_failed and i < len(status) and status[i] != "ok" and rows[i]["origin"] == SELF:
            rows[i] = _row(rows[i], JOB, None)
        lab["feature_row"] = i
    if legacy is not None and any(r["origin"] == JOB for r in rows):
        found = legacy()
        for r in rows:
            if r["origin"] != JOB:
                continue
            for lg in found:
                k = lg.by_window.get(identity(r)[:3])
                if k is not None:
                    r["origin"], r["origin_row"] = lg.path.name, k
                    break
    notes = []
    if changed:
        notes.append(f"{len(changed)} source(s) changed since their features were extracted (same path, other "
                     f"content): extracted again, the old rows kept: {', '.join(changed[:5])}"
                     + (f" (+{len(changed) - 5} more)" if len(changed) > 5 else ""))
    if upgraded:
        notes.append(f"{upgraded} row(s) recorded before content fingerprints now carry their source's "
                     f"fingerprint (trusted by path and size this once)")
    return Plan(rows=rows, samples=labels, n_before=len(existing), root=str(root), notes=notes,
                fingerprints_added=upgraded)


def keep_staged(cache_dir: Path, plan: Plan) -> int:
    """Append to ``plan`` the ok rows staged in ``cache_dir`` by an earlier plan that this one does not
    hold (samples removed from the annotation files while they were being extracted), so that their
    features are kept like any store row. Returns how many."""
    planned = {r["name"] for r in plan.rows}
    added = 0
    for name, f in sorted(staged_files(cache_dir).items()):
        if name in planned:
            continue
        try:
            rec, _, _ = read_staged(f)
        except (OSError, ValueError, KeyError):
            continue  # unreadable leftovers are not features; the commit's cleanup removes them
        if rec.get("status") == "ok" and "source" in rec and row_name(identity(rec)) == name:
            plan.rows.append(_row(rec, JOB, None))
            added += 1
    return added


def _row(r: Mapping[str, Any], origin: str, origin_row: int | None) -> dict[str, Any]:
    ident = identity(r)
    return {"id": str(r["id"]), "source": ident[0], "frame_start": ident[1], "frame_end": ident[2],
            "stamp": ident[3], "fingerprint": str(r.get("fingerprint") or ""), "name": row_name(ident),
            "origin": origin, "origin_row": origin_row}


# ----------------------------------------------------------------------------- label table


def label_table_rows(samples: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Label rows with their extraction columns taken from their store rows (``rows`` = row records)."""
    return [{**s, **{k: rows[s["feature_row"]][k] for k in EXTRACTION_COLUMNS}} for s in samples]


def labels_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """16 hex digits of sha256 over the ids and :data:`LABEL_COLUMNS` of label rows, in order."""
    blob = json.dumps([[r.get("id")] + [r.get(k) for k in LABEL_COLUMNS] for r in rows], default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def label_changes(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]], keep_ids: int = 20) -> dict[str, Any]:
    """Samples ``added``, ``removed`` and ``changed`` (any of :data:`LABEL_COLUMNS`) from ``old`` to ``new``
    label rows: counts, and the first ``keep_ids`` ids of each under ``ids``."""
    o = {r["id"]: r for r in old}
    n = {r["id"]: r for r in new}
    added = [i for i in n if i not in o]
    removed = [i for i in o if i not in n]
    changed = [i for i in n if i in o and any(o[i].get(k) != n[i].get(k) for k in LABEL_COLUMNS)]
    return {"added": len(added), "removed": len(removed), "changed": len(changed),
            "ids": {"added": added[:keep_ids], "removed": removed[:keep_ids], "changed": changed[:keep_ids]}}


def describe_changes(ch: Mapping[str, Any]) -> str:
    """``"2 changed (05_12, 07_01), 1 added (09_03), 0 removed"`` (at most 5 ids each)."""
    parts = []
    for k in ("changed", "added", "removed"):
        ids = [str(i) for i in ch.get("ids", {}).get(k, [])]
        shown = ", ".join(ids[:5]) + (", ..." if ch.get(k, 0) > min(len(ids), 5) else "")
        parts.append(f"{ch.get(k, 0)} {k}" + (f" ({shown})" if ids else ""))
    return ", ".join(parts)
