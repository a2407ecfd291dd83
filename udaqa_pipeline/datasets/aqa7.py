"""AQA-7 adapter (REFERENCE section 3): 6 actions, split 4, single labels.

- ``Split_4/split_4_train_list.mat`` / ``split_4_test_list.mat`` (read with ``scipy.io.loadmat``)
  hold ``consolidated_train_list`` (803 x 3) / ``consolidated_test_list`` (303 x 3), rows
  ``[class 1..6, sample no, score]``. Trampoline (class 7 in the full release) is not in split 4;
  any other class number is reported and left out.
- Score scale: some copies store score x 100. With ``dataset.score_scale = "auto"`` each file is
  checked against the published per-class ranges (:data:`CLASS_RANGES`): when the scores divided by
  100 fit the ranges better than the raw ones, they are divided by 100 and ``inspect`` says so.
  ``score_scale = 1`` or ``100`` forces it.
- One label per video: ``judge_scores = (score,)``, rule ``identity``; ``group`` = ``action`` = the
  class name (one metrics row per action); test rows get ``fold = 0``.
- Frames: ``<action>-out/{n:03d}/img_{k:05d}.jpg``; the window is the first 103 frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import TRAIN_ONLY, Sample
from .common import AnnotationError, DatasetIndex, dataset_cfg, need_file

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


def _read_mat(path: Path, var: str) -> np.ndarray:
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise AnnotationError(path, f"MATLAB v7.3 file not supported by scipy ({exc})",
                              "save it again with `save(..., '-v7')`") from exc
    except (ValueError, TypeError, OSError) as exc:
        raise AnnotationError(path, f"not a readable .mat file ({exc})", "re-download the split files") from exc
    if var not in mat:
        names = [k for k in mat if not k.startswith("__")]
        if len(names) != 1:
            raise AnnotationError(path, f"no variable {var!r} (found {names})", "use the published split 4 files")
        var = names[0]
    arr = np.asarray(mat[var], dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise AnnotationError(path, f"variable {var!r} has shape {arr.shape}, expected (N, 3)", "use the published split 4 files")
    return arr


def read(root: str | Path, cfg: dict) -> DatasetIndex:
    root = Path(root)
    dcfg = dataset_cfg(cfg)
    name = dcfg.get("name", "aqa7")
    scale_cfg = dcfg.get("score_scale", "auto")
    warnings: list[str] = []
    samples: list[Sample] = []
    unknown = 0
    for key, var, fold in (("train_list", "consolidated_train_list", TRAIN_ONLY),
                           ("test_list", "consolidated_test_list", 0)):
        path = need_file(root, dcfg[key], key, f"AQA-7 split-4 {key.replace('_', ' ')}", name)
        arr = _read_mat(path, var)
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
            samples.append(Sample(
                id=f"{action}/{n:03d}", dataset=name, source=root / dcfg["frames"].format(action=action, n=n),
                final_score=float(s), judge_scores=(float(s),), difficulty=None, rule="identity",
                action=action, group=action, fold=fold,
            ))
    if unknown:
        warnings.append(f"{unknown} rows have a class outside 1..6 (trampoline is not in split 4); left out")
    return DatasetIndex(samples, warnings, {"train_list": str(root / dcfg["train_list"]), "test_list": str(root / dcfg["test_list"])})
