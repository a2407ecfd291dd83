"""Stage two's one input: the label table, a feature source and their provenance (a training set).

Everything stage two trains or evaluates on is a :class:`TrainingSet`:

- ``labels`` (:class:`Labels`): ids, judge panels, final scores, difficulty, rule, group, fold and
  status of every sample, read from the cache's label table (``samples.parquet``, refreshed from the
  annotation files by every ``features`` run) or from the dataset's samples (fine-tuning);
- ``source`` (:class:`FeatureSource`): where a batch's clip features (B, K, M) and downsampled video
  (B, L, 3, h, w) come from: :class:`CacheSource` reads the stage-one cache; fine-tuning's frame
  source decodes frames and runs a trainable I3D (its ``module``);
- ``provenance`` (:class:`Provenance`): stage, adapter, the cache's hash (runs refuse another
  cache's), the feature settings scoring needs (:data:`FEATURE_SECTIONS`), the cache directory.

:func:`from_cache` builds one from a cache; ``udaqa_pipeline.resolve.training_set`` from a stage
name, cache or run. The folds (official, leave-one-surgeon-out, dev) and the validation split are
pure functions of the labels, here too.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np
import torch
from torch import nn

from ..config import ConfigError, Train
from ..datasets.rules import judges_needed

SPLITS = ("official", "louo", "dev")
#: Inner folds per outer training set under ``split="dev"``.
DEV_INNER = 3


class FeatureSource(Protocol):
    n_views: int
    module: nn.Module | None

    def batch(self, indices: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]: ...


class CacheSource:
    """Reads features and video of a cache (already in memory) for given rows and views."""

    module = None

    def __init__(self, cache: Any) -> None:
        self.features = cache.features  # (N, V, K, M) float32
        self.video = cache.video  # (N, L, 3, h, w) uint8, view 0
        self.views = list(cache.views) or [{"flip": False, "shift": 0}]
        self.n_views = int(self.features.shape[1])

    def batch(self, indices: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices)
        v = np.asarray(views)
        return torch.from_numpy(np.ascontiguousarray(self.features[idx, v])), view_video(self.video, self.views, idx, v)


def view_video(video: Any, views: list[dict], idx: np.ndarray, v: np.ndarray) -> torch.Tensor:
    """The cache's downsampled video (N, L, 3, h, w) uint8 of rows ``idx``, each in its feature view
    ``v`` (flip / shift as stage one applied it, :func:`~udaqa_pipeline.features.apply_view`)."""
    from ..features import apply_view

    vid = video[idx]
    if (v != 0).any():
        vid = np.stack([apply_view(vid[i], views[int(v[i])]) if v[i] else vid[i] for i in range(len(idx))])
    return torch.from_numpy(np.ascontiguousarray(vid))


@dataclass
class Labels:
    """Per-sample labels of a cache, as numpy arrays (N rows, cache order)."""

    ids: list[str]
    judges: list[np.ndarray]  # raw panels (a single-label sample holds [final])
    final: np.ndarray
    difficulty: np.ndarray  # NaN where none
    rule: list[str]
    group: list[str]
    action: list[str]
    fold: np.ndarray
    ok: np.ndarray
    #: store row of each sample's features (-1: unknown); two samples share one when they read the
    #: same source over the same frame window (``cache.plan.row_identity``)
    feature_row: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    #: content fingerprint of each sample's source ("" unknown; ``cache.plan.source_fingerprint``):
    #: two paths to the same bytes share one
    content: list[str] = field(default_factory=list)

    @classmethod
    def from_table(cls, table: Any) -> "Labels":
        d = table.to_pydict()
        final = np.asarray([np.nan if x is None else x for x in d["final_score"]], float)
        judges = [np.asarray(j if j else [f], float) for j, f in zip(d["judge_scores"], final)]
        rules = [r if j else "identity" for r, j in zip(d["rule"], d["judge_scores"])]
        diff = np.asarray([np.nan if x is None else x for x in d["difficulty"]], float)
        return cls(ids=list(d["id"]), judges=judges, final=final, difficulty=diff, rule=rules,
                   group=[g or "" for g in d["group"]], action=[a or "" for a in d["action"]],
                   fold=np.asarray(d["fold"], int), ok=np.asarray([s == "ok" for s in d["status"]]),
                   feature_row=np.asarray([-1 if r is None else r for r in d.get("feature_row", [None] * len(final))], int))

    def n_judges(self, i: int) -> int:
        return judges_needed(self.rule[i], len(self.judges[i]))

    def difficulty_of(self, i: int) -> float | None:
        d = self.difficulty[i]
        return None if math.isnan(d) else float(d)


def label_scaling(labels: Labels, train_idx: np.ndarray, tcfg: Train) -> dict:
    """The run's label scaling: {"mode", "groups": [names], "lo": [...], "hi": [...]}.

    ``global`` mode has one group "" (every sample maps to it)."""
    mode = tcfg.label_scale
    if mode not in ("global", "per_group"):
        raise ConfigError(f"train.label_scale must be 'global' or 'per_group', not {mode!r}")
    rng = list(tcfg.label_range)
    if mode == "global":
        if rng:
            lo, hi = float(rng[0]), float(rng[1])
        else:
            vals = np.concatenate([labels.judges[i] for i in train_idx])
            lo, hi = float(vals.min()), float(vals.max())
        return {"mode": mode, "groups": [""], "lo": [lo], "hi": [_nonzero(lo, hi)]}
    groups = sorted({labels.group[i] for i in train_idx})
    lo_l, hi_l = [], []
    for g in groups:
        vals = np.concatenate([labels.judges[i] for i in train_idx if labels.group[i] == g])
        lo_l.append(float(vals.min()))
        hi_l.append(_nonzero(float(vals.min()), float(vals.max())))
    return {"mode": mode, "groups": groups, "lo": lo_l, "hi": hi_l}


def _nonzero(lo: float, hi: float) -> float:
    return hi if hi > lo else lo + 1.0  # a constant label still gets a usable range


def group_index(scaling: dict, groups: Iterable[str]) -> np.ndarray:
    if scaling["mode"] == "global":
        return np.zeros(len(list(groups)), dtype=np.int64)
    names = {g: i for i, g in enumerate(scaling["groups"])}
    out = []
    for g in groups:
        if g not in names:
            raise ConfigError(f"group {g!r} has no training samples, so it has no label range")
        out.append(names[g])
    return np.asarray(out, dtype=np.int64)


def subject_folds(labels: Labels) -> tuple[np.ndarray, list[str]]:
    """Leave-one-subject-out folds: (fold of every row, subject names); fold k = the k-th subject in
    sorted order. Subjects are JIGSAWS surgeons (the letter in ``Suturing_B001``); a row whose id
    names no subject raises :class:`ConfigError`."""
    from ..datasets.jigsaws import surgeon_of

    subj = [surgeon_of(i) for i in labels.ids]
    bad = [i for i, s in zip(labels.ids, subj) if s is None]
    if bad:
        raise ConfigError(f"split 'louo' needs a subject in every sample id (JIGSAWS <Task>_<surgeon><trial>); "
                          f"{len(bad)} ids have none (e.g. {bad[0]}): use split 'official'")
    names = sorted(set(subj))  # type: ignore[arg-type]
    return np.asarray([names.index(s) for s in subj], int), names


def shared_sources(labels: Labels, train_rows: np.ndarray, test_rows: np.ndarray) -> list[tuple[str, str]]:
    """(test id, training id) pairs of one fold that read the same source over the same window (one
    feature row), or the same bytes under two paths (one content fingerprint, when the cache
    records them): a test result on a video the model trained on."""
    out = []
    if len(labels.feature_row) == len(labels.ids):
        by_row = {int(labels.feature_row[i]): labels.ids[i] for i in train_rows if labels.feature_row[i] >= 0}
        out += [(labels.ids[i], by_row[int(labels.feature_row[i])]) for i in test_rows
                if int(labels.feature_row[i]) in by_row]
    if len(labels.content) == len(labels.ids):
        said = {a for a, _ in out}
        by_fp = {labels.content[i]: labels.ids[i] for i in train_rows if len(labels.content[i]) == 16}
        out += [(labels.ids[i], by_fp[labels.content[i]]) for i in test_rows
                if labels.ids[i] not in said and labels.content[i] in by_fp]
    return out


def split_folds(labels: Labels, fold: int, cv: int | None, seed: int, split: str = "official"
                ) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows) among the ok samples, by the cache's folds (``split="official"``), one
    fold per subject (``"louo"``, :func:`subject_folds`) or a seeded ``cv``-fold split."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, not {split!r}")
    ok = np.flatnonzero(labels.ok)
    if split == "dev":
        return dev_fold(labels, fold)
    if split == "louo":
        if cv is not None:
            raise ConfigError("--cv K and --split louo both choose the folds: pass one of them")
        folds, names = subject_folds(labels)
        if not 0 <= fold < len(names):
            raise ConfigError(f"--fold {fold} is out of range for --split louo: {len(names)} subjects "
                              f"({', '.join(names)}), folds 0..{len(names) - 1}")
        f = folds[ok]
    elif cv is not None:
        if cv < 2:
            raise ConfigError(f"--cv needs at least 2 folds, got {cv}")
        if not 0 <= fold < cv:
            raise ConfigError(f"--fold {fold} is out of range for --cv {cv}: use 0..{cv - 1}")
        perm = np.random.default_rng(seed).permutation(ok)
        folds = np.empty(len(labels.ok), int)
        folds[perm] = np.arange(len(perm)) % cv
        f = folds[ok]
    else:
        f = labels.fold[ok]
        have = sorted(set(f.tolist()) - {-1})
        if fold not in have:
            kind = "single-split dataset: only fold 0" if have == [0] else f"folds {have}"
            raise ConfigError(f"fold {fold} does not exist ({kind}); pick one of {have} or pass "
                              f"--cv K for K-fold cross-validation over the whole dataset")
    return ok[f != fold], ok[f == fold]


def dev_fold(labels: Labels, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """``split="dev"``, for choosing a recipe without any test fold: dev fold f = inner fold
    f % 3 of the training rows of official fold f // 3 (a seeded 3-way split of them, the same for
    every recipe); the official fold's test rows are left out entirely."""
    ok = np.flatnonzero(labels.ok)
    outer = sorted(set(labels.fold[ok].tolist()) - {-1})
    n = len(outer) * DEV_INNER
    if not 0 <= fold < n:
        raise ConfigError(f"--fold {fold} is out of range for --split dev: folds 0..{n - 1} "
                          f"({DEV_INNER} inner folds in each of the {len(outer)} official training sets)")
    k, i = outer[fold // DEV_INNER], fold % DEV_INNER
    rows = ok[labels.fold[ok] != k]
    inner = np.sort(np.random.default_rng(1000 + k).permutation(rows)[i::DEV_INNER])
    return np.setdiff1d(rows, inner), inner


def carve_validation(train_idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, val) split of the training rows; val holds round(fraction*n) >= 1 rows."""
    n_val = max(1, int(round(fraction * len(train_idx))))
    if n_val >= len(train_idx):
        raise ConfigError(f"{len(train_idx)} training samples are too few for a validation split")
    perm = np.random.default_rng(seed + 1).permutation(train_idx)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


FEATURE_SECTIONS = ("frames", "clips", "preprocess", "cache")


def feature_config(cache: Any) -> dict:
    """The cache manifest's :data:`FEATURE_SECTIONS` (those it has; {} for a cache without a config)."""
    conf = (getattr(cache, "manifest", None) or {}).get("config") or {}
    return {k: copy.deepcopy(conf[k]) for k in FEATURE_SECTIONS if isinstance(conf.get(k), dict)}


def labels_digest(labels: Labels, train_rows: Iterable[int], test_rows: Iterable[int]) -> str:
    """sha256 (16 hex) of what a run learns from and is tested on besides features: each training
    and test row's id, final score, judge panel, difficulty and group, and which side it is on.
    A label fix or a sample moved between training and test changes it."""
    import hashlib
    import json

    def row(i: int, side: str) -> list:
        d = labels.difficulty[i]
        return [side, labels.ids[i], float(labels.final[i]), [float(x) for x in labels.judges[i]],
                None if math.isnan(d) else float(d), labels.group[i]]

    rows = [row(int(i), "train") for i in train_rows] + [row(int(i), "test") for i in test_rows]
    return hashlib.sha256(json.dumps(sorted(rows), default=str).encode()).hexdigest()[:16]


def scoring_rules(labels: Labels, rows: Iterable[int]) -> dict[str, int]:
    """{rule: panel size} of ``rows`` as training saw them (a sample without judges is ``identity``
    over its final score, T = 1): each rule's most common panel size, the rules ordered by how many
    samples use them (ties by name), so the first is the run's rule."""
    from collections import Counter

    rows = list(rows)
    count = Counter(labels.rule[i] for i in rows)
    out: dict[str, int] = {}
    for r, _ in sorted(count.items(), key=lambda x: (-x[1], x[0])):
        sizes = Counter(len(labels.judges[i]) for i in rows if labels.rule[i] == r)
        out[r] = int(sorted(sizes.items(), key=lambda x: (-x[1], x[0]))[0][0])
    return out


@dataclass
class Provenance:
    """Where a training set's features come from: ``stage`` (the stage TOML's name), ``adapter``
    (the dataset adapter), ``cache_hash`` (the cache's ``config_hash``; a run records it and is only
    evaluated on the same features), ``feature_config`` (the :data:`FEATURE_SECTIONS` the features
    were made with), ``cache_dir`` (None for features computed on the fly)."""

    stage: str
    adapter: str
    cache_hash: str
    feature_config: dict = field(default_factory=dict)
    cache_dir: Path | None = None


@dataclass
class TrainingSet:
    """What stage two reads: ``labels``, ``source`` and ``provenance`` (module doc)."""

    labels: Labels
    source: FeatureSource
    provenance: Provenance
    n_features: int = 1024  #: M, the clip feature width

    def fresh(self) -> "TrainingSet":
        """This set with its trainable source started again from its first weights (a group's or an
        inner fold's own top of I3D: the source's ``fork()``); itself when nothing trains."""
        import dataclasses

        fork = getattr(self.source, "fork", None)
        return dataclasses.replace(self, source=fork()) if self.source.module is not None and fork else self


def from_cache(cache: Any, stage: str | None = None, source: FeatureSource | None = None) -> TrainingSet:
    """The training set of an opened stage-one cache (``cache.samples``, ``.features``,
    ``.manifest``); ``source`` replaces the cache as the feature source (its labels still come
    from the cache)."""
    m = getattr(cache, "manifest", None) or {}
    conf = m.get("config") or {}
    prov = Provenance(stage=str(stage or m.get("dataset", "")),
                      adapter=str(m.get("adapter") or conf.get("dataset", {}).get("name", "")),
                      cache_hash=str(m.get("config_hash", "")), feature_config=feature_config(cache),
                      cache_dir=getattr(cache, "path", None))
    labels = Labels.from_table(cache.samples)
    rows = getattr(cache, "rows", None)
    if rows is not None and "fingerprint" in rows.column_names and len(labels.feature_row) == len(labels.ids):
        fps = rows.column("fingerprint").to_pylist()
        labels.content = [(fps[r] or "") if 0 <= r < len(fps) else "" for r in labels.feature_row]
    return TrainingSet(labels, source or CacheSource(cache), prov, int(cache.features.shape[-1]))
