"""The one resolver: what a command works on when the user does not say it all.

- the stage (:func:`stage_from_runs`): a command of stage two (``train``, ``evaluate``, ``ablate``,
  ``cv``, ``finetune``) given no stage name takes the stage of the most recent run, so ``make
  train`` and then ``udaqa-pipeline evaluate --fold 2`` work without repeating the dataset;
- the device (:func:`device`): the explicit one, else CUDA (the rank's local GPU under torchrun)
  when present, else the CPU;
- a run directory (:func:`run_dir`): ``<runs>/<stage>/...`` by what the run is;
- a cache (:func:`cache_dir`): an explicit directory, the one a run was trained on (by its hash),
  or the stage's newest complete cache built with the config's feature settings;
- stage two's input (:func:`training_set`): labels, feature source and provenance of a cache.

Nothing else in the package looks caches up, picks a device or names a run directory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .config import cache_root as _cache_root
from .config import runs_root as _runs_root
from .errors import UdaqaError
from .runs.layout import CHECKPOINT, RunSpec, stage_name

#: Two stages whose newest runs are closer in time than this are both "the most recent".
AMBIGUOUS_WITHIN_S = 60.0


class ResolveError(UdaqaError):
    """What to work on cannot be told from what is on disk; the message lists the candidates and
    how to name one."""


def stage_from_runs(runs_root: str | Path | None = None) -> str:
    """The stage of the most recent run under ``runs_root`` (default ``$UDAQA_RUNS`` or
    ``<repo>/runs``).

    A run is a directory holding ``checkpoint.pt`` anywhere under ``<runs_root>/<stage>/`` (a
    fold, a per-group model, an ablation row, a cross-validation run, a fine-tuned run); its stage
    is that first directory's name, and its time is the checkpoint's modification time (training
    rewrites it every epoch, so a run in progress counts as recent). The stage returned is the one
    holding the newest checkpoint.

    Raises :class:`ResolveError`, listing every stage with its newest run and the fix (name the
    stage), when the answer is ambiguous, which is exactly one of:

    - there is no run at all under ``runs_root``;
    - the newest run of another stage is less than :data:`AMBIGUOUS_WITHIN_S` (60) seconds older
      than the newest run overall (e.g. two trainings ran side by side).
    """
    root = _runs_root(runs_root)
    newest: dict[str, tuple[float, Path]] = {}
    if root.is_dir():
        for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for ck in stage_dir.rglob(CHECKPOINT):
                t = ck.stat().st_mtime
                if stage_dir.name not in newest or t > newest[stage_dir.name][0]:
                    newest[stage_dir.name] = (t, ck.parent)
    if not newest:
        raise ResolveError(f"no stage given and no run under {root} to take it from (no {CHECKPOINT} in "
                           f"{root}/<stage>/...); name the stage, e.g. `udaqa-pipeline train mtl`")
    ranked = sorted(newest.items(), key=lambda kv: -kv[1][0])
    t0 = ranked[0][1][0]
    close = [s for s, (t, _) in ranked if t0 - t < AMBIGUOUS_WITHIN_S]
    if len(close) > 1:
        listing = "; ".join(f"{s} ({run}, {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))})"
                            for s, (t, run) in ranked)
        raise ResolveError(f"no stage given and the newest runs under {root} belong to {len(close)} stages "
                           f"within {AMBIGUOUS_WITHIN_S:.0f} s of each other ({', '.join(close)}); name the "
                           f"stage as the first argument. Runs by stage, newest first: {listing}")
    return ranked[0][0]


def device(explicit: Any = None) -> str:
    """``explicit`` as a string, else ``cuda:<LOCAL_RANK>`` when CUDA is available (0 outside
    torchrun), else ``cpu``."""
    if explicit is not None:
        return str(explicit)
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"


def run_dir(stage: str, kind: str = "train", *, fold: int = 0, cv: int | None = None, split: str = "official",
            runs_root: str | Path | None = None) -> Path:
    """Default directory of a run: ``<runs>/<stage>/`` + the name the run's spec gives it
    (:meth:`~udaqa_pipeline.runs.layout.RunSpec.leaf`: ``fold<k>``, ``cv<K>-fold<k>``,
    ``<split>-fold<k>``, ``finetune-fold<k>``, ``ablate-fold<k>`` or ``cv-<split>``). ``stage`` may
    be a stage TOML path (its stem is used)."""
    name = stage_name(stage)
    return _runs_root(runs_root) / name / RunSpec(name, fold=fold, cv=cv, split=split).leaf(kind)


def cache_by_hash(cache_hash: str, cache_root: str | Path | None = None) -> Path | None:
    """The cache directory named ``<stage>-<cache_hash>`` under the cache root that holds a
    manifest, or None (caches are named by stage, and a stage may read another adapter, so a run
    finds its cache by the hash it recorded)."""
    root = _cache_root(cache_root)
    if not cache_hash or not root.is_dir():
        return None
    return next((d for d in sorted(root.glob(f"*-{cache_hash}")) if (d / "manifest.json").is_file()), None)


def cache_dir(stage: str | None = None, *, cache: str | Path | None = None, cache_root: str | Path | None = None,
              cache_hash: str | None = None, cfg: Any = None) -> Path:
    """The cache to read: ``cache`` when given; else the one named by ``cache_hash`` (a run's);
    else ``stage``'s newest complete cache, and with ``cfg`` (a run's resolved config) the newest
    whose features were made with ``cfg``'s settings (:func:`matching_cache`). Raises ``CacheError``
    naming the fix when there is none."""
    from .cache import CacheError, find_cache

    if cache is not None:
        return Path(cache)
    if cache_hash:
        d = cache_by_hash(cache_hash, cache_root)
        if d is None:
            raise CacheError(f"no cache with hash {cache_hash} under {_cache_root(cache_root)} (the run's features); "
                             f"pass --cache DIR, or rebuild it with `udaqa-pipeline features` and the run's settings")
        return d
    if stage is None:
        raise ValueError("cache_dir needs a stage, a cache or a cache hash")
    if cfg is not None:
        return matching_cache(stage_name(stage), cfg, cache_root)
    return find_cache(stage_name(stage), cache_root)


#: A feature setting of the cache key -> the ``--set`` key a user changes it with.
_SETTING = {"video_size": "cache.video_size", "views": "cache.views / cache.view_shift", "dtype": "cache.dtype"}


def matching_cache(stage: str, cfg: Any, cache_root: str | Path | None = None) -> Path:
    """The newest complete cache of ``stage`` whose features were made with ``cfg``'s feature
    settings (the cache key's frames, clips, preprocess, video size, views and dtype,
    :func:`~udaqa_pipeline.cache.manifest.extraction_key`; not the samples, labels or cut, and not
    the I3D weights, which no setting of a run names), so a run never trains on features its own
    config does not describe.

    Raises ``CacheError``: with none of the stage's caches matching, naming the newest one's
    differing settings and the fixes (its settings, ``--cache DIR``, or a cache built with these)."""
    from .cache import CacheError, find_cache
    from .cache.manifest import extraction_key, feature_settings
    from .cache.store import complete_caches
    from .features.views import make_views

    def settings(key: dict) -> dict:
        return {k: v for k, v in feature_settings(key).items() if k != "weights_sha256"}

    c = cfg.cache
    want = settings(extraction_key(dataset=stage, cfg=cfg, views=make_views(c.views, c.view_shift), dtype=c.dtype,
                                   weights_sha256=""))
    caches = complete_caches(stage, cache_root)
    if not caches:
        return find_cache(stage, cache_root)  # raises its message: no cache for the stage at all
    found = [d for d, m in caches if settings(m.get("hashed") or {}) == want]
    if found:
        return found[-1]
    newest, m = caches[-1]
    have = settings(m.get("hashed") or {})
    diffs = []
    for k in sorted(set(have) | set(want)):
        a, b = have.get(k), want.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{k}.{s} = {a.get(s)!r} (this run: {b.get(s)!r})" for s in sorted(set(a) | set(b))
                      if a.get(s) != b.get(s)]
        elif a != b:
            diffs.append(f"{_SETTING.get(k, k)} = {a!r} (this run: {b!r})")
    raise CacheError(f"no {stage} cache under {_cache_root(cache_root)} holds features made with this run's settings; "
                     f"the newest, {newest}, was built with {'; '.join(diffs)}. Train with the settings it was built "
                     f"with (--set ...), name it with --cache {newest}, or build one with these settings "
                     f"(`udaqa-pipeline features {stage} --root DIR` and the same --set)")


def training_set(stage: str | None = None, *, cache: Any = None, cache_root: str | Path | None = None,
                 cache_hash: str | None = None, source: Any = None, cfg: Any = None) -> Any:
    """Stage two's input (:class:`~udaqa_pipeline.data.trainset.TrainingSet`) of a cache: ``cache`` an
    opened cache object or a directory, else found by :func:`cache_dir`; ``source`` a feature source
    other than the cache (its labels and provenance still come from the cache)."""
    from .cache import open_cache
    from .data.trainset import from_cache

    if cache is None or isinstance(cache, (str, Path)):
        cache = open_cache(cache_dir(stage, cache=cache, cache_root=cache_root, cache_hash=cache_hash, cfg=cfg))
    return from_cache(cache, stage_name(stage) if stage is not None else None, source)
