"""Fine-tuning cost: one end-to-end step (I3D unfrozen) beside one cached-heads step, same process.

- Fine-tuning step (batch 4): the real :class:`udaqa_pipeline.engine.finetune.FrameSource` on generated
  synthetic dives (JPEG frame folders in the MTL-AQA layout): decode + augmentation (shift, flip,
  random crop) + I3D forward (activation checkpointing and bf16 autocast: the "auto" settings, on
  for CUDA, off on CPU) + UD-AQA heads
  + loss + backward, with the backbone's in-backward Adam and the heads' Adam step. Decoding runs in
  the main process (workers=0) so the figure is the whole step's cost on one process.
- Cached-heads step (batch 4): the same heads, loss, backward and Adam step on in-memory features
  (4, K, 1024) and video (4, L, 3, 64, 64), as stage two trains from the cache.
- ``ratio`` = fine-tuning step / cached-heads step. ``mtl_epoch_hours``: the fine-tuning step
  scaled to MTL-AQA's 1059 training dives (honest protocol: 953 fitted) plus the no-grad passes,
  by :func:`udaqa_pipeline.engine.finetune.estimate_epoch_seconds`.
- Full run: L = 103 frames of 320 x 240, K = 10 clips of 16 x 224 px (the paper's setting), one
  warm-up step then the best of 2. ``quick``: L = 16 frames, K = 1 clip (4 clips per step), no
  warm-up, one step; the shapes are in the result.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BATCH = 4


def _heads(cfg: dict):
    from udaqa_pipeline.model import UDAQA
    from udaqa_pipeline.engine.recipe import model_config

    model = UDAQA(model_config(cfg["train"], 1))
    model.set_scaling(torch.tensor([0.0]), torch.tensor([10.0]))
    return model


def _step(model, opt, feats, vid, y, tcfg) -> None:
    from udaqa_pipeline.model.losses import total_loss

    model.train()
    out = model(feats, vid, y)
    terms = total_loss(out, y, alpha=float(tcfg["alpha"]), beta=float(tcfg["beta"]), mean_target=y)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    opt.step()


def _best(fn, reps: int, warmup: bool, sync) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(quick: bool = False) -> dict:
    from udaqa_pipeline.engine.finetune import estimate_epoch_seconds, prepare
    from udaqa_pipeline.synth import SynthConfig, generate

    n_frames, n_clips = (16, 1) if quick else (103, 10)
    reps, warm = (1, False) if quick else (2, True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "data"
        generate(root, SynthConfig(n_dives=8, n_frames=max(n_frames, 16), dives_per_video=4), workers=1)
        ov = [f"frames.n_frames={n_frames}", f"clips.n_clips={n_clips}", "clips.clip_len=16",
              f"train.batch_size={BATCH}"]
        _, cfg, data, src = prepare("mtl", root, run_dir=Path(d) / "run", overrides=ov, device=str(dev), jobs=0)
        tcfg = cfg["train"]
        torch.manual_seed(0)
        model = _heads(cfg).to(dev)
        params = list(model.parameters()) + list(src.module.parameters())
        opt = torch.optim.Adam(params, lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]))
        rows = np.arange(BATCH)
        y = torch.rand(BATCH, device=dev)
        src.module.train()

        def ft_step() -> None:
            feats, vid = src.batch(rows, np.zeros(BATCH, int))
            _step(model, opt, feats.to(dev), vid.to(dev), y, tcfg)

        t_ft = _best(ft_step, reps, warm, sync)
        t0 = time.perf_counter()
        for r in rows:
            src.items[(int(r), 0, False)]
        decode_s = (time.perf_counter() - t0) / BATCH
        with torch.no_grad():
            t_inf = _best(lambda: src.batch(rows, np.zeros(BATCH, int)), 1, False, sync) / BATCH

        L, (h, w) = n_frames, cfg["cache"]["video_size"]
        feats = torch.randn(BATCH, n_clips, 1024, device=dev)
        vid = torch.randint(0, 256, (BATCH, L, 3, h, w), dtype=torch.uint8, device=dev)
        model2 = _heads(cfg).to(dev)
        opt2 = torch.optim.Adam(model2.parameters(), lr=float(tcfg["lr"]))
        t_heads = _best(lambda: _step(model2, opt2, feats, vid, y, tcfg), 20, True, sync)  # cheap: best of 20
        src.close()
    epoch = estimate_epoch_seconds(t_ft, t_inf, decode_s, n_fit=953, n_select=106, batch_size=BATCH,
                                   workers=0, curriculum=True)
    return {
        "device": str(dev), "batch": BATCH, "frames": n_frames, "clips_per_video": n_clips, "clip": "16x224x224",
        "amp_bf16": bool(src.module.amp), "activation_checkpointing": bool(src.module.checkpointing),
        "finetune_step_s": round(t_ft, 4), "cached_heads_step_s": round(t_heads, 5),
        "ratio": round(t_ft / t_heads, 1), "decode_s_per_video": round(decode_s, 4),
        "inference_s_per_video": round(t_inf, 4),
        "mtl_epoch_hours": round(epoch / 3600 * (10 / n_clips if quick else 1.0), 2),
        "note": ("quick: 1 clip per video; mtl_epoch_hours scaled x10 clips" if quick
                 else "paper setting: 10 clips x 16 frames x 224 px per video"),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(quick=True), indent=1))
