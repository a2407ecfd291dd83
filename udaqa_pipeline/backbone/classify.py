"""Kinetics-400 classification of a video: how a user checks that the backbone and weights are right.

The whole clip (or its first ``frames`` frames) goes through I3D in one forward pass, exactly as
DeepMind evaluates: one set of logits averaged over time. Long videos cost memory roughly linear in
the frame count (about 1.6 MB of activations per frame at 224 px); pass ``frames`` to cap it.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..video.transforms import i3d_input
from .i3d import MIN_FRAMES, I3D
from .labels import KINETICS400
from .weights import load_i3d


def classify_frames(model: I3D, frames: np.ndarray, top: int = 5) -> dict[str, Any]:
    """RGB uint8 frames (T, H, W, 3) -> ``{"frames": T, "logits": [400], "top": [{label, logit, prob}]}``.

    Preprocessing is :func:`~udaqa_pipeline.video.transforms.i3d_input` (short side 256, centre crop
    224, [-1, 1]; a 224 px clip is only cropped). Probabilities are the softmax of the logits.
    """
    if frames.shape[0] < MIN_FRAMES:
        raise ValueError(
            f"the clip has {frames.shape[0]} frames; I3D needs at least {MIN_FRAMES} (use a longer video)"
        )
    x = i3d_input(frames)[None]
    with torch.inference_mode():
        logits = model.forward_logits(x)[0].double()
    probs = torch.softmax(logits, dim=0)
    order = torch.argsort(logits, descending=True)[: max(0, top)]
    return {
        "frames": int(frames.shape[0]),
        "logits": [float(v) for v in logits],
        "top": [{"label": KINETICS400[i], "logit": float(logits[i]), "prob": float(probs[i])} for i in order.tolist()],
    }


def classify_video(
    source: str | os.PathLike,
    *,
    frames: int | None = None,
    top: int = 5,
    cache_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Decode ``source`` (video file or frame folder), classify its first ``frames`` frames (all if None)."""
    from ..video.decode import read_frames

    if frames is not None and frames < MIN_FRAMES:
        raise ValueError(f"--frames {frames}: I3D needs at least {MIN_FRAMES} frames")
    clip = read_frames(source, stop=frames)  # decode first: a bad or short video fails before the model loads
    if clip.shape[0] < MIN_FRAMES:
        raise ValueError(f"{source}: {clip.shape[0]} frames; I3D needs at least {MIN_FRAMES} (use a longer video)")
    model = load_i3d(cache_root).prepare_for_inference()
    return classify_frames(model, clip, top=top)
