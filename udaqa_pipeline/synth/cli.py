"""``python -m udaqa_pipeline.synth OUT --n 72 --seed 0``: generate a set from the command line."""

from __future__ import annotations

from .write import SynthConfig, generate


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m udaqa_pipeline.synth",
                                 description="Generate the synthetic diving set in the MTL-AQA layout.")
    ap.add_argument("out", help="output folder (frames/ and info/ are created there)")
    d = SynthConfig()
    ap.add_argument("--n", type=int, default=d.n_dives, help="number of dives")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--frames", type=int, default=d.n_frames, help="frames per dive")
    ap.add_argument("--width", type=int, default=d.width)
    ap.add_argument("--height", type=int, default=d.height)
    ap.add_argument("--dives-per-video", type=int, default=d.dives_per_video)
    ap.add_argument("--test-fraction", type=float, default=d.test_fraction)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--force", action="store_true", help="regenerate even if a matching set exists")
    a = ap.parse_args(argv)
    cfg = SynthConfig(n_dives=a.n, seed=a.seed, n_frames=a.frames, width=a.width, height=a.height,
                      dives_per_video=a.dives_per_video, test_fraction=a.test_fraction)
    try:
        res = generate(a.out, cfg, workers=a.workers, reuse=not a.force)
    except ValueError as e:
        ap.error(str(e))
    what = "reused existing" if res["reused"] else f"generated in {res['seconds']} s"
    print(f"{res['path']}: {res['n_dives']} dives ({res['n_train']} train / {res['n_test']} test), "
          f"final scores {res['final_score_range'][0]:.1f}..{res['final_score_range'][1]:.1f}, {what}")
    return 0
