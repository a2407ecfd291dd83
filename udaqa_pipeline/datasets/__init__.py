"""Dataset adapters: published annotation files -> a list of :class:`~.base.Sample`.

One thin module per dataset (``mtl``, ``finediving``, ``jigsaws``, ``aqa7``, ``folder``), each
with ``read(root, dcfg) -> DatasetIndex`` where ``dcfg`` is the stage's ``[dataset]`` section
(:class:`~udaqa_pipeline.config.DatasetConfig`, read-only), which says where each file sits under the root; ``dataset.adapter`` (default: the
dataset's name) picks the module, so a new stage can reuse an adapter under another name.

:func:`inspect_dataset` needs only the annotation files and returns the summary of
``udaqa-pipeline datasets inspect --json``.

Every adapter reads its labels through :class:`~.common.LabelCheck`: a NaN/inf score is refused
when the file is read (naming the rows), and a judge value off the dataset's judge scale is
corrected or dropped by one policy (:mod:`.common`), so training never sees it as written.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import config
from ..config import Config
from . import aqa7, finediving, folder, jigsaws, mtl
from .base import TRAIN_ONLY, Sample
from .common import AnnotationError, DatasetIndex
from .rules import RULE_ATOL, apply_rule

log = logging.getLogger(__name__)

#: Adapter modules by name.
DATASETS: dict[str, ModuleType] = {"mtl": mtl, "finediving": finediving, "jigsaws": jigsaws, "aqa7": aqa7, "folder": folder}

__all__ = ["DATASETS", "TRAIN_ONLY", "AnnotationError", "DatasetIndex", "Sample", "inspect_dataset", "skip_absent_groups",
           "load_dataset", "read_index"]


def _resolve(name: str, root: str | Path | None, cfg: Config | None) -> tuple[ModuleType, Path, Config]:
    if cfg is None:
        cfg = config.resolve(name)
    dcfg = cfg.dataset
    adapter = dcfg.get("adapter", dcfg.get("name", name))
    if adapter not in DATASETS:
        adapter = name
    if adapter not in DATASETS:
        raise AnnotationError(None, f"no adapter for dataset {name!r}", f"use one of {', '.join(DATASETS)} "
                              "or set dataset.adapter in the stage TOML")
    root_path = Path(root if root is not None else dcfg.get("root", "."))
    if not root_path.is_dir():
        raise AnnotationError(root_path, "dataset root folder does not exist",
                              f"pass --root DIR (the folder holding the {name} annotation files) or set dataset.root")
    return DATASETS[adapter], root_path, cfg


def read_index(name: str, root: str | Path | None = None, cfg: Config | None = None) -> DatasetIndex:
    """Samples plus the adapter's warnings. ``cfg=None`` loads ``stages/<name>.toml``;
    ``root=None`` uses ``dataset.root``."""
    module, root_path, cfg = _resolve(name, root, cfg)
    return module.read(root_path, cfg.dataset)


def load_dataset(name: str, root: str | Path | None = None, cfg: Config | None = None) -> list[Sample]:
    """Every sample of a dataset, read from its annotation files (no frames are opened)."""
    return read_index(name, root, cfg).samples


def load_stage_samples(cfg: Config, stage: str, root: str | Path | None = None, limit: int | None = None
                       ) -> tuple[list[Sample], Path]:
    """The samples a resolved stage config names (adapter ``dataset.name``, default the stage name),
    under ``root`` (default ``dataset.root``), the first ``limit`` only when given; and the root used."""
    root_p = Path(root if root is not None else cfg.dataset.get("root", "."))
    index = read_index(cfg.dataset.name or stage, root_p, cfg)
    if index.judge_outliers:
        # What training gets differs from the file here: say so where the cache is built, not only in inspect.
        log.warning(f"labels: {len(index.judge_outliers)} judge value(s) off the judge scale were corrected or dropped "
                    f"(`udaqa-pipeline datasets inspect {stage} --root {root_p}` lists them)")
    samples = skip_absent_groups(list(index.samples), stage, root_p)
    return (samples if limit is None else samples[: int(limit)]), root_p


def skip_absent_groups(samples: list[Sample], stage: str, root: Path) -> list[Sample]:
    """Drop the groups (JIGSAWS tasks, AQA-7 actions) of which no sample has its video or frame
    folder on disk, with one line on stderr naming them: having downloaded one task of several is
    the common case, and listing every trial of the others as missing hides real failures. Samples
    of a group with at least one source present are kept (their missing files are reported by
    stage one); a dataset with nothing on disk keeps everything, so each sample is reported."""
    groups = Counter(s.group for s in samples if s.group)
    present = {s.group for s in samples if s.group and Path(s.source).exists()}
    absent = [g for g in groups if g not in present]
    if not absent or not present:
        return samples
    log.warning(f"{stage}: no video or frames under {root} for {', '.join(f'{g} ({groups[g]} samples)' for g in absent)}: "
                f"skipped (dataset.tasks / the annotation files still list them)")
    return [s for s in samples if s.group not in absent]


def _folds(samples: list[Sample], per_group: bool) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    groups = sorted({s.group for s in samples}, key=[s.group for s in samples].index) if per_group else [None]
    for g in groups:
        members = [s for s in samples if per_group is False or s.group == g]
        for k in sorted({s.fold for s in members if s.fold != TRAIN_ONLY}):
            test = sum(s.fold == k for s in members)
            out[f"{g}/{k}" if per_group else str(k)] = {"train": len(members) - test, "test": test}
    return out


def published_judges(s: Sample) -> tuple[float, ...]:
    """The panel as the annotation file has it (before the judge policy corrected or dropped a value)."""
    return tuple(s.extra.get("published_judges", s.judge_scores))


def rule_mismatches(samples: list[Sample], atol: float = RULE_ATOL) -> list[str]:
    """Ids of samples whose stored final score differs from their rule applied to their judges as
    published (a fact about the file, comparable with REFERENCE's counts)."""
    by_key: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        by_key[(s.rule, len(published_judges(s)))].append(s)
    bad: list[str] = []
    for (rule, _), group in by_key.items():
        judges = np.array([published_judges(s) for s in group], dtype=np.float64)
        dd = np.array([np.nan if s.difficulty is None else s.difficulty for s in group])
        pred = apply_rule(rule, judges, dd)
        final = np.array([s.final_score for s in group])
        bad += [s.id for s, ok in zip(group, np.abs(pred - final) < atol) if not ok]
    return sorted(bad)


def inspect_dataset(name: str, root: str | Path | None = None, cfg: Config | None = None) -> dict[str, Any]:
    """Summary from the annotation files alone (the JSON of ``datasets inspect``).

    Keys: ``dataset``, ``n_samples``, ``folds`` (``{"k": {"train", "test"}}``; JIGSAWS
    ``"<Task>/<k>"``, counted within the task), ``judges_per_sample`` (panel size -> count),
    ``rule_mismatches`` (stored final score != rule(judges), within ``dataset.rule_atol``), both
    over the panels as published; ``score_range`` (group -> [min, max] final score);
    ``judge_outliers`` (judge values off the judge scale: ``{"id", "file", "judge", "value",
    "used"}``, ``used`` null = dropped); extra: ``rules``, ``warnings``, ``rule_mismatch_examples``,
    ``annotation_files``.

    Raises :class:`AnnotationError` for a missing or malformed file and for non-finite scores.
    """
    module, root_path, cfg = _resolve(name, root, cfg)
    index = module.read(root_path, cfg.dataset)
    samples = index.samples
    atol = float(cfg.dataset.get("rule_atol", RULE_ATOL))
    bad = rule_mismatches(samples, atol)
    ranges: dict[str, list[float]] = {}
    for s in samples:
        lo, hi = ranges.get(s.group, [s.final_score, s.final_score])
        ranges[s.group] = [min(lo, s.final_score), max(hi, s.final_score)]
    judges = Counter(len(published_judges(s)) for s in samples)
    return {
        "dataset": cfg.dataset.name or name,
        "n_samples": len(samples),
        "folds": _folds(samples, getattr(module, "FOLDS_PER_GROUP", False)),
        "judges_per_sample": {str(k): judges[k] for k in sorted(judges)},
        "rule_mismatches": len(bad),
        "score_range": {g: [round(lo, 6), round(hi, 6)] for g, (lo, hi) in ranges.items()},
        "judge_outliers": index.judge_outliers,
        "rules": dict(Counter(s.rule for s in samples)),
        "rule_mismatch_examples": bad[:10],
        "warnings": index.warnings,
        "annotation_files": index.files,
    }
