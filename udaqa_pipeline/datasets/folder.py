"""A user's own videos: ``annotations.csv`` at the root.

Columns (header row required, order free): ``id``, ``path`` (a video file or a frame folder,
relative to the root), ``final_score``; optional ``judge_scores`` (semicolon-separated, e.g.
``7.5;8;8.5``), ``difficulty``, ``action``, ``split``.

- ``split``: ``train`` (or empty) -> ``TRAIN_ONLY``; ``test`` -> fold 0; an integer ``k`` -> the
  sample is in test fold ``k`` (k-fold CV of your own). A column of bare 0/1 (no other value) is
  ambiguous, "is test" as often as "is train" or two folds, and is refused unless
  ``dataset.split_integers`` says which: ``"fold"`` (0 and 1 are folds), ``"is_test"`` (1 = test
  fold 0, 0 = train) or ``"is_train"`` (1 = train, 0 = test fold 0).
- Encoding: UTF-8 (a byte-order mark is fine); another (``dataset.encoding = "cp1252"``, Excel's
  "CSV" on Windows) must be named, a file that is not valid in it is refused naming the byte.
- Rule: ``dataset.rule = "auto"`` gives ``identity`` for rows without judges (the final score is
  the only label) and ``mean`` for rows with a panel; any rule name of
  :mod:`~udaqa_pipeline.datasets.rules` forces that rule for every row (its judge count and
  difficulty are then checked row by row).
- ``group`` is the dataset name (one model); ``action`` is kept as given.
- Refused, naming the file and rows: a column outside the list above (a typo such as
  ``judge_score`` would otherwise be ignored and lose the judges), a row with more fields than the
  header, and NaN/inf in ``final_score``, ``judge_scores`` or ``difficulty`` (Python reads "nan" and
  "inf" as numbers; one of them makes every training loss NaN).
- Judge scale: ``dataset.judge_scale = [lo, hi]`` and ``dataset.judge_step`` (default ``[]``: none,
  only finiteness is checked). When set, each row's panel (a row without judges: its final score,
  the one judge of ``identity``) goes through the judge policy of :mod:`.common`: a value off the
  scale is used divided by 10 when that is on the scale and the rule then gives the row's final
  score, else it is dropped (a row left without judges is left out); all reported by id.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping

from .base import TRAIN_ONLY, Sample
from .common import AnnotationError, DatasetIndex, LabelCheck, judge_scale, need_file
from .rules import DIFFICULTY_RULES, RULE_JUDGES, check_rule

REQUIRED = ("id", "path", "final_score")
OPTIONAL = ("judge_scores", "difficulty", "action", "split")


def _float(text: str, path: Path, row: int, col: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise AnnotationError(path, f"row {row}: {col} {text!r} is not a number", "fix the CSV") from None


def _columns(path: Path, cols: list[str]) -> None:
    """Refuse a header that is not the published one: missing required or unknown columns."""
    expected = "id,path,final_score[," + ",".join(OPTIONAL) + "]"
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        hint = ""
        if len(cols) == 1 and any(sep in cols[0] for sep in ";\t"):
            hint = " (the header is one column: the file is not comma-separated)"
        raise AnnotationError(path, f"missing column(s) {', '.join(missing)} (found {cols}){hint}",
                              f"the header needs {expected}, separated by commas")
    unknown = [c for c in cols if c not in REQUIRED + OPTIONAL]
    if unknown:
        raise AnnotationError(path, f"unknown column(s) {', '.join(unknown)} (found {cols})",
                              f"rename or remove them: the columns are {expected}")


def read(root: str | Path, dcfg: Mapping[str, Any]) -> DatasetIndex:
    """Samples of ``annotations.csv`` (module docstring). Raises :class:`AnnotationError` naming the
    row for a malformed file or row, or non-finite scores."""
    root = Path(root)
    name = dcfg.get("name", "folder")
    rule_cfg = dcfg.get("rule", "auto")
    if rule_cfg != "auto":
        check_rule(rule_cfg)
    path = need_file(root, dcfg.get("annotations", "annotations.csv"), "annotations", "annotations.csv", name)
    encoding = str(dcfg.get("encoding", "utf-8-sig"))
    try:
        with path.open(newline="", encoding=encoding) as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            _columns(path, cols)
            rows = []
            for n, r in enumerate(reader, 2):
                if None in r:  # DictReader files the fields past the header under the key None
                    raise AnnotationError(path, f"row {n} has {len(cols) + len(r[None])} fields, the header {len(cols)}",
                                          "quote values that hold commas, or fix the row")
                rows.append({k.strip(): (v or "").strip() for k, v in r.items()})
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, f"not valid {encoding} text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                              "save it as UTF-8 (Excel: \"CSV UTF-8\"), or name its encoding, e.g. "
                              "--set dataset.encoding=cp1252") from exc
    except LookupError as exc:
        raise AnnotationError(path, f"dataset.encoding = {encoding!r} is not an encoding", "use e.g. utf-8 or cp1252") from exc
    if not rows:
        raise AnnotationError(path, "no rows", "add one row per video")
    split_of = _split_reader(path, [r.get("split", "").lower() for r in rows], str(dcfg.get("split_integers", "auto")))
    check = LabelCheck(path, judge_scale(dcfg, None, name))
    samples: list[Sample] = []
    seen: set[str] = set()
    for n, r in enumerate(rows, 2):  # row numbers as a spreadsheet shows them (header = 1)
        sid = r["id"]
        if not sid or sid in seen:
            raise AnnotationError(path, f"row {n}: id {sid!r} is empty or repeated", "give every row a unique id")
        seen.add(sid)
        final = _float(r["final_score"], path, n, "final_score")
        judges_txt = r.get("judge_scores", "")
        judges = tuple(_float(x, path, n, "judge score") for x in judges_txt.split(";") if x.strip()) if judges_txt else ()
        difficulty = _float(r["difficulty"], path, n, "difficulty") if r.get("difficulty") else None
        if rule_cfg == "auto":
            rule = "mean" if len(judges) > 1 else "identity"
        else:
            rule = rule_cfg
        if not check.finite(f"row {n} (id {sid})", final_score=final, judge_scores=judges, difficulty=difficulty):
            continue
        if not judges:
            judges = (final,)
        need = RULE_JUDGES[rule]
        if need is not None and len(judges) != need:
            raise AnnotationError(path, f"row {n}: rule {rule!r} needs {need} judge scores, got {len(judges)}",
                                  "fix judge_scores or set dataset.rule")
        if rule in DIFFICULTY_RULES and difficulty is None:
            raise AnnotationError(path, f"row {n}: rule {rule!r} needs a difficulty", "fill the difficulty column")
        fold = split_of(n, r.get("split", "").lower())
        if not r["path"]:
            raise AnnotationError(path, f"row {n}: empty path", "give the video file or frame folder, relative to the root")
        judges, extra = check.judges(sid, rule, judges, difficulty, final)
        if judges is None:
            continue
        samples.append(Sample(
            id=sid, dataset=name, source=root / r["path"], final_score=final, judge_scores=judges,
            difficulty=difficulty, rule=rule, action=r.get("action", ""), group=name, fold=fold, extra=extra,
        ))
    warnings = check.report()
    return DatasetIndex(samples, warnings, {"annotations": str(path)}, check.outliers())


SPLIT_INTEGERS = ("auto", "fold", "is_test", "is_train")


def _split_reader(path: Path, splits: list[str], meaning: str):
    """``fold(row_number, split)`` for this file's split column; refuses a bare 0/1 column unless
    ``meaning`` (``dataset.split_integers``) says what its integers are."""
    if meaning not in SPLIT_INTEGERS:
        raise AnnotationError(path, f"dataset.split_integers = {meaning!r}", f"use one of {', '.join(SPLIT_INTEGERS)}")
    used = {x for x in splits if x}
    binary = bool(used) and used <= {"0", "1"}
    if binary and meaning == "auto":
        raise AnnotationError(path, "the split column holds only 0 and 1, which reads as \"is test\", \"is train\" or "
                              "two folds alike", "say which: --set dataset.split_integers=is_test (1 = test), "
                              "is_train (1 = train) or fold (folds 0 and 1); or write train/test")
    flags = {"is_test": {"1": 0, "0": TRAIN_ONLY}, "is_train": {"1": TRAIN_ONLY, "0": 0}}.get(meaning)

    def fold(n: int, split: str) -> int:
        if split in ("", "train"):
            return TRAIN_ONLY
        if split == "test":
            return 0
        if split.isdigit():
            return flags[split] if flags is not None and binary else int(split)
        raise AnnotationError(path, f"row {n}: split {split!r}", "use train, test or a fold number")

    return fold
