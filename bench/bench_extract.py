"""Stage one benchmark: is decoding hidden behind the model, how big is a cache, how fast does it load.

Measured in one run, back to back (shared machines are noisy: compare the ratio, not seconds):

- ``model_only_videos_per_s``: the frozen I3D alone on ready-made clip tensors, the same number of
  clips, the same fixed batch size and dtype as the extraction; measured right before and right
  after the extraction and averaged, so drifting machine load hits both sides alike.
- ``end_to_end_videos_per_s``: ``extract_features`` on the same number of real H.264 videos
  (256 px short side, 120 frames, the MTL-AQA shape) written for the run: decoding, resizing,
  I3D, staging; ``ratio`` = end-to-end / model-only (target >= 0.9). The extraction loop's own rate
  (without model loading and the final merge) is reported too.
- ``cache_bytes_per_video``: the resulting HDF5 store size per video at the default config
  (K=10 features of 1024 floats + the 103 x 3 x 64 x 64 uint8 video).
- ``load_s_mtl_sized``: seconds to read a whole MTL-AQA-sized cache (1412 samples, written with
  ``write_cache`` from synthetic arrays) into memory via ``open_cache(...).features/.video``,
  per backend: ``load_s_first_*`` right after writing (page cache still flushing the new file),
  ``load_s_*`` a second read (warm page cache: checksum + copy cost, the floor for a disk read).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_h264(path: Path, n_frames: int, seed: int, size=(256, 340), preset: str | None = None) -> None:
    """An H.264 video of a moving pattern with noise (so the codec cannot make its frames trivially
    cheap to decode), ``size`` (h, w); ``preset`` an x264 preset (its default when None)."""
    import av

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        if preset:
            st.options = {"preset": preset}
        for t in range(n_frames):
            base = ((xx + 3 * t) ^ (yy + seed * 7)) % 256
            img = np.stack([base, np.roll(base, t, 1), (base // 2 + 60) % 256], -1).astype(np.uint8)
            img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


def _dataset(root: Path, n: int) -> Path:
    (root / "videos").mkdir(parents=True)
    lines = ["id,path,final_score"]
    for i in range(n):
        write_h264(root / "videos" / f"v{i}.mp4", 120, i)
        lines.append(f"v{i},videos/v{i}.mp4,{50 + i}")
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    return root


def _load_time(tmp: Path, backend: str, n: int = 1412) -> tuple[float, int]:
    from udaqa_pipeline.cache import open_cache, write_cache

    K, L, h, w = 10, 103, 64, 64
    feats = np.random.default_rng(0).standard_normal((n, 1, K, 1024), dtype=np.float32)
    one = np.random.default_rng(1).integers(0, 256, (L, 3, h, w), dtype=np.uint8)
    video = np.broadcast_to(one, (n, L, 3, h, w))  # content is irrelevant to load time (no compression)
    rows = [{"id": f"s{i}", "final_score": float(i)} for i in range(n)]
    p = write_cache(tmp / f"mtl-{backend}", features=feats, video=video, samples=rows,
                    clip_starts=[0, 10, 20, 30, 40, 50, 60, 70, 80, 87], backend=backend, dataset="mtl")
    del feats, video
    size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    secs = []
    for _ in range(2):
        t0 = time.perf_counter()
        c = open_cache(p)
        f, v = c.features, c.video
        secs.append(time.perf_counter() - t0)
        assert f.shape == (n, 1, K, 1024) and v.shape == (n, L, 3, h, w)
        del c, f, v
    shutil.rmtree(p)
    return secs, size


def run(quick: bool = False) -> dict:
    from udaqa_pipeline.backbone.weights import load_i3d
    from udaqa_pipeline.cache.extract import extract_features
    from udaqa_pipeline.config import resolve
    from udaqa_pipeline.features import default_batch_size, forward_clips
    from udaqa_pipeline.cache.verify import cache_info

    n_videos = 3 if quick else 8
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    out: dict = {"device": str(device), "n_videos": n_videos, "torch_threads": torch.get_num_threads()}
    try:
        root = _dataset(tmp / "data", n_videos)
        model = load_i3d(device=device).prepare_for_inference()
        bs = default_batch_size(device)
        K, T, S = 10, 16, 224
        clips = torch.rand(n_videos * K, 3, T, S, S) * 2 - 1
        forward_clips(model, clips[:bs], bs)  # warm-up: kernel selection, allocator

        def model_only() -> float:
            t0 = time.perf_counter()
            forward_clips(model, clips, bs)
            return time.perf_counter() - t0

        before = model_only()
        stats: dict = {}
        t0 = time.perf_counter()
        path = extract_features("folder", resolve("folder"), root, cache_root=tmp / "cache", model=model,
                                batch_size=bs, threads=2,
                                progress=False, stats=stats)
        e2e_s = time.perf_counter() - t0
        after = model_only()
        model_s = (before + after) / 2
        del clips
        info = cache_info(path)
        out.update(
            batch_size=bs,
            model_only_videos_per_s=round(n_videos / model_s, 4),
            end_to_end_videos_per_s=round(n_videos / e2e_s, 4),
            extraction_loop_videos_per_s=round(stats["videos_per_s"], 4),
            ratio=round((n_videos / e2e_s) / (n_videos / model_s), 3),
            ratio_loop=round(stats["videos_per_s"] / (n_videos / model_s), 3),
            model_only_s_before_after=[round(before, 2), round(after, 2)],
            cache_bytes_per_video=info["bytes_per_sample"],
            counts=info["counts"],
        )
        for backend in ("hdf5",) if quick else ("hdf5", "zarr"):
            secs, size = _load_time(tmp, backend)
            out[f"load_s_first_mtl_sized_{backend}"] = round(secs[0], 3)
            out[f"load_s_mtl_sized_{backend}"] = round(secs[1], 3)
            out[f"bytes_mtl_sized_{backend}"] = size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
