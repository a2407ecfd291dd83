"""The cut store: I3D's activation at the input of one block, for every clip and view of every
store row, kept beside the features so that stage two can train the blocks above it
(``train.adapt = "top"``) without running the bottom of I3D again.

``cache.cut = "Mixed_5b"`` stores the input of ``Mixed_5b`` (the output of ``MaxPool3d_5a_2x2``,
832 x 2 x 7 x 7 per 16 x 224 x 224 clip); ``"Mixed_4f"`` the output of ``Mixed_4e`` (528 x 4 x 14 x
14). Layout: ``cut-<block>-<dtype>.h5`` (or ``.zarr``) holding one array ``cut`` (C rows, V, K, c, t,
h, w), one chunk per row, checksummed like the features (HDF5 ``fletcher32``, Zarr ``crc32c``), and
the manifest's ``cuts["<block>/<dtype>"]``: store name, block, dtype, shape and the row names
(:func:`.plan.row_name` of each store row's identity) in store order. The features are not touched
and the cache key does not change: a cut is added to an existing cache by ``features`` with the
setting (decoding and the bottom of I3D once more for the rows that lack it; the top of I3D is run
too, as stage one runs it).

``cache.cut_dtype``: ``"bf16"`` (default) stores the bfloat16 rounding of the fp32 activation as
its 16 bits (HDF5 and Zarr have no bfloat16 type): half the bytes, and the top of I3D run on it
gives features within about 1e-2 relative of the cached ones; ``"fp32"`` stores the activation as
computed, and the frozen top run on it reproduces the cached features exactly (same batch size and
machine; to 1e-5 relative otherwise).

Resuming: while extracting, each finished row is staged as ``cut-staging/<block>-<dtype>/<name>.npz``
(atomic rename); a killed run keeps its staged rows, and the store is written whole under a
temporary name and renamed into place once every needed row is there.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..backbone.i3d import BLOCKS, block_index
from ..fileutil import atomic_write_bytes
from .manifest import CacheError, read_manifest, write_manifest

log = logging.getLogger(__name__)

CUT_STAGING = "cut-staging"
_EXT = {"hdf5": ".h5", "zarr": ".zarr"}


def below(cut: str) -> str:
    """The block whose output is the input of block ``cut`` (the last block run below the cut)."""
    i = block_index(cut)
    if i == 0:
        raise ValueError(f"there is nothing below {cut!r}; cut at a later block")
    return BLOCKS[i - 1]


def cut_key(cut: str, dtype: str) -> str:
    return f"{cut}/{dtype}"


def store_name(cut: str, dtype: str, backend: str) -> str:
    return f"cut-{cut}-{dtype}{_EXT[backend]}"


def encode(act: np.ndarray, dtype: str) -> np.ndarray:
    """float32 activations -> the stored array: float32, or bfloat16's 16 bits as uint16 (rounded to
    nearest even, as ``tensor.to(torch.bfloat16)``)."""
    act = np.ascontiguousarray(act, dtype=np.float32)
    if dtype == "fp32":
        return act
    return torch.from_numpy(act).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def decode(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """The stored array -> a float32 tensor (bfloat16 bits widened exactly)."""
    a = np.ascontiguousarray(stored)
    if dtype == "fp32":
        return torch.from_numpy(a)
    return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16).float()


def staging_dir(cache_dir: Path, cut: str, dtype: str) -> Path:
    return Path(cache_dir) / CUT_STAGING / f"{cut}-{dtype}"


def write_staged_cut(directory: Path, name: str, cut: np.ndarray) -> None:
    """Atomically stage one row's cut (V, K, c, t, h, w), already :func:`encode` d."""
    directory.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(cut), allow_pickle=False)
    atomic_write_bytes(directory / f"{name}.npy", buf.getvalue())


def staged_cuts(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        return {}
    return {f.stem: f for f in directory.iterdir() if f.suffix == ".npy" and not f.name.startswith(".")}


def row_names(cache_dir: Path, rows: Any = None) -> list[str]:
    """The row name of every store row (``rows.parquet``, or the row table ``rows`` already read), in
    store order."""
    import pyarrow.parquet as pq

    from .manifest import ROWS
    from .plan import identity, row_name

    table = rows if rows is not None else pq.read_table(Path(cache_dir) / ROWS)
    return [row_name(identity(r)) for r in table.to_pylist()]


def needed_rows(cache_dir: Path) -> list[int]:
    """Store rows the label table uses whose extraction succeeded, increasing."""
    import pyarrow.parquet as pq

    from .manifest import SAMPLES

    t = pq.read_table(Path(cache_dir) / SAMPLES, columns=["feature_row", "status"]).to_pylist()
    return sorted({int(r["feature_row"]) for r in t if r["status"] == "ok" and r["feature_row"] is not None})


def entry(manifest: Mapping[str, Any], cut: str, dtype: str) -> dict[str, Any] | None:
    return (manifest.get("cuts") or {}).get(cut_key(cut, dtype))


def missing(cache_dir: Path, cut: str, dtype: str) -> list[int]:
    """Needed store rows (:func:`needed_rows`) neither in the cut store nor staged."""
    m = read_manifest(cache_dir)
    e = entry(m, cut, dtype)
    have = set(e["rows"]) if e and (Path(cache_dir) / e["store"]).exists() else set()
    have |= set(staged_cuts(staging_dir(cache_dir, cut, dtype)))
    names = row_names(cache_dir)
    return [i for i in needed_rows(cache_dir) if names[i] not in have]


def _read_rows(path: Path, backend: str, rows: Sequence[int]) -> Iterable[np.ndarray]:
    if backend == "hdf5":
        import h5py

        with h5py.File(path, "r") as f:
            for r in rows:
                yield f["cut"][r]
    else:
        import zarr

        arr = zarr.open_group(str(path), mode="r")["cut"]
        for r in rows:
            yield arr[r]


def _chain(*parts: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    for part in parts:
        yield from part


def write_cut_store(cache_dir: Path, cut: str, dtype: str, backend: str) -> Path | None:
    """Write the cut store of every row that has a cut, in the existing store or staged (rows of
    samples no longer in the label table keep theirs, as their features are kept), then record it in
    the manifest and drop the staged rows. Needed rows with no cut (their extraction failed in the
    cut pass) are logged. Returns the store path (None when no row has a cut)."""
    from .store import _open_writer, _remove

    cache_dir = Path(cache_dir)
    m = read_manifest(cache_dir)
    old = entry(m, cut, dtype)
    old_path = cache_dir / old["store"] if old else None
    old_index = {n: i for i, n in enumerate(old["rows"])} if old and old_path.exists() else {}
    staged = staged_cuts(staging_dir(cache_dir, cut, dtype))
    names = row_names(cache_dir)
    rows = [names[i] for i in needed_rows(cache_dir)]
    lacking = [n for n in rows if n not in staged and n not in old_index]
    if lacking:
        log.warning(f"warning: {cache_dir}: {len(lacking)} of {len(rows)} rows have no {cut} cut (reading "
                    f"their video failed in the cut pass); training from the cut leaves them out")
    have = [n for n in names if n in staged or n in old_index]
    if not have:
        return None
    if old_index and all(n in old_index for n in have) and not staged and len(have) == len(old["rows"]):
        return old_path
    # the old store is read once, in order, beside the staged rows
    old_rows = _read_rows(old_path, old["backend"], [old_index[n] for n in have if n not in staged]) if old_index else iter(())

    def arrays() -> Iterable[np.ndarray]:
        for n in have:
            yield np.load(staged[n], allow_pickle=False) if n in staged else next(old_rows)

    rows_in = arrays()
    first = next(rows_in)
    shape = (len(have),) + tuple(first.shape)
    path = cache_dir / store_name(cut, dtype, backend)
    tmp = path.with_name(path.name + ".partial")
    _remove(tmp)
    w = _open_writer(backend, tmp, {"cut": (shape, first.dtype, 0)}, {"cut": cut, "dtype": dtype})
    try:
        for j, (n, a) in enumerate(zip(have, _chain([first], rows_in))):
            if a.shape != shape[1:] or a.dtype != first.dtype:
                raise CacheError(f"{cache_dir}: the {cut} cut of row {n} is {a.shape} {a.dtype}, the others "
                                 f"{shape[1:]} {first.dtype}; delete {staging_dir(cache_dir, cut, dtype)} and rerun")
            w.write("cut", j, a)
    finally:
        w.close()
        close = getattr(old_rows, "close", None)
        if close is not None:
            close()  # the old store's file handle, before that file is replaced
    _remove(path)
    os.replace(tmp, path)
    m = read_manifest(cache_dir)
    m.setdefault("cuts", {})[cut_key(cut, dtype)] = {
        "store": path.name, "backend": backend, "block": cut, "input_of": cut, "output_of": below(cut),
        "dtype": dtype, "shape": list(shape), "rows": have}
    write_manifest(cache_dir, m)
    if old_path is not None and old_path != path:
        _remove(old_path)
    shutil.rmtree(staging_dir(cache_dir, cut, dtype), ignore_errors=True)
    try:
        (cache_dir / CUT_STAGING).rmdir()  # only when no other cut is being staged
    except OSError:
        pass
    return path


def read_cut(cache: Any, cut: str, dtype: str | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """The stored cut of every sample of an opened cache's label table: (N, V, K, c, t, h, w) as
    stored (uint16 bfloat16 bits or float32; :func:`decode` gives the tensor; zeros where a sample
    has none), the (N,) mask of samples that have one, and the stored dtype. ``dtype``: the stored
    cut preferred (``cache.cut_dtype``), else the other one stored (default order bf16, fp32). Raises :class:`CacheError` naming the
    command that adds it when the cache has no such cut."""
    cuts = cache.manifest.get("cuts") or {}
    dtypes = sorted(("bf16", "fp32"), key=lambda d: d != dtype)
    e = next((cuts[cut_key(cut, d)] for d in dtypes if cut_key(cut, d) in cuts), None)
    if e is None or not (cache.path / e["store"]).exists():
        have = ", ".join(sorted(cuts)) or "none"
        raise CacheError(f"cache {cache.path} has no {cut} cut (has: {have}); add it with `udaqa-pipeline features "
                         f"{cache.manifest.get('dataset', 'DATASET')} --root DIR --set cache.cut={cut}` and the "
                         f"--set the cache was built with (its features are kept; the bottom of I3D runs once more)")
    from .store import read_store_arrays

    stored = read_store_arrays(cache.path / e["store"], e["backend"], ["cut"])["cut"]
    index = {n: i for i, n in enumerate(e["rows"])}
    names = row_names(cache.path, cache.rows)
    at = np.asarray([index.get(names[r], -1) for r in cache.store_index], dtype=np.int64)
    have = at >= 0
    if have.all() and len(at) == len(stored) and (at == np.arange(len(at))).all():
        return stored, have, e["dtype"]
    out = np.zeros((len(at),) + stored.shape[1:], dtype=stored.dtype)
    out[have] = stored[at[have]]
    return out, have, e["dtype"]


def cut_info(cache_dir: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``cache info``'s view of the cuts: per key, rows, shape, dtype and bytes."""
    out = {}
    for k, e in (manifest.get("cuts") or {}).items():
        p = Path(cache_dir) / e["store"]
        size = (sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir()
                else p.stat().st_size if p.exists() else 0)
        per_clip = int(np.prod(e["shape"][3:])) * (2 if e["dtype"] == "bf16" else 4)
        out[k] = {"rows": len(e["rows"]), "shape": e["shape"], "dtype": e["dtype"], "bytes": size,
                  "bytes_per_clip": per_clip}
    return out


__all__ = ["below", "cut_info", "decode", "encode", "missing", "read_cut", "write_cut_store"]
