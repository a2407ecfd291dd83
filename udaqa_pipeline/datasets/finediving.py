"""FineDiving adapter (REFERENCE section 3), reading the published pickles as they are.

- ``Annotations/FineDiving_coarse_annotation.pkl``: ``(event, index) -> {action_type, start_frame,
  end_frame, dive_score, difficulty, judge_scores}``. The panel size picks the rule
  (:func:`~udaqa_pipeline.datasets.rules.finediving_rule`): 7 judges -> ``mtl_middle3``, 3 ->
  ``sum_dd``, 5 (synchronised) -> ``sum_dd_0.6``. Dives whose stored score breaks their rule are
  reported by ``inspect`` and kept as published.
- Labels (:class:`~.common.LabelCheck`): a NaN/inf score refuses the file, naming the dives; judges
  are held against ``dataset.judge_scale`` / ``judge_step`` (default the published 0..10 in steps of
  0.5). The published file holds 55.5, 45.0 and 8.9: by the judge policy of :mod:`.common` a value
  whose tenth is on the scale and makes the rule give the stored score is used divided by 10, any
  other is dropped from the panel; both are reported by dive id.
- Without the coarse file, ``fine-grained_annotation_aqa.pkl`` (value ``[action_type, dive_score,
  difficulty, steps_transit_frames, frames_labels]``, exactly 5 items) still gives the final score,
  then the only label (rule ``identity``), with a warning.
- ``train_split.pkl`` / ``test_split.pkl``: lists of keys; test -> ``fold = 0``.
- Frames: ``FINADiving_MTL_256s/<event>/<index>/`` holds the dive's frames; the window spreads over
  the whole folder (``frames.mode = "uniform"``, as TSA samples it).
- 1369 of these dives are MTL-AQA dives and the two datasets' splits disagree: never pretrain on one
  and test on the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .base import TRAIN_ONLY, Sample
from .common import (
    DIVING_SCALE, AnnotationError, DatasetIndex, LabelCheck, as_key_list, judge_scale, load_pickle, need_file,
    norm_key, resolve, to_float, to_floats, to_int,
)
from .rules import RULE_ATOL, finediving_rule

#: Items of one fine-grained entry (REFERENCE section 3).
FINE_FIELDS = ("action_type", "dive_score", "difficulty", "steps_transit_frames", "frames_labels")


def _key(raw, path: Path) -> tuple[str, int]:
    k = norm_key(raw)
    if len(k) != 2:
        raise AnnotationError(path, f"key {raw!r} is not an (event, index) pair", "use the published file")
    return str(k[0]), int(k[1])


def read(root: str | Path, dcfg: Mapping[str, Any]) -> DatasetIndex:
    """Samples of FineDiving (module docstring). Raises :class:`AnnotationError` for a missing or
    malformed file or non-finite scores; a judge off the scale is corrected or dropped and reported."""
    root = Path(root)
    name = dcfg.get("name", "finediving")
    warnings: list[str] = []
    coarse_path = resolve(root, dcfg["annotations"])
    fine_path = resolve(root, dcfg.get("fine_annotations", "Annotations/fine-grained_annotation_aqa.pkl"))
    if coarse_path.is_file():
        ann_path, coarse = coarse_path, True
    elif fine_path.is_file():
        ann_path, coarse = fine_path, False
        warnings.append(f"{coarse_path.name} not found: using {fine_path.name}, which has no judge scores "
                        "(the final score is the only label)")
    else:
        raise AnnotationError(coarse_path, "missing FineDiving coarse annotation file",
                              "put FineDiving_coarse_annotation.pkl there, pass --root to the folder that holds "
                              f"Annotations/, or set dataset.annotations=PATH (stages/{name}.toml)")
    ann = load_pickle(ann_path, "FineDiving annotation file")
    if not isinstance(ann, dict) or not ann:
        raise AnnotationError(ann_path, f"expected a non-empty dict {{(event, index): ...}}, found {type(ann).__name__}"
                              f"{'' if ann else ' (empty)'}", "use the published file")
    check = LabelCheck(ann_path, judge_scale(dcfg, DIVING_SCALE, name) if coarse else None,
                       dcfg.get("rule_atol", RULE_ATOL))
    split = {}
    for key_name, fold in (("train_split", TRAIN_ONLY), ("test_split", 0)):
        p = need_file(root, dcfg[key_name], key_name, key_name.replace("_", " "), name)
        for k in as_key_list(load_pickle(p, key_name.replace("_", " ")), p, key_name):
            split[_key(k, p)] = fold
    frames_root = resolve(root, dcfg.get("frames", "FINADiving_MTL_256s"))

    samples: list[Sample] = []
    left_out = 0
    entries = {}
    for raw_key, rec in ann.items():
        entries[_key(raw_key, ann_path)] = rec
    for (event, index), rec in entries.items():
        if (event, index) not in split:
            left_out += 1
            continue
        if coarse and not isinstance(rec, dict):
            raise AnnotationError(ann_path, f"entry {(event, index)} holds a {type(rec).__name__}, expected a dict with "
                                  "dive_score, difficulty, judge_scores, ...", "use FineDiving_coarse_annotation.pkl as published")
        if not coarse and (not isinstance(rec, (list, tuple)) or len(rec) != len(FINE_FIELDS)):
            found = f"{len(rec)} items" if isinstance(rec, (list, tuple)) else f"a {type(rec).__name__}"
            raise AnnotationError(ann_path, f"entry {(event, index)} holds {found}, expected the {len(FINE_FIELDS)} items "
                                  f"[{', '.join(FINE_FIELDS)}]", "use fine-grained_annotation_aqa.pkl as published")
        try:
            if coarse:
                final = to_float(rec["dive_score"])
                difficulty = to_float(rec["difficulty"])
                judges = to_floats(rec["judge_scores"])
                rule = finediving_rule(len(judges))
                action = str(rec.get("action_type", ""))
                extra = {f: to_int(rec[f]) for f in ("start_frame", "end_frame") if f in rec}
            else:
                action, final, difficulty = str(rec[0]), to_float(rec[1]), to_float(rec[2])
                judges, rule, extra = (final,), "identity", {}
        except (KeyError, IndexError, TypeError) as exc:
            raise AnnotationError(ann_path, f"entry {(event, index)} lacks a field ({exc})", "use the published file") from None
        except ValueError as exc:
            raise AnnotationError(ann_path, f"entry {(event, index)}: {exc}", "use the published file") from None
        sid = f"{event}/{index}"
        if not check.finite(f"entry {(event, index)}", dive_score=final, difficulty=difficulty,
                            judge_scores=judges if coarse else None):
            continue
        if coarse:
            judges, fixed = check.judges(sid, rule, judges, difficulty, final)
            if judges is None:
                continue
            extra.update(fixed)
        samples.append(Sample(
            id=sid, dataset=name, source=frames_root / event / str(index), final_score=final,
            judge_scores=judges, difficulty=difficulty, rule=rule, action=action, group=name,
            fold=split[(event, index)], extra=extra,
        ))
    missing = [k for k in split if k not in entries]
    if missing:
        warnings.append(f"{len(missing)} split keys have no annotation entry (e.g. {missing[0]}); skipped")
    if left_out:
        warnings.append(f"{left_out} annotated dives are in neither split; left out")
    warnings += check.report()
    samples.sort(key=lambda s: (s.id.split("/")[0], int(s.id.rsplit("/", 1)[1])))
    return DatasetIndex(samples, warnings, {"annotations": str(ann_path)}, check.outliers())
