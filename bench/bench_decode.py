"""Decoding a uniform window over whole videos: the previous decoder (frozen here) beside today's.

The JIGSAWS protocol samples 160 frames uniformly over each video (``stages/jigsaws.toml``:
``frames.mode = "uniform"``), 1 to 3 minutes of 640x480 MPEG-4 (DivX, packed B-frames, a key frame
every 300 frames). Per video, back to back in one run, in the order before, now, now, before (the
faster of each pair counts, so a load spike on a shared machine does not decide the ratio):

- ``before``: the previous decoder's ``sample_frames``: demux to count packets, then decode in order up to
  the last window frame (here the last frame), recounting by decoding when the decoder gave fewer
  frames than packets. A frozen copy of that code (PyAV calls only), same decoder settings.
- ``now``: ``datasets.frames.sample_frames`` as stage one calls it.

``ratio`` = total seconds now / before (target <= 0.55); ``ratio_median`` the median of per-video
ratios, ``cpu_ratio`` the same for process CPU seconds (decoder threads included). Every video is
also read on the exact-count path (count by decoding, then read: two decodes) and the three must
give identical arrays and frame indices (``identical``): features unchanged means these frames.

Videos: ``$UDAQA_BENCH_JIGSAWS`` or ``../shared/data/jigsaws-capture2/Suturing/video``
next to the repository (never copied into it). Without them the part measures MPEG-4 AVIs with
B-frames it writes itself and says so in ``videos``. ``--quick``: 4 videos.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from udaqa_pipeline.config import Frames

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO.parent / "shared" / "data" / "jigsaws-capture2" / "Suturing" / "video"
CFG = Frames(n_frames=160, mode="uniform", short_policy="pad_last")


def _old_read(path: Path, idx: np.ndarray):
    """The previous decoder's ``VideoFile.read``, frozen: decode in order (frame threads), convert the
    wanted frames with ``to_ndarray``, stop at the last one; ``None`` when the file has fewer."""
    import av

    wanted, last, got, n = set(idx.tolist()), int(idx.max()), {}, 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            n = i + 1
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
    return np.stack([got[i] for i in idx.tolist()]) if last < n else None


def previous_decoder(source: Path, cfg: Frames):
    """The previous decoder's ``sample_frames`` for a video file, frozen here so the comparison stays
    honest whatever ``video/decode.py`` becomes: count demuxed packets, decode in order up to the
    last window frame, and when the decoder gave fewer frames, count by decoding and read again."""
    import av

    from udaqa_pipeline.datasets.base import Sample
    from udaqa_pipeline.datasets.frames import _window

    sample = Sample(id=source.stem, dataset="bench", source=source, final_score=0.0)
    with av.open(str(source)) as c:
        n = sum(1 for pkt in c.demux(c.streams.video[0]) if pkt.size)
    win = _window(sample, n, cfg)
    frames = _old_read(source, win.indices)
    if frames is None:
        with av.open(str(source)) as c:
            n = sum(1 for _ in c.decode(video=0))
        win = _window(sample, n, cfg)
        frames = _old_read(source, win.indices)
    return frames, win.indices, n


def exact_count(source: Path, cfg: Frames):
    """The exact-count path: count every frame by decoding, then read the window (two decodes)."""
    from udaqa_pipeline.datasets.base import Sample
    from udaqa_pipeline.datasets.frames import _window
    from udaqa_pipeline.video.decode import VideoFile

    sample = Sample(id=source.stem, dataset="bench", source=source, final_score=0.0)
    with VideoFile(source) as src:
        n = src.n_frames()
        win = _window(sample, n, cfg)
        return src.read(win.indices), win.indices, n


def now(source: Path, cfg: Frames):
    from udaqa_pipeline.datasets.base import Sample
    from udaqa_pipeline.datasets.frames import sample_frames

    sf = sample_frames(Sample(id=source.stem, dataset="bench", source=source, final_score=0.0), cfg)
    return sf.frames, sf.indices, sf.n_source_frames


def _timed(fn, *args):
    w, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w, time.process_time() - c


def _synthetic(tmp: Path, n_videos: int) -> list[Path]:
    """MPEG-4 Part 2 AVIs with 2 B-frames per P, 320x240, 900-1500 frames: the JIGSAWS codec family."""
    import av

    out = []
    yy, xx = np.mgrid[0:240, 0:320]
    for v in range(n_videos):
        path = tmp / f"synthetic_{v}.avi"
        rng = np.random.default_rng(v)
        with av.open(str(path), "w") as c:
            st = c.add_stream("mpeg4", rate=30)
            st.width, st.height, st.pix_fmt = 320, 240, "yuv420p"
            st.codec_context.max_b_frames = 2
            st.codec_context.gop_size = 300
            for t in range(900 + 150 * v):
                base = ((xx + 2 * t) ^ (yy + 3 * v)) % 256
                img = np.stack([base, np.roll(base, t, 0), (base // 2 + 40) % 256], -1).astype(np.int16)
                img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
                for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in st.encode():
                c.mux(pkt)
        out.append(path)
    return out


def run(quick: bool = False) -> dict:
    folder = Path(os.environ.get("UDAQA_BENCH_JIGSAWS", DEFAULT_DIR))
    videos = sorted(folder.glob("*.avi")) if folder.is_dir() else []
    tmp = None
    if videos:
        source = f"JIGSAWS Suturing capture2, {folder}"
    else:
        tmp = Path(tempfile.mkdtemp(prefix="bench_decode_"))
        videos = _synthetic(tmp, 2 if quick else 6)
        source = f"synthetic MPEG-4 AVIs with B-frames (no JIGSAWS videos at {folder})"
    if quick:
        videos = videos[:4]
    rows = []
    identical = True
    try:
        for path in videos:
            res: dict = {}
            for fn in (previous_decoder, now, now, previous_decoder):  # ABBA: drifting load hits both alike
                out, wall, cpu = _timed(fn, path, CFG)
                best = res.get(fn.__name__)
                res[fn.__name__] = (out, wall, cpu) if best is None or wall < best[1] else best
            (ex, ex_s, _) = _timed(exact_count, path, CFG)
            (bf, bi, bn), b_s, b_cpu = res["previous_decoder"]
            (nf, ni, nn), n_s, n_cpu = res["now"]
            same = (bn == nn == ex[2] and np.array_equal(bi, ni) and np.array_equal(ni, ex[1])
                    and np.array_equal(bf, nf) and np.array_equal(nf, ex[0]))
            identical = identical and same
            rows.append({"video": path.name, "frames": int(nn), "before_s": round(b_s, 3), "now_s": round(n_s, 3),
                         "exact_count_s": round(ex_s, 3), "before_cpu_s": round(b_cpu, 3), "now_cpu_s": round(n_cpu, 3),
                         "identical": bool(same)})
            print(f"  {path.name}: {nn} frames, before {b_s:.2f} s, now {n_s:.2f} s, exact-count {ex_s:.2f} s, "
                  f"identical {same}", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    before = sum(r["before_s"] for r in rows)
    after = sum(r["now_s"] for r in rows)
    return {
        "videos": source,
        "n_videos": len(rows),
        "window": "160 frames uniform over the whole video (stages/jigsaws.toml)",
        "before_s_per_video": round(before / len(rows), 3),
        "now_s_per_video": round(after / len(rows), 3),
        "exact_count_s_per_video": round(sum(r["exact_count_s"] for r in rows) / len(rows), 3),
        "ratio": round(after / before, 3),
        "ratio_median": round(statistics.median(r["now_s"] / r["before_s"] for r in rows), 3),
        "cpu_ratio": round(sum(r["now_cpu_s"] for r in rows) / sum(r["before_cpu_s"] for r in rows), 3),
        "target_ratio": 0.55,
        "identical": identical,
        "per_video": rows,
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
