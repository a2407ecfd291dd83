"""Peak memory of ``classify`` on 720p videos: the one-pass path beside the streamed one, same run.

What is measured (``run(quick)`` returns it as JSON-able numbers):

- Two H.264 1280x720 videos the bench writes itself, 150 and 600 frames (``--quick``: 48 and 160).
- Each is classified in a fresh subprocess, so one measurement cannot inherit another's heap, and the
  child reports its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, the high-water mark over
  its whole life: imports, weights, decoding, I3D):
  ``whole``: what ``classify`` did before streaming, still reachable as a library call: every frame
  decoded into one array (``read_frames``), then one I3D pass (``classify_frames``);
  ``streamed``: ``classify_video`` as the CLI runs it (decoded in chunks, I3D in 64-frame windows).
  A ``baseline`` child only imports and loads the model, the floor both share.
- ``*_peak_mb`` per length, ``streamed / whole`` as a ratio, and ``*_mb_per_extra_frame``: the
  growth from the short to the long video divided by the extra frames (about 2.8 MB of RGB plus
  I3D input and activations per frame one-pass; near 0 streamed, the claim being checked).
- ``max_abs_logit_diff``, ``top1_same`` and ``top5_shared`` between the two paths: equal on a video
  that fits one window; on a longer one every window is classified as its own clip (I3D's temporal
  receptive field, ~107 frames, is wider than a window), so they differ. ``jigsaws`` repeats the
  comparison on the first 320 frames of a real JIGSAWS video when ``../shared/data`` holds it.

Real Kinetics-400 weights when fetched, else random init (memory does not depend on the values).
Run: ``python -m bench.run --only bench_classify`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_extract import write_h264

ROOT = Path(__file__).resolve().parent.parent
SIZE = (720, 1280)
# A real video for the logits comparison (the synthetic pattern is far from Kinetics): its first 320
# frames, 5 windows. Used when the shared data is there; research data, never copied into the repo.
REAL_VIDEO = ROOT.parent / "shared/data/jigsaws-capture2/Suturing/video/Suturing_B001_capture2.avi"
REAL_FRAMES = 320


def _child(mode: str, path: str, cache_root: str, frames: str = "") -> None:
    """One measurement, run in its own process; prints one JSON line."""
    from udaqa_pipeline.backbone.classify import classify_frames, classify_video
    from udaqa_pipeline.backbone.weights import load_i3d
    from udaqa_pipeline.video.decode import read_frames

    root = cache_root or None
    stop = int(frames) if frames else None
    t0 = time.perf_counter()
    if mode == "baseline":
        load_i3d(root).prepare_for_inference()
        result: dict[str, Any] = {}
    elif mode == "whole":
        # The pre-streaming classify_video, line for line: decode everything, then load, then one pass.
        clip = read_frames(path, stop=stop)
        result = classify_frames(load_i3d(root).prepare_for_inference(), clip, top=5)
        result["windows"] = 1
    elif mode == "streamed":
        result = classify_video(path, frames=stop, top=5, cache_root=root)
    else:
        raise SystemExit(f"unknown mode {mode!r}: use baseline, whole or streamed")
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({**result, "seconds": seconds, "peak_mb": peak_kb / 1024}))


def _softmax(logits: list[float]) -> np.ndarray:
    z = np.exp(np.array(logits) - max(logits))
    return z / z.sum()


def _measure(mode: str, path: Path | str, cache_root: str, frames: int | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_classify", mode, str(path), cache_root, str(frames or "")],
        cwd=ROOT, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench_classify child {mode} {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cache_root(tmp: Path) -> str:
    from udaqa_pipeline.backbone.weights import save_weights, weights_path

    if weights_path().is_file():
        return ""
    import torch

    from udaqa_pipeline.backbone.i3d import I3D

    torch.manual_seed(0)
    save_weights(I3D().state_dict(), weights_path(tmp / "cache"))
    return str(tmp / "cache")


def _compare(whole: dict[str, Any], streamed: dict[str, Any]) -> dict[str, Any]:
    diff = np.abs(np.array(whole["logits"]) - np.array(streamed["logits"])).max()
    top5 = [[t["label"] for t in r["top"]] for r in (whole, streamed)]
    return {
        "whole_peak_mb": round(whole["peak_mb"], 1),
        "streamed_peak_mb": round(streamed["peak_mb"], 1),
        "ratio_streamed_to_whole": round(streamed["peak_mb"] / whole["peak_mb"], 3),
        "streamed_windows": streamed["windows"],
        "max_abs_logit_diff": float(f"{diff:.3g}"),
        "top_logit_whole": round(whole["top"][0]["logit"], 3),
        "top1_same": top5[0][0] == top5[1][0],
        "top5_shared": len(set(top5[0]) & set(top5[1])),
        "top1": top5[1][0],
        "max_abs_prob_diff": float(f"{np.abs(_softmax(whole['logits']) - _softmax(streamed['logits'])).max():.3g}"),
        "whole_s": round(whole["seconds"], 1),
        "streamed_s": round(streamed["seconds"], 1),
    }


def run(quick: bool = False) -> dict[str, Any]:
    from udaqa_pipeline.backbone.classify import READ_CHUNK, WINDOW

    lengths = (48, 160) if quick else (150, 600)
    out: dict[str, Any] = {"video": f"{SIZE[1]}x{SIZE[0]} H.264", "window": WINDOW, "read_chunk": READ_CHUNK}
    with tempfile.TemporaryDirectory(prefix="bench_classify_") as d:
        tmp = Path(d)
        cache_root = _cache_root(tmp)
        out["weights"] = "random init" if cache_root else "Kinetics-400"
        out["baseline_peak_mb"] = round(_measure("baseline", "-", cache_root)["peak_mb"], 1)
        peaks: dict[str, dict[int, float]] = {"whole": {}, "streamed": {}}
        for n in lengths:
            path = tmp / f"v{n}.mp4"
            write_h264(path, n, seed=n, size=SIZE, preset="veryfast")
            # Back to back on the same file, so machine load and page cache hit both paths alike.
            whole = _measure("whole", path, cache_root)
            streamed = _measure("streamed", path, cache_root)
            peaks["whole"][n], peaks["streamed"][n] = whole["peak_mb"], streamed["peak_mb"]
            out[f"frames_{n}"] = _compare(whole, streamed)
        if REAL_VIDEO.is_file() and not quick:
            whole = _measure("whole", REAL_VIDEO, cache_root, REAL_FRAMES)
            streamed = _measure("streamed", REAL_VIDEO, cache_root, REAL_FRAMES)
            out["jigsaws"] = {"video": REAL_VIDEO.name, "frames": REAL_FRAMES, **_compare(whole, streamed)}
            out["jigsaws"]["top5_whole"] = [t["label"] for t in whole["top"]]
            out["jigsaws"]["top5_streamed"] = [t["label"] for t in streamed["top"]]
    short, long = lengths
    for mode in ("whole", "streamed"):
        out[f"{mode}_mb_per_extra_frame"] = round((peaks[mode][long] - peaks[mode][short]) / (long - short), 3)
    return out


if __name__ == "__main__":
    _child(*sys.argv[1:5])
