"""JIGSAWS adapter (REFERENCE section 3): 103 trials in 3 tasks, GRS = sum of 6 items.

Labels, first found:

- MUSDL ``info/label.pkl``: trial name -> the 6 GRS items (1..5); rule ``sum`` (6..30). A file
  holding one number per trial is read as the GRS total alone (rule ``identity``).
- the official ``<Task>/meta_file_<Task>.txt`` per task: whitespace-separated ``trial skill GRS
  item1..item6``; judges = the 6 items, final = the published GRS column (a row whose items do not
  sum to it is reported by ``inspect`` as a rule mismatch, kept as published).

Folds (4 per task, ``Sample.fold = k`` = the fold that tests the trial, ``group`` = task):

- MUSDL ``info/splits.pkl``: task -> 4 lists of trial names (a dict ``{k: [...]}`` works too);
- without it, folds by surgeon (leave-users-out, so no surgeon is in train and test of one fold):
  surgeons sorted by letter, surgeon ``i`` -> fold ``i % 4``. These are NOT MUSDL's folds, and
  ``inspect`` says so.

Labels (:class:`~.common.LabelCheck`): a NaN/inf score refuses the file, naming the trials; items are
held against ``dataset.judge_scale`` / ``judge_step`` (default GRS items: integers 1..5). By the judge
policy of :mod:`.common` an item off the scale is used divided by 10 when that is on the scale and the
items then sum to the published GRS (meta files), else dropped; ``label.pkl`` publishes no GRS (it is
the items' sum), so a trial with an item off the scale is left out there. A label of other than 6
items (or one GRS total), a meta line of other than 9 fields or a split of other than 4 folds per
task is refused with what was found.

Source: the frame folder ``frames/<trial>_capture1/`` when it exists, else the video
``<Task>/video/<trial>_capture1.avi``; the window is 160 frames spread uniformly over it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .base import Sample
from .common import GRS_ITEM_SCALE, AnnotationError, DatasetIndex, LabelCheck, judge_scale, load_pickle, resolve, to_floats

#: ``datasets inspect`` keys the folds "<Task>/<k>": each task has its own 4-fold CV.
FOLDS_PER_GROUP = True
N_FOLDS = 4
_SURGEON = re.compile(r"_([A-Za-z])\d+$")


def surgeon_of(trial: str) -> str | None:
    """The surgeon (subject) letter of a JIGSAWS trial name, upper case (``Suturing_B001`` -> ``B``),
    or None when the name does not end in ``_<letter><digits>``."""
    m = _SURGEON.search(str(trial))
    return m.group(1).upper() if m else None


def _task_of(trial: str, tasks: list[str]) -> str | None:
    # Longest match first so a task name that prefixes another cannot steal its trials.
    for t in sorted(tasks, key=len, reverse=True):
        if trial.startswith(t + "_") or trial == t:
            return t
    return None


def _read_meta(path: Path) -> dict[str, tuple[tuple[float, ...], float, str]]:
    out = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 9:
            raise AnnotationError(path, f"line {n} has {len(parts)} fields, expected 9: trial, skill, GRS and 6 items",
                                  "use the official meta file")
        try:
            total = float(parts[2])
            items = tuple(float(x) for x in parts[3:9])
        except ValueError:
            raise AnnotationError(path, f"line {n}: non-numeric score in {line.strip()!r}", "use the official meta file") from None
        out[parts[0]] = (items, total, parts[1])
    return out


def _split_folds(obj, path: Path, tasks: list[str]) -> dict[str, int]:
    fold_of: dict[str, int] = {}
    if not isinstance(obj, dict):
        raise AnnotationError(path, "expected a dict task -> 4 folds of trial names", "use MUSDL's splits.pkl")
    for task, folds in obj.items():
        if isinstance(folds, dict):
            folds = [folds[k] for k in sorted(folds)]
        if len(folds) != N_FOLDS:
            raise AnnotationError(path, f"task {task!r} has {len(folds)} folds, expected {N_FOLDS} lists of trial names",
                                  "use MUSDL's splits.pkl")
        for k, trials in enumerate(folds):
            for t in np.asarray(trials).reshape(-1).tolist():
                fold_of[str(t.decode() if isinstance(t, bytes) else t)] = k
    return fold_of


def read(root: str | Path, dcfg: Mapping[str, Any]) -> DatasetIndex:
    root = Path(root)
    name = dcfg.get("name", "jigsaws")
    tasks = list(dcfg.get("tasks", ["Suturing", "Knot_Tying", "Needle_Passing"]))
    warnings: list[str] = []
    labels_path = resolve(root, dcfg["labels"])
    labels: dict[str, tuple[tuple[float, ...], float, str, str]] = {}  # trial -> judges, final, rule, skill
    notes: dict[str, dict] = {}  # trial -> Sample.extra from the judge policy
    scale = judge_scale(dcfg, GRS_ITEM_SCALE, name)
    checks: list[LabelCheck] = []
    if labels_path.is_file():
        raw = load_pickle(labels_path, "JIGSAWS label file")
        if not isinstance(raw, dict):
            raise AnnotationError(labels_path, "expected a dict trial -> 6 GRS items", "use MUSDL's label.pkl")
        checks.append(check := LabelCheck(labels_path, scale))
        for trial, val in raw.items():
            items = to_floats(val)
            if len(items) not in (1, 6):
                raise AnnotationError(labels_path, f"trial {trial!r} has {len(items)} values, expected 6 GRS items "
                                      "(or one GRS total)", "use MUSDL's label.pkl")
            if not check.finite(f"trial {trial}", label=items):
                continue
            if len(items) == 1:
                labels[str(trial)] = (items, items[0], "identity", "")
                continue
            items, notes[str(trial)] = check.judges(str(trial), "sum", items, None, None)
            if items is not None:
                labels[str(trial)] = (items, float(sum(items)), "sum", "")
        source_file = str(labels_path)
    else:
        metas = [(t, resolve(root, dcfg["meta_file"].format(task=t))) for t in tasks]
        found = [(t, p) for t, p in metas if p.is_file()]
        if not found:
            raise AnnotationError(
                labels_path, "no JIGSAWS labels: neither this file nor any official meta file "
                + ", ".join(str(p) for _, p in metas),
                "put MUSDL's info/label.pkl (+ info/splits.pkl) or the official <Task>/meta_file_<Task>.txt under --root",
            )
        for t, p in metas:
            if not p.is_file():
                warnings.append(f"no meta file for task {t} ({p}); task skipped")
        for _, p in found:
            checks.append(check := LabelCheck(p, scale))
            for trial, (items, total, skill) in _read_meta(p).items():
                if not check.finite(f"trial {trial}", GRS=total, items=items):
                    continue
                used, notes[trial] = check.judges(trial, "sum", items, None, total)
                if used is not None:
                    labels[trial] = (used, total, "sum", skill)
        source_file = ", ".join(str(p) for _, p in found)

    splits_path = resolve(root, dcfg["splits"])
    if splits_path.is_file():
        fold_of = _split_folds(load_pickle(splits_path, "JIGSAWS split file"), splits_path, tasks)
    else:
        fold_of = {}
        for t in tasks:
            trials = sorted(tr for tr in labels if _task_of(tr, tasks) == t)
            surgeons = sorted({s for tr in trials if (s := surgeon_of(tr))})
            rank = {s: i % N_FOLDS for i, s in enumerate(surgeons)}
            for i, tr in enumerate(trials):
                s = surgeon_of(tr)
                fold_of[tr] = rank[s] if s else i % N_FOLDS
        warnings.append(f"no {splits_path.name}: 4 folds per task made by surgeon (surgeon i -> fold i % 4); "
                        "these are not MUSDL's folds")

    samples: list[Sample] = []
    no_task, no_fold = [], []
    for trial, (judges, final, rule, skill) in labels.items():
        task = _task_of(trial, tasks)
        if task is None:
            no_task.append(trial)
            continue
        if trial not in fold_of:
            no_fold.append(trial)
            continue
        frames = resolve(root, dcfg["frames"].format(trial=trial, task=task))
        video = resolve(root, dcfg["video"].format(trial=trial, task=task))
        samples.append(Sample(
            id=trial, dataset=name, source=frames if frames.is_dir() else video, final_score=final,
            judge_scores=judges, difficulty=None, rule=rule, action=task, group=task, fold=fold_of[trial],
            extra={**notes.get(trial, {}), **({"skill": skill} if skill else {})},
        ))
    if no_task:
        warnings.append(f"{len(no_task)} trials match none of the tasks {tasks} (e.g. {no_task[0]}); left out")
    if no_fold:
        warnings.append(f"{len(no_fold)} trials are in no fold of {splits_path.name} (e.g. {no_fold[0]}); left out")
    stray = [t for t in fold_of if t not in labels]
    if stray and splits_path.is_file():
        warnings.append(f"{len(stray)} trials in {splits_path.name} have no label (e.g. {stray[0]}); skipped")
    for check in checks:
        warnings += check.report()
    samples.sort(key=lambda s: (tasks.index(s.group), s.id))
    return DatasetIndex(samples, warnings, {"labels": source_file}, [o for c in checks for o in c.outliers()])
