"""Training the top of I3D from a cached cut against end-to-end fine-tuning, same process, same batch.

- ``cut_step_s``: one training step of ``train.adapt = "top"``: the blocks above the ``Mixed_5b`` cut
  (:class:`udaqa_pipeline.engine.adapt` 's top, from stored activations) + UD-AQA heads + loss +
  backward + the in-backward Adam of the top and the heads' Adam step, on B videos x K clips.
- ``e2e_step_s``: the same step with every I3D block trained from the clips (16 x 224 x 224),
  with activation checkpointing on (the setting that fits batch 4 x 10 clips in 24 GB on CPU; off
  it is about a third faster where memory allows). ``ratio`` = cut step / end-to-end step (target
  <= 0.05). Both on in-memory tensors: decoding is left out of both.
- ``bytes_per_clip``: what the cut store holds per clip and view at each cut and dtype, from the
  activation shapes of the real I3D at 16 x 224 x 224.
- ``stage_one``: ``extract_features`` on the same generated H.264 videos without and with
  ``cache.cut = "Mixed_5b"`` (bf16), back to back; ``ratio`` = with / without (target <= 1.3).

Full run: B = 4 videos x K = 10 clips, the cut step best of 3 after a warm-up, the end-to-end step
once (about 1.5 min on 2 cores: a warm-up would not move it), 8 videos for stage one; ``quick``:
K = 1 clip, one step each, 3 videos.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BATCH = 4


def _step_fn(backbone, heads, opt, x, at, vid, y, tcfg):
    from udaqa_pipeline.model.losses import total_loss

    def step() -> None:
        heads.train()
        backbone.train()
        b = vid.shape[0]
        f = backbone.features(x, at=at).view(b, -1, 1024)
        out = heads(f, vid, y)
        terms = total_loss(out, y, alpha=tcfg.alpha, beta=tcfg.beta, mean_target=y)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
    return step


def _best(fn, reps: int, warmup: bool) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _stage_one(n_videos: int) -> dict:
    from bench.bench_extract import write_h264
    from udaqa_pipeline.cache.extract import extract_features
    from udaqa_pipeline.config import resolve

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "data"
        (root / "videos").mkdir(parents=True)
        rows = []
        for i in range(n_videos):
            write_h264(root / "videos" / f"v{i}.mp4", 120, seed=i)
            rows.append(f"v{i},videos/v{i}.mp4,{5 + i % 5},train")
        (root / "annotations.csv").write_text("id,path,final_score,split\n" + "\n".join(rows) + "\n")
        out = {}
        for name, extra in (("without", []), ("with", ["cache.cut=Mixed_5b"])):
            cfg = resolve("folder", ["frames.n_frames=103", "clips.n_clips=10", *extra])
            t0 = time.perf_counter()
            extract_features("folder", cfg, root, cache_root=Path(d) / f"cache-{name}", progress=False)
            out[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        out["ratio"] = round(out["with_s"] / out["without_s"], 3)
        out["videos"] = n_videos
        return out


def run(quick: bool = False) -> dict:
    from udaqa_pipeline.backbone.weights import load_i3d
    from udaqa_pipeline.cache.cut import below
    from udaqa_pipeline.config import resolve
    from udaqa_pipeline.engine.finetune import Backbone
    from udaqa_pipeline.engine.recipe import model_config
    from udaqa_pipeline.model import UDAQA

    k = 1 if quick else 10
    reps = {"cut": (1, False) if quick else (3, True), "e2e": (1, False)}
    torch.manual_seed(0)
    cfg = resolve("jigsaws", [])
    tcfg = cfg.train
    clips = torch.rand(BATCH * k, 3, 16, 224, 224) * 2 - 1
    vid = torch.randint(0, 256, (BATCH, 160, 3, 64, 64), dtype=torch.uint8)
    y = torch.rand(BATCH)
    shapes = {}
    with torch.no_grad():
        probe = load_i3d()
        for cut in ("Mixed_4f", "Mixed_5b"):
            shapes[cut] = list(probe.features(clips[:1], stop=below(cut)).shape[1:])
        acts = probe.features(clips, stop=below("Mixed_5b"))

    def heads():
        m = UDAQA(model_config(tcfg, 1, 1024))
        m.set_scaling(torch.tensor([0.0]), torch.tensor([1.0]))
        return m

    times = {}
    for name, kw, x, at in (("cut", {"train_from": "Mixed_5b", "drop_below": True}, acts, below("Mixed_5b")),
                            ("e2e", {"checkpointing": True}, clips, None)):
        bb = Backbone(load_i3d(), lr=tcfg.lr * 0.1, weight_decay=tcfg.weight_decay, **{"checkpointing": False, **kw})
        h = heads()
        opt = torch.optim.Adam(list(h.parameters()) + list(bb.parameters()), lr=tcfg.lr)
        times[name] = _best(_step_fn(bb, h, opt, x, at, vid, y, tcfg), *reps[name])
        del bb, h, opt
    per_clip = {f"{cut}/{dt}": int(np.prod(s)) * (2 if dt == "bf16" else 4)
                for cut, s in shapes.items() for dt in ("bf16", "fp32")}
    return {
        "batch": f"{BATCH} videos x {k} clips of 16x224x224", "cut": "Mixed_5b",
        "cut_step_s": round(times["cut"], 4), "e2e_step_s": round(times["e2e"], 3),
        "e2e_checkpointing": True, "ratio": round(times["cut"] / times["e2e"], 4),
        "activation_shapes": shapes, "bytes_per_clip": per_clip,
        "stage_one": _stage_one(3 if quick else 8),
        "note": "quick: 1 clip per video" if quick else "the jigsaws recipe's heads; 10 clips per video",
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=2))
