"""Frames -> I3D input tensors, and the small stored video used by the stage-two video branch.

The I3D input contract (DeepMind's Kinetics preprocessing, REFERENCE section 2), recorded once in
:data:`I3D_INPUT` so callers read it instead of repeating numbers:

- RGB uint8 frames ``(T, H, W, 3)``; the short side resized to ``resize`` = 256 keeping the aspect
  ratio, with bilinear interpolation (``antialias=True``, i.e. PIL-style, so downscaling a 1080p video
  averages pixels instead of aliasing), then a ``crop`` = 224 square: the centre for features and
  evaluation, a random position (optionally a horizontal flip) for training augmentation.
- A clip whose short side already equals ``crop`` (pre-processed like DeepMind's own 224 px sample) is
  only cropped, never re-sampled, so it reaches the network bit-exact.
- Pixels scaled to [-1, 1] as ``x / 127.5 - 1`` (``norm="i3d"``, what the weights were trained on).
  ``norm="imagenet"`` ((x/255 - mean)/std) is offered only for compatibility with public AQA code that
  feeds it; it is a known mismatch with these weights.
- Output ``(3, T, crop, crop)`` float32, the layout :class:`~udaqa_pipeline.backbone.i3d.I3D` takes
  after adding a batch dimension.

Resizing runs in chunks of :data:`CHUNK` frames so a long full-resolution video never becomes one
huge float tensor.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

I3D_INPUT = {"resize": 256, "crop": 224, "norm": "i3d", "range": (-1.0, 1.0), "fps": 25}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHUNK = 32


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"expected RGB frames as a numpy array (T, H, W, 3), got shape {shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (0..255), got {frames.dtype}; decode with video.decode.read_frames")
    if frames.shape[0] == 0:
        raise ValueError("no frames to transform (T = 0)")


def resized_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h', w') with the short side equal to ``short`` and the aspect ratio kept (long side rounded)."""
    if h <= w:
        return short, max(short, round(w * short / h))
    return max(short, round(h * short / w)), short


def _resize_chunks(frames: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int]) -> torch.Tensor:
    """Resize (T,H,W,3) uint8 to ``size`` (bilinear, antialiased) and crop ``box`` = (top, left, h, w).

    Returns float32 (T, 3, h, w) in 0..255, not re-quantised (no rounding before normalisation).
    """
    top, left, ch, cw = box
    out = torch.empty((frames.shape[0], 3, ch, cw), dtype=torch.float32)
    for start in range(0, frames.shape[0], CHUNK):
        part = frames[start : start + CHUNK]
        if tuple(part.shape[1:3]) == size:
            # No resampling: crop while still uint8 so only the kept pixels are converted to float.
            part = part[:, top : top + ch, left : left + cw]
            out[start : start + CHUNK] = torch.from_numpy(np.ascontiguousarray(part)).permute(0, 3, 1, 2)
            continue
        chunk = torch.from_numpy(np.ascontiguousarray(part)).permute(0, 3, 1, 2).float()
        chunk = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=True)
        out[start : start + CHUNK] = chunk[:, :, top : top + ch, left : left + cw]
    return out


def i3d_input(
    frames: np.ndarray,
    *,
    resize: int = 256,
    crop: int = 224,
    crop_mode: Literal["center", "random"] = "center",
    flip: bool = False,
    norm: Literal["i3d", "imagenet"] = "i3d",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RGB uint8 frames (T, H, W, 3) -> I3D input float32 (3, T, crop, crop); see the module docstring.

    ``crop_mode="random"`` draws one crop position for the whole clip from ``generator`` (so the clip
    stays temporally coherent); ``flip`` mirrors it horizontally.
    """
    _check_frames(frames)
    if crop_mode not in ("center", "random"):
        raise ValueError(f"crop_mode must be 'center' or 'random', got {crop_mode!r}")
    if norm not in ("i3d", "imagenet"):
        raise ValueError(f"norm must be 'i3d' or 'imagenet', got {norm!r}")
    if resize < crop:
        raise ValueError(f"resize ({resize}) must be at least crop ({crop})")
    _, h, w, _ = frames.shape
    # DeepMind's sample is stored at 224 px already: crop it, never re-sample it.
    size = (h, w) if min(h, w) == crop else resized_size(h, w, resize)
    if crop_mode == "center":
        top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    else:
        top = int(torch.randint(0, size[0] - crop + 1, (1,), generator=generator))
        left = int(torch.randint(0, size[1] - crop + 1, (1,), generator=generator))
    x = _resize_chunks(frames, size, (top, left, crop, crop))
    if flip:
        x = x.flip(-1)
    if norm == "i3d":
        x = x / 127.5 - 1.0
    else:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0
        x = (x - mean) / std
    return x.permute(1, 0, 2, 3).contiguous()  # (3, T, crop, crop)


def downsample_video(frames: np.ndarray, size: tuple[int, int] = (112, 112)) -> np.ndarray:
    """Small uint8 copy (T, 3, h, w) of a clip for the video branch: scale so the frame covers ``size``
    (aspect kept, bilinear antialiased), centre crop, round to uint8."""
    _check_frames(frames)
    th, tw = size
    _, h, w, _ = frames.shape
    scale = max(th / h, tw / w)
    rh, rw = max(th, round(h * scale)), max(tw, round(w * scale))
    x = _resize_chunks(frames, (rh, rw), ((rh - th) // 2, (rw - tw) // 2, th, tw))
    return x.round_().clamp_(0, 255).to(torch.uint8).numpy()
