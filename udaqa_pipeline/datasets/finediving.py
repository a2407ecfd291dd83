"""FineDiving adapter (REFERENCE section 3), reading the published pickles as they are.

- ``Annotations/FineDiving_coarse_annotation.pkl``: ``(event, index) -> {action_type, start_frame,
  end_frame, dive_score, difficulty, judge_scores}``. The panel size picks the rule
  (:func:`~udaqa_pipeline.datasets.rules.finediving_rule`): 7 judges -> ``mtl_middle3``, 3 ->
  ``sum_dd``, 5 (synchronised) -> ``sum_dd_0.6``. Dives whose stored score breaks their rule are
  reported by ``inspect`` and kept as published.
- Without the coarse file, ``fine-grained_annotation_aqa.pkl`` (value ``[action_type, dive_score,
  difficulty, steps_transit_frames, frames_labels]``) still gives the final score, then the only
  label (rule ``identity``), with a warning.
- ``train_split.pkl`` / ``test_split.pkl``: lists of keys; test -> ``fold = 0``.
- Frames: ``FINADiving_MTL_256s/<event>/<index>/`` holds the dive's frames; the window spreads over
  the whole folder (``frames.mode = "uniform"``, as TSA samples it).
- 1369 of these dives are MTL-AQA dives and the two datasets' splits disagree: never pretrain on one
  and test on the other.
"""

from __future__ import annotations

from pathlib import Path

from .base import TRAIN_ONLY, Sample
from .common import (
    AnnotationError, DatasetIndex, as_key_list, dataset_cfg, load_pickle, need_file, norm_key, resolve, to_float, to_floats,
    to_int,
)
from .rules import finediving_rule


def _key(raw, path: Path) -> tuple[str, int]:
    k = norm_key(raw)
    if len(k) != 2:
        raise AnnotationError(path, f"key {raw!r} is not an (event, index) pair", "use the published file")
    return str(k[0]), int(k[1])


def read(root: str | Path, cfg: dict) -> DatasetIndex:
    root = Path(root)
    dcfg = dataset_cfg(cfg)
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
        raise AnnotationError(ann_path, "expected a non-empty dict {(event, index): ...}", "use the published file")
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
        samples.append(Sample(
            id=f"{event}/{index}", dataset=name, source=frames_root / event / str(index), final_score=final,
            judge_scores=judges, difficulty=difficulty, rule=rule, action=action, group=name,
            fold=split[(event, index)], extra=extra,
        ))
    missing = [k for k in split if k not in entries]
    if missing:
        warnings.append(f"{len(missing)} split keys have no annotation entry (e.g. {missing[0]}); skipped")
    if left_out:
        warnings.append(f"{left_out} annotated dives are in neither split; left out")
    samples.sort(key=lambda s: (s.id.split("/")[0], int(s.id.rsplit("/", 1)[1])))
    return DatasetIndex(samples, warnings, {"annotations": str(ann_path)})
