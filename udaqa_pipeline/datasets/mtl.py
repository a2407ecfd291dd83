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
- Labels (:class:`~.common.LabelCheck`): a NaN/inf final score, difficulty or judge refuses the file,
  naming the dives. Judges are held against ``dataset.judge_scale`` / ``judge_step`` (default the
  published 0..10 in steps of 0.5): the MUSDL copy's 45.0 becomes 4.5 for training because 4.5 is on
  the scale and the rule then gives the stored final score; a value that no decimal slip explains is
  dropped from the panel (the judge policy in :mod:`.common`). Both are reported by dive id.
- The 30 dives whose stored final score breaks the rule are reported, never fixed.
- Shapes are checked against the published format: keys ``(video, dive)`` integer pairs (split files
  too), 7 judge scores per entry; anything else is refused with what was found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .base import TRAIN_ONLY, Sample
from .common import (
    DIVING_SCALE, AnnotationError, DatasetIndex, LabelCheck, as_key_list, judge_scale, load_pickle, need_file,
    resolve, to_float, to_floats, to_int,
)
from .rules import RULE_ATOL, RULE_JUDGES

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


def _pair(raw, path: Path, what: str) -> tuple[int, int]:
    """A ``(video, dive)`` key as two ints, else an error saying what the file holds instead."""
    k = tuple(raw) if isinstance(raw, (tuple, list)) else (raw,)
    try:
        if len(k) == 2 and all(float(x) == int(x) for x in k):
            return int(k[0]), int(k[1])
    except (TypeError, ValueError):
        pass
    raise AnnotationError(path, f"{what} key {raw!r} is not a (video, dive) pair of integers",
                          "use the published file (keys like (1, 3))")


def _split(root: Path, dcfg: dict, key: str, name: str) -> list[tuple[int, int]]:
    path = need_file(root, dcfg[key], key, key.replace("_", " "), name)
    return [_pair(k, path, key.replace("_", " ")) for k in as_key_list(load_pickle(path, key.replace("_", " ")), path,
                                                                        key.replace("_", " "))]


def read(root: str | Path, dcfg: Mapping[str, Any]) -> DatasetIndex:
    """Samples of MTL-AQA split 0 (module docstring). Raises :class:`AnnotationError` for a missing
    or malformed file or non-finite scores; a judge off the scale is corrected or dropped and reported."""
    root = Path(root)
    name = dcfg.get("name", "mtl")
    ann_path = _annotation_file(root, dcfg)
    ann = load_pickle(ann_path, "MTL-AQA annotation file")
    if not isinstance(ann, dict) or not ann:
        raise AnnotationError(ann_path, f"expected a non-empty dict {{(video, dive): {{...}}}}, found "
                              f"{type(ann).__name__}{'' if ann else ' (empty)'}", "use the published file")
    train = _split(root, dcfg, "train_split", name)
    test = _split(root, dcfg, "test_split", name)
    check = LabelCheck(ann_path, judge_scale(dcfg, DIVING_SCALE, name), dcfg.get("rule_atol", RULE_ATOL))
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
    left_out = 0
    entries: dict[tuple[int, int], dict] = {}
    for raw_key, rec in ann.items():
        key = _pair(raw_key, ann_path, "annotation")
        if not isinstance(rec, dict):
            raise AnnotationError(ann_path, f"entry {key} holds a {type(rec).__name__}, expected a dict of fields "
                                  "(final_score, difficulty, judge_scores, ...)", "use the published file")
        entries[key] = rec
    for key, rec in entries.items():
        if key not in fold_of:
            left_out += 1
            continue
        v, d = key
        sid = f"{v:02d}_{d:02d}"
        try:
            final = to_float(rec["final_score"])
            difficulty = to_float(rec["difficulty"])
            judges = to_floats(rec["judge_scores"]) if rec.get("judge_scores") is not None else None
        except KeyError as exc:
            raise AnnotationError(ann_path, f"entry {key} has no {exc.args[0]!r} field", "use the published file") from None
        except (TypeError, ValueError) as exc:
            raise AnnotationError(ann_path, f"entry {key}: a score is not a number ({exc})", "use the published file") from None
        if judges is not None and len(judges) != RULE_JUDGES["mtl_middle3"]:
            raise AnnotationError(ann_path, f"entry {key}: judge_scores holds {len(judges)} values, expected "
                                  f"{RULE_JUDGES['mtl_middle3']} (an np.ndarray (7,) per dive)", "use the published file")
        if not check.finite(f"entry {key}", final_score=final, difficulty=difficulty, judge_scores=judges):
            continue
        extra: dict = {}
        if judges is not None:
            rule = "mtl_middle3"
            judges, extra = check.judges(sid, rule, judges, difficulty, final)
            if judges is None:
                continue
        else:
            judges, rule = (final,), "identity"
            judge_less += 1
        extra.update({f: to_int(rec[f]) for f in _EXTRA_FIELDS if f in rec and np.ndim(rec[f]) == 0
                      and np.issubdtype(np.asarray(rec[f]).dtype, np.number)})
        trimmed = trimmed_root / f"{v:02d}_{d:02d}"
        if trimmed.is_dir():
            source, frame_end = trimmed, None
        else:
            if "end_frame" not in rec:
                raise AnnotationError(ann_path, f"entry {key} has no end_frame for the untrimmed layout",
                                      f"extract trimmed frames to {trimmed}")
            source, frame_end = untrimmed_root / f"{v:02d}", to_int(rec["end_frame"])
        samples.append(Sample(
            id=sid, dataset=name, source=source, final_score=final, judge_scores=judges,
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
    warnings += check.report()
    samples.sort(key=lambda s: s.id)
    return DatasetIndex(samples, warnings, {"annotations": str(ann_path)}, check.outliers())
