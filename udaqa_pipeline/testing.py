"""Synthetic judged-performance caches for stage-two tests and the training benchmark.

Each sample has a hidden quality q in [0, 1]; seven judges score round-to-0.5(10 q + noise) with a
per-sample disagreement level, the difficulty is uniform in [1.5, 3.5] and the final score follows
the MTL-AQA rule (middle three x DD). Clip features carry q along a fixed random direction (plus
noise), the video's brightness carries the judges' disagreement, so both branches have something
real to learn. Arrays follow the cache schema (features (N, V, K, 1024) float32, video
(N, L, 3, h, w) uint8).

A fixture, not part of the model: it sits in the package rather than under ``tests/`` because
``bench/`` builds its MTL-sized cache with :meth:`MemoryCache.toy` from the installed package.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .datasets.rules import apply_rule


def toy_arrays(n: int = 48, *, n_views: int = 1, n_clips: int = 10, n_frames: int = 16,
               size: tuple[int, int] = (16, 16), n_test: int | None = None, seed: int = 0,
               feat_dim: int = 1024, noise: float = 0.05, groups: tuple[str, ...] = ("",),
               n_folds: int | None = None) -> dict[str, Any]:
    """Arrays and sample rows of a synthetic MTL-like cache.

    Folds: the last ``n_test`` rows get fold 0 and the rest -1 (a single split), or with ``n_folds``
    row i gets fold (i // n_groups) % n_folds (JIGSAWS-like CV). Row i belongs to ``groups[i % len(groups)]``."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, n)
    spread = rng.uniform(0.1, 1.0, n)
    judges = np.clip(np.round((10 * q[:, None] + spread[:, None] * rng.normal(0, 1, (n, 7))) * 2) / 2,
                     0, 10)
    dd = np.round(rng.uniform(1.5, 3.5, n), 1)
    final = apply_rule("mtl_middle3", judges, dd)
    direction = rng.uniform(0.2, 1.0, feat_dim).astype(np.float32)
    base = rng.uniform(0, 0.3, (1, 1, 1, feat_dim)).astype(np.float32)
    feats = (q[:, None, None, None] * direction + base
             + noise * rng.standard_normal((n, n_views, n_clips, feat_dim))).astype(np.float32)
    feats = np.maximum(feats, 0)  # post-ReLU like I3D's pooled features
    # uint8 all the way (an MTL-sized video tensor is 1.3 GB; a float64 temporary would be 8x that)
    video = rng.integers(0, 21, (n, n_frames, 3, *size), dtype=np.uint8)
    video += (20 + 200 * spread).astype(np.uint8)[:, None, None, None, None]
    n_test = n // 4 if n_test is None else n_test
    def fold(i: int) -> int:
        if n_folds is not None:
            return (i // len(groups)) % n_folds  # every group gets every fold
        return 0 if i >= n - n_test else -1

    rows = [{"id": f"toy_{i:05d}", "dataset": "toy", "action": groups[i % len(groups)],
             "group": groups[i % len(groups)],
             "difficulty": float(dd[i]), "judge_scores": judges[i].tolist(),
             "final_score": float(final[i]), "rule": "mtl_middle3",
             "fold": fold(i), "status": "ok"} for i in range(n)]
    starts = np.linspace(0, max(n_frames - 16, 0), n_clips).astype(int).tolist()
    views = [{"flip": False, "shift": 0}] + [{"flip": True, "shift": 0}] * (n_views - 1)
    return {"features": feats, "video": video, "rows": rows, "clip_starts": starts, "views": views,
            "quality": q}


def write_toy_cache(path: str | Path, **kw: Any) -> Path:
    """Write a toy cache directory with stage one's writer (:func:`udaqa_pipeline.cache.write_cache`)."""
    from .cache import write_cache

    a = toy_arrays(**kw)
    return write_cache(path, features=a["features"], video=a["video"], samples=a["rows"],
                       clip_starts=a["clip_starts"], views=a["views"], dataset="toy",
                       config={"toy": {k: (list(v) if isinstance(v, tuple) else v) for k, v in kw.items()}})


@dataclass
class MemoryCache:
    """An in-memory object with the attributes stage two reads from an opened cache (``samples``,
    ``features``, ``video``, ``views``, ``manifest``); used where writing a store to disk would only
    cost time (the benchmark's MTL-sized cache)."""

    features: np.ndarray
    video: np.ndarray
    samples: pa.Table
    views: list
    manifest: dict = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def toy(cls, **kw: Any) -> "MemoryCache":
        from .cache import samples_table
        from .config import config_hash

        a = toy_arrays(**kw)
        return cls(features=a["features"], video=a["video"], samples=samples_table(a["rows"]),
                   views=a["views"], manifest={"config_hash": config_hash({"toy": repr(sorted(kw.items()))}),
                                               "dataset": "toy"})
