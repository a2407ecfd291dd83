"""AQA-7 adapter (REFERENCE section 3): 6 actions, split 4, single labels.

- ``Split_4/split_4_train_list.mat`` / ``split_4_test_list.mat`` (read with ``scipy.io.loadmat``;
  MATLAB v7.3 files, which are HDF5, with ``h5py``) hold ``consolidated_train_list`` (803 x 3) /
  ``consolidated_test_list`` (303 x 3), rows ``[class 1..6, sample no, score]``. Trampoline (class 7
  in the full release) is not in split 4; any other class number is reported and left out.
- Orientation: h5py returns MATLAB arrays transposed (MATLAB stores column-major), so a v7.3 file,
  or a v7 file written from what h5py read, holds 3 x N. :func:`orient` reads such a list as N x 3
  and ``inspect`` says so; any other shape, a non-integer class or sample number, or a NaN/inf
  anywhere is refused naming the file and rows.
- Score scale: some copies store score x 100. With ``dataset.score_scale = "auto"`` each file is
  checked against the published per-class ranges (:data:`CLASS_RANGES`): when the scores divided by
  100 fit the ranges better than the raw ones, they are divided by 100 and ``inspect`` says so.
  ``score_scale = 1`` or ``100`` forces it.
- One label per video: ``judge_scores = (score,)``, rule ``identity``; ``group`` = ``action`` = the
  class name (one metrics row per action); test rows get ``fold = 0``. With ``dataset.judge_scale =
  [lo, hi]`` (and ``judge_step``) set, a score off that scale is reported by id and left out (the judge
  policy of :mod:`.common`: a single label has no other judge to keep); the default ``[]`` checks
  finiteness only, since the six actions have no common scale.
- Frames: ``<action>-out/{n:03d}/img_{k:05d}.jpg``; the window is the first 103 frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .base import TRAIN_ONLY, Sample
from .common import AnnotationError, DatasetIndex, LabelCheck, judge_scale, need_file

#: Class number (1-based, as in the .mat files) -> action name (= frame folder prefix).
CLASSES = {1: "diving", 2: "gym_vault", 3: "ski_big_air", 4: "snowboard_big_air", 5: "sync_diving_3m", 6: "sync_diving_10m"}

#: Published score range per action (REFERENCE section 3), used only to detect x100 copies.
CLASS_RANGES = {
    "diving": (21.6, 102.6), "gym_vault": (12.3, 16.87), "ski_big_air": (8.0, 50.0),
    "snowboard_big_air": (8.0, 50.0), "sync_diving_3m": (46.2, 104.88), "sync_diving_10m": (49.8, 99.36),
}


def _fit(classes: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of rows inside their class range (20 % slack: the ranges are of the whole release)."""
    ok = []
    for c, s in zip(classes.tolist(), scores.tolist()):
        if c in CLASSES:
            lo, hi = CLASS_RANGES[CLASSES[c]]
            ok.append(lo * 0.8 <= s <= hi * 1.2)
    return float(np.mean(ok)) if ok else 0.0


def detect_scale(classes: np.ndarray, scores: np.ndarray) -> int:
    """1 or 100: the divisor that puts the scores inside the published per-class ranges."""
    return 100 if _fit(classes, scores / 100.0) > _fit(classes, scores) else 1


def _read_v73(path: Path) -> dict[str, np.ndarray]:
    """The numeric variables of a MATLAB v7.3 file (HDF5), as h5py returns them (transposed)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: np.asarray(f[k]) for k in f if not k.startswith("#") and isinstance(f[k], h5py.Dataset)}
    except OSError as exc:
        raise AnnotationError(path, f"MATLAB v7.3 (HDF5) file that h5py cannot read ({exc})",
                              "re-download the split files") from exc


def _plausible_rows(arr: np.ndarray) -> bool:
    """Whether ``arr`` (n, 3) reads as rows [class, sample no, score]: integer classes 1..7,
    positive integer sample numbers."""
    c, n = arr[:, 0], arr[:, 1]
    return bool(np.all((c == np.round(c)) & (c >= 1) & (c <= 7)) and np.all((n == np.round(n)) & (n >= 1)))


def orient(arr: np.ndarray, path: Path, var: str) -> tuple[np.ndarray, bool]:
    """``(N, 3)`` rows ``[class, sample no, score]`` from a list stored N x 3 (published) or 3 x N
    (h5py / v7.3), and whether it was transposed. A 3 x 3 list is read as published unless only its
    transpose has plausible rows. Raises :class:`AnnotationError` for any other shape."""
    if arr.ndim == 2 and arr.shape[1] == 3 and (arr.shape[0] != 3 or _plausible_rows(arr) or not _plausible_rows(arr.T)):
        return arr, False
    if arr.ndim == 2 and arr.shape[0] == 3:
        return arr.T, True
    raise AnnotationError(path, f"variable {var!r} has shape {arr.shape}, expected (N, 3) rows [class 1..6, sample no, "
                          "score] (or (3, N), as h5py writes them)", "use the published split 4 files")


def _read_mat(path: Path, var: str) -> tuple[np.ndarray, list[str]]:
    """The split list of ``path`` as float64 (N, 3), and notes for ``inspect``."""
    from scipy.io import loadmat

    notes: list[str] = []
    try:
        mat = loadmat(str(path))
    except NotImplementedError:  # MATLAB v7.3 files are HDF5, which scipy does not read
        mat = _read_v73(path)
        notes.append(f"{path.name}: MATLAB v7.3 (HDF5) file, read with h5py")
    except (ValueError, TypeError, OSError) as exc:
        raise AnnotationError(path, f"not a readable .mat file ({exc})", "re-download the split files") from exc
    if var not in mat:
        names = [k for k in mat if not k.startswith("__")]
        if len(names) != 1:
            raise AnnotationError(path, f"no variable {var!r} (found {names})", "use the published split 4 files")
        var = names[0]
    try:
        arr = np.asarray(mat[var], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(path, f"variable {var!r} is not a numeric array ({exc})", "use the published split 4 files") from None
    arr, transposed = orient(arr, path, var)
    if transposed:
        notes.append(f"{path.name}: {var!r} is stored transposed (3 x {arr.shape[0]}, as h5py returns MATLAB arrays): "
                     f"read as {arr.shape[0]} x 3")
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad):
        # Refused before the class column is cast to int, where NaN would become an arbitrary class.
        raise AnnotationError(path, f"{len(bad)} row(s) of {var!r} hold NaN or inf: rows "
                              + ", ".join(str(i + 1) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
                              + " (1-based)", "fill in the real values or remove those rows")
    c, n = arr[:, 0], arr[:, 1]
    odd = np.flatnonzero((c != np.round(c)) | (n != np.round(n)) | (n < 1))
    if len(odd):
        r = odd[0]
        raise AnnotationError(path, f"{len(odd)} row(s) of {var!r} do not read as [class, sample no, score] (class and "
                              f"sample no must be integers, sample no >= 1): row {r + 1} is {arr[r].tolist()}",
                              "use the published split 4 files")
    return arr, notes


def read(root: str | Path, dcfg: Mapping[str, Any]) -> DatasetIndex:
    """Samples of AQA-7 split 4 (module docstring). Raises :class:`AnnotationError` for a missing or
    malformed list (wrong shape, non-integer class or sample number, NaN/inf)."""
    root = Path(root)
    name = dcfg.get("name", "aqa7")
    scale_cfg = dcfg.get("score_scale", "auto")
    jscale = judge_scale(dcfg, None, name)
    warnings: list[str] = []
    samples: list[Sample] = []
    outliers: list[dict] = []
    unknown = 0
    for key, var, fold in (("train_list", "consolidated_train_list", TRAIN_ONLY),
                           ("test_list", "consolidated_test_list", 0)):
        path = need_file(root, dcfg[key], key, f"AQA-7 split-4 {key.replace('_', ' ')}", name)
        arr, notes = _read_mat(path, var)
        warnings += notes
        check = LabelCheck(path, jscale)
        classes, numbers, scores = arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2]
        if scale_cfg == "auto":
            scale = detect_scale(classes, scores)
            if scale != 1:
                top = max(hi for _, hi in CLASS_RANGES.values())
                warnings.append(f"{path.name}: scores are stored x100 (max {scores.max():g}; the published per-class "
                                f"ranges end at {top:g}): divided by 100")
        else:
            scale = float(scale_cfg)
        for c, n, s in zip(classes.tolist(), numbers.tolist(), (scores / scale).tolist()):
            action = CLASSES.get(c)
            if action is None:
                unknown += 1
                continue
            sid = f"{action}/{n:03d}"
            if check.judges(sid, "identity", (float(s),), None, float(s))[0] is None:
                continue
            samples.append(Sample(
                id=sid, dataset=name, source=root / dcfg["frames"].format(action=action, n=n),
                final_score=float(s), judge_scores=(float(s),), difficulty=None, rule="identity",
                action=action, group=action, fold=fold,
            ))
        warnings += check.report()
        outliers += check.outliers()
    if unknown:
        warnings.append(f"{unknown} rows have a class outside 1..6 (trampoline is not in split 4); left out")
    return DatasetIndex(samples, warnings, {"train_list": str(root / dcfg["train_list"]),
                                            "test_list": str(root / dcfg["test_list"])}, outliers)
