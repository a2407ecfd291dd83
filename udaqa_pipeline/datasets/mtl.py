"""MTL-AQA adapter (REFERENCE section 3), reading the published pickles as they are.

- Annotations: the first file of ``dataset.annotations`` found under the root.
  ``final_annotations_dict_with_dive_number.pkl`` (CoRe) and ``augmented_final_annotations_dict.pkl``
  (MUSDL) carry 7 judge scores -> rule ``mtl_middle3``; the original ``final_annotations_dict.pkl``
  has none -> the final score is the only label (rule ``identity``, ``judge_scores = (final,)``).
- Keys are ``(video, dive)`` tuples; values dicts holding numpy scalars / arrays.
- Split 0: ``train_split_0.pkl`` / ``test_split_0.pkl`` (lists of key tuples). Test keys get
  ``fold = 0``, train keys ``TRAIN_ONLY``; a key in neither split is left out and reported.
- Frames: the trimmed folder ``frames/{vv:02d}_{dd:02d}/`` (MUSDL) when it exists, else the untrimmed
  ``new_total_frames_256s/{vv:02d}/`` with ``frame_end = end_frame`` (CoRe: the 103 frames ending at
  ``end_frame`` in sorted order; ``start_frame`` is kept in ``extra`` only, because CoRe's window
  does not start there).
- Known label noise is reported, never fixed: the 30 dives whose final score breaks the rule, and
  the judge value 45.0 (a typo for 4.5) in the MUSDL copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import TRAIN_ONLY, Sample
from .common import (
    AnnotationError, DatasetIndex, as_key_list, dataset_cfg, load_pickle, need_file, resolve, to_float, to_floats, to_int,
)

_EXTRA_FIELDS = ("start_frame", "end_frame", "primary_view", "position", "armstand", "rotation_type", "ss_no", "tw_no")


def _annotation_file(root: Path, dcfg: dict) -> Path:
    names = dcfg.get("annotations", [])
    names = [names] if isinstance(names, str) else list(names)
    for rel in names:
        p = resolve(root, rel)
        if p.is_file():
            return p
    raise AnnotationError(
        resolve(root, "info"),
        "no MTL-AQA annotation file found (looked for " + ", ".join(str(resolve(root, n)) for n in names) + ")",
        "put one of final_annotations_dict_with_dive_number.pkl, augmented_final_annotations_dict.pkl, "
        "final_annotations_dict.pkl under ROOT/info/, pass --root, or set dataset.annotations",
    )


def read(root: str | Path, cfg: dict) -> DatasetIndex:
    root = Path(root)
    dcfg = dataset_cfg(cfg)
    name = dcfg.get("name", "mtl")
    ann_path = _annotation_file(root, dcfg)
    ann = load_pickle(ann_path, "MTL-AQA annotation file")
    if not isinstance(ann, dict) or not ann:
        raise AnnotationError(ann_path, "expected a non-empty dict {(video, dive): {...}}", "use the published file")
    train = as_key_list(load_pickle(need_file(root, dcfg["train_split"], "train_split", "train split", name), "train split"),
                        resolve(root, dcfg["train_split"]), "train split")
    test = as_key_list(load_pickle(need_file(root, dcfg["test_split"], "test_split", "test split", name), "test split"),
                       resolve(root, dcfg["test_split"]), "test split")
    fold_of = {k: TRAIN_ONLY for k in train}
    fold_of.update({k: 0 for k in test})
    warnings: list[str] = []
    both = set(train) & set(test)
    if both:
        warnings.append(f"{len(both)} keys are in both splits; they are treated as test")
    trimmed_root = resolve(root, dcfg.get("frames_trimmed", "frames"))
    untrimmed_root = resolve(root, dcfg.get("frames_untrimmed", "new_total_frames_256s"))

    samples: list[Sample] = []
    judge_less = 0
    odd_values: list[str] = []
    left_out = 0
    entries: dict[tuple[int, int], dict] = {}
    for raw_key, rec in ann.items():
        key = tuple(to_int(k) for k in (raw_key if isinstance(raw_key, (tuple, list)) else (raw_key,)))
        if len(key) != 2 or not isinstance(rec, dict):
            raise AnnotationError(ann_path, f"entry {raw_key!r} is not (video, dive) -> dict", "use the published file")
        entries[key] = rec
    for key, rec in entries.items():
        if key not in fold_of:
            left_out += 1
            continue
        v, d = key
        try:
            final = to_float(rec["final_score"])
            difficulty = to_float(rec["difficulty"])
        except KeyError as exc:
            raise AnnotationError(ann_path, f"entry {key} has no {exc.args[0]!r} field", "use the published file") from None
        if "judge_scores" in rec and rec["judge_scores"] is not None:
            judges = to_floats(rec["judge_scores"])
            rule = "mtl_middle3"
            for i, j in enumerate(judges):
                if not (0.0 <= j <= 10.0) or abs(j * 2 - round(j * 2)) > 1e-9:
                    odd_values.append(f"{v:02d}_{d:02d} judge {i}: {j:g}")
        else:
            judges, rule = (final,), "identity"
            judge_less += 1
        extra = {f: to_int(rec[f]) for f in _EXTRA_FIELDS if f in rec and np.ndim(rec[f]) == 0
                 and np.issubdtype(np.asarray(rec[f]).dtype, np.number)}
        trimmed = trimmed_root / f"{v:02d}_{d:02d}"
        if trimmed.is_dir():
            source, frame_end = trimmed, None
        else:
            if "end_frame" not in rec:
                raise AnnotationError(ann_path, f"entry {key} has no end_frame for the untrimmed layout",
                                      f"extract trimmed frames to {trimmed}")
            source, frame_end = untrimmed_root / f"{v:02d}", to_int(rec["end_frame"])
        samples.append(Sample(
            id=f"{v:02d}_{d:02d}", dataset=name, source=source, final_score=final, judge_scores=judges,
            difficulty=difficulty, rule=rule, action=str(rec.get("dive_number", "")), group=name,
            fold=fold_of[key], frame_start=None, frame_end=frame_end, extra=extra,
        ))
    missing = [k for k in fold_of if k not in entries]
    if missing:
        warnings.append(f"{len(missing)} split keys have no annotation entry (e.g. {missing[0]}); skipped")
    if left_out:
        warnings.append(f"{left_out} annotated dives are in neither split; left out")
    if judge_less:
        warnings.append(f"{ann_path.name} has no judge scores: the final score is the only label (rule identity)")
    if odd_values:
        warnings.append(
            f"{len(odd_values)} judge value(s) outside 0..10 in steps of 0.5 in {ann_path.name} (kept as published; "
            f"45.0 is a known typo for 4.5): " + "; ".join(odd_values[:5])
        )
    samples.sort(key=lambda s: s.id)
    return DatasetIndex(samples, warnings, {"annotations": str(ann_path)})
