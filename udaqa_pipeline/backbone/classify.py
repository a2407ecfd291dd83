"""Kinetics-400 classification of a video: how a user checks that the backbone and weights are right.

DeepMind evaluates a clip in one forward pass: the logits of every temporal position averaged. A
whole video in one pass needs memory linear in its length (a 720p frame is 2.8 MB of RGB, 0.6 MB
as I3D input and about 1.6 MB of activations), so :func:`classify_video` streams instead:

- frames are decoded :data:`READ_CHUNK` at a time and turned into I3D input at once, so at most
  that many full-resolution frames exist at any moment;
- I3D runs on consecutive windows of ``window`` frames; a tail too short for I3D on its own (fewer
  than ``MIN_FRAMES``) joins the window before it, so a forward pass sees at most
  ``window + MIN_FRAMES - 1`` frames;
- window logits are averaged weighted by their number of temporal positions, i.e. the result is
  the mean over every position of every window, the same average the one-pass model takes. A video
  that fits one window is exactly one forward pass, unchanged from the whole-clip result. A longer
  one is classified as consecutive clips: no position sees across a window boundary, and since a
  Mixed_5c position's temporal receptive field (~107 frames) exceeds a 64-frame window, every
  position of a window sees some zero padding where one pass would show it neighbouring frames, so
  the average can differ from one pass over the whole video (``bench_classify`` measures how much).

:func:`classify_frames` is the one-pass form for frames already in memory.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np
import torch

from ..video.transforms import I3D_INPUT, i3d_input
from .i3d import MIN_FRAMES, I3D, mixed5c_size
from .labels import KINETICS400
from .weights import load_i3d

#: Frames per I3D forward pass by default (64 720p frames: ~40 MB input, a few hundred MB activations).
WINDOW = 64
#: Frames decoded at a time; bounds the full-resolution frames held (16 x 1080p = 100 MB).
READ_CHUNK = 16


def _report(logits: torch.Tensor, n_frames: int, top: int) -> dict[str, Any]:
    probs = torch.softmax(logits, dim=0)
    order = torch.argsort(logits, descending=True)[: max(0, top)]
    return {
        "frames": int(n_frames),
        "logits": [float(v) for v in logits],
        "top": [{"label": KINETICS400[i], "logit": float(logits[i]), "prob": float(probs[i])} for i in order.tolist()],
    }


def classify_frames(model: I3D, frames: np.ndarray, top: int = 5) -> dict[str, Any]:
    """RGB uint8 frames (T, H, W, 3) -> ``{"frames": T, "logits": [400], "top": [{label, logit, prob}]}``.

    One forward pass over all T frames (memory linear in T; :func:`classify_video` streams instead).
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
    return _report(logits, frames.shape[0], top)


def logit_positions(n_frames: int) -> int:
    """Temporal positions I3D averages its logits over for a clip of ``n_frames`` frames (224 px crop)."""
    crop = I3D_INPUT["crop"]
    return mixed5c_size(n_frames, crop, crop)[0] - 1  # the (2, 7, 7) VALID average pool drops one


def classify_chunks(
    model: I3D, chunks: Iterable[torch.Tensor], *, window: int = WINDOW, top: int = 5
) -> dict[str, Any]:
    """Classify a clip given as consecutive I3D-input pieces (3, t, 224, 224), ``window`` frames per pass.

    See the module docstring for the windowing and weighting. Adds ``"windows"`` (forward passes) to
    :func:`classify_frames`' result.
    """
    if window < MIN_FRAMES:
        raise ValueError(f"window={window}: I3D needs at least {MIN_FRAMES} frames per pass (use {WINDOW})")
    total = torch.zeros(len(KINETICS400), dtype=torch.float64)
    weight = n_frames = n_windows = 0

    def run(x: torch.Tensor) -> None:
        nonlocal total, weight, n_windows
        w = logit_positions(x.shape[1])
        with torch.inference_mode():
            total += model.forward_logits(x[None])[0].double() * w
        weight += w
        n_windows += 1

    pending: list[torch.Tensor] = []
    held = 0
    for part in chunks:
        pending.append(part)
        held += part.shape[1]
        n_frames += part.shape[1]
        # Cut a window only once MIN_FRAMES more frames exist, so a remainder can always stand alone.
        while held >= window + MIN_FRAMES:
            x = torch.cat(pending, dim=1)
            run(x[:, :window])
            pending, held = [x[:, window:].clone()], held - window  # clone: let the big tensor go
            del x
    if n_frames < MIN_FRAMES:
        raise ValueError(f"the clip has {n_frames} frames; I3D needs at least {MIN_FRAMES} (use a longer video)")
    if held:
        run(torch.cat(pending, dim=1))
    result = _report(total / weight, n_frames, top)
    result["windows"] = n_windows
    return result


def classify_video(
    source: str | os.PathLike,
    *,
    frames: int | None = None,
    top: int = 5,
    window: int = WINDOW,
    cache_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Decode ``source`` (video file or frame folder) and classify its first ``frames`` frames (all if
    None), streaming ``window`` frames per I3D pass so memory does not grow with the video's length."""
    from ..errors import ArgumentError
    from ..video.decode import VideoError, iter_frames

    if frames is not None and frames < MIN_FRAMES:
        raise ArgumentError(f"--frames {frames}: I3D needs at least {MIN_FRAMES} frames")
    if window < MIN_FRAMES:
        raise ArgumentError(f"--window {window}: I3D needs at least {MIN_FRAMES} frames per pass (use --window {WINDOW})")
    pieces = (i3d_input(part) for part in iter_frames(source, chunk=READ_CHUNK, stop=frames))
    # Decode up to MIN_FRAMES first: a bad or too-short video fails before the model loads.
    head, n = [], 0
    for piece in pieces:
        head.append(piece)
        n += piece.shape[1]
        if n >= MIN_FRAMES:
            break
    if n < MIN_FRAMES:
        raise VideoError(source, f"{n} frames; I3D needs at least {MIN_FRAMES}", "use a longer video", kind="too_short")
    model = load_i3d(cache_root).prepare_for_inference()

    def all_pieces() -> Iterable[torch.Tensor]:
        yield from head
        head.clear()  # drop this list's references so pieces are freed once their window has run
        yield from pieces

    return classify_chunks(model, all_pieces(), window=window, top=top)
