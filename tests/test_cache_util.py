"""Shared helpers for the cache tests (no tests here): tiny generated videos and a `folder` dataset.

Mechanics tests use a randomly initialised I3D (seeded, so every process builds the same weights)
and a tiny stage config (2 clips of 9 frames at 193 px, the smallest input I3D accepts): they test
staging, resume, locks, stores and merges, not the features' meaning. ``test_cache_e2e`` uses the
real Kinetics weights.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from fixtures.videos import encode_video
import torch

#: Stage overrides for mechanics tests: L = 12 frames, 2 clips of 9 (starts 0, 3), 193 px crops.
TINY = (
    "frames.n_frames=12",
    "clips.n_clips=2",
    "clips.clip_len=9",
    "clips.layout=overlapping",
    "preprocess.resize=193",
    "preprocess.crop=193",
    "cache.video_size=[8, 8]",
)


def write_video(path: Path, n_frames: int, seed: int = 0, size: tuple[int, int] = (24, 32)) -> Path:
    """A lossless (FFV1) RGB video of moving gradients + noise, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n_frames):
        base = (xx * 7 + yy * 3 + t * (5 + seed)) % 256
        frames.append(np.stack([base, (base + 85 * seed) % 256, rng.integers(0, 256, (h, w))], -1).astype(np.uint8))
    return encode_video(path, np.stack(frames))


def make_dataset(root: Path, videos: dict[str, int | str], split_every: int = 3) -> Path:
    """A `folder` dataset at ``root``: ``videos`` maps id -> frame count (a video is written), or
    ``"corrupt"`` (random bytes), or ``"missing"`` (listed but absent)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, (sid, spec) in enumerate(videos.items()):
        rel = f"videos/{sid}.mkv"
        if spec == "corrupt":
            (root / "videos").mkdir(exist_ok=True)
            (root / rel).write_bytes(np.random.default_rng(k).integers(0, 256, 5000, dtype=np.uint8).tobytes())
        elif spec != "missing":
            write_video(root / rel, int(spec), seed=k)
        rows.append({"id": sid, "path": rel, "final_score": 10.0 + k, "judge_scores": f"{k % 5 + 3};{k % 4 + 4}",
                     "split": "test" if k % split_every == 0 else "train"})
    with (root / "annotations.csv").open("w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    return root


def tiny_model() -> torch.nn.Module:
    """Randomly initialised I3D, seeded (identical in every process): cache mechanics only."""
    from udaqa_pipeline.backbone.i3d import I3D

    torch.manual_seed(0)
    return I3D()


def test_strict_json_writes_null_for_undefined_numbers():
    import json

    import numpy as np

    from udaqa_pipeline.fileutil import strict_json

    text = strict_json({"rho": float("nan"), "inf": np.float64("inf"), "n": np.int64(3), "a": np.array([1.5, 2.0]),
                        "t": (1, None), 4: "x"})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"rho": None, "inf": None, "n": 3, "a": [1.5, 2.0], "t": [1, None], "4": "x"}
