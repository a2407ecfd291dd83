"""Stage two's cost: one training epoch from the cache vs one epoch of published-style training.

- Cache-based epoch: the real training loop (:func:`udaqa_pipeline.engine.run.train`, full UD-AQA model,
  paper protocol so all 1059 training samples are fitted) on an MTL-AQA-sized synthetic cache held
  in memory (1059 training + 8 test samples, K=10 clip features, video 103 x 3 x 64 x 64 uint8).
  The epoch time is the first epoch's ``seconds`` in the run log (100% of the samples: the
  curriculum only shrinks later epochs) and includes the uncertainty pass that re-sorts them.
- Published style: I3D forward + backward on 10 clips of 16 x 224 x 224 per sample, every epoch.
  One clip's forward+backward is timed here, in the same process, then scaled by 10 x 1059.
- Peak memory: ``ru_maxrss`` before and after training (the process high-water mark; the delta is
  what training added on top of the in-memory cache).
``quick``: 128 training samples (time scaled to 1059) and one timed I3D clip.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch

N_TRAIN = 1059  # MTL-AQA split 0
CLIPS = 10


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _i3d_clip_fwd_bwd(reps: int) -> float:
    from udaqa_pipeline.backbone.i3d import I3D

    model = I3D().train()
    x = torch.randn(1, 3, 16, 224, 224)
    times = []
    for i in range(reps + 1):  # first rep is a warm-up
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        model.forward_features(x).sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return min(times)


def run(quick: bool = False) -> dict:
    from udaqa_pipeline.testing import MemoryCache
    from udaqa_pipeline.engine.run import train

    n_train = 128 if quick else N_TRAIN
    cache = MemoryCache.toy(n=n_train + 8, n_test=8, n_frames=103, size=(64, 64), seed=0)
    rss0 = _rss_mb()
    with tempfile.TemporaryDirectory() as d:
        run_dir = train("mtl", cache=cache, run_dir=Path(d) / "run", protocol="paper", progress=False,
                        overrides=["train.epochs=1", "train.eval_samples=2"])
        import json

        log = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    rss1 = _rss_mb()
    epoch_s = float(log[0]["seconds"]) * (N_TRAIN / n_train)
    clip_s = _i3d_clip_fwd_bwd(reps=1 if quick else 3)
    published_s = clip_s * CLIPS * N_TRAIN
    return {
        "cache_epoch_seconds": round(epoch_s, 2),
        "cache_epoch_samples_timed": n_train,
        "i3d_clip_fwd_bwd_seconds": round(clip_s, 3),
        "published_epoch_seconds": round(published_s, 1),
        "speedup_x": round(published_s / epoch_s, 1),
        "target_speedup_x": 100,
        "peak_rss_mb_before_training": round(rss0, 1),
        "peak_rss_mb_after_training": round(rss1, 1),
        "training_peak_rss_delta_mb": round(rss1 - rss0, 1),
        "video_tensor": [103, 3, 64, 64],
        "threads": torch.get_num_threads(),
        "note": "epoch = full UD-AQA (WA + conv3d CVAE + uncertainty), batch 32, first epoch (100% of "
                "samples); published = I3D forward+backward per 16x224x224 clip x 10 clips x 1059",
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
