"""Feature views: the plain centre view and its flipped / time-shifted variants.

View 0 is the plain centre view used for testing; extra views are, in order, horizontal flip,
window shifted +s / -s frames, flip with +s / -s, then 2s, ... (``s = cache.view_shift``, default 3
as CoRe's +-3 frame temporal jitter). A shift moves the L sampled frames by s with the edge frame
repeated (the clip layout stays the same), so it needs no extra decoding. Stage one applies a view
to the sampled frames before I3D (:func:`~.inputs.view_input`) and stage two to the cached
downsampled video (:func:`apply_view`); both shift with :func:`shift_frames`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..config import default_of

DEFAULT_VIEW_SHIFT = default_of("cache.view_shift")


def make_views(n_views: int, shift: int = DEFAULT_VIEW_SHIFT) -> list[dict[str, Any]]:
    """The first ``n_views`` views: plain, flip, +s, -s, flip+s, flip-s, +2s, ... (see module doc).
    Raises ``ValueError`` for fewer than one view, or more than two with ``shift`` < 1."""
    if n_views < 1:
        raise ValueError(f"views must be >= 1, got {n_views}")
    if n_views > 1 and shift < 1 and n_views > 2:
        raise ValueError(f"{n_views} views need cache.view_shift >= 1 (got {shift})")
    out: list[dict[str, Any]] = []
    mag = 0
    while len(out) < n_views:
        shifts = [0] if mag == 0 else [mag * shift, -mag * shift]
        for flip in (False, True):
            out.extend({"flip": flip, "shift": s} for s in shifts)
        mag += 1
    return out[:n_views]


def shift_frames(frames: np.ndarray, shift: int, axis: int = 0) -> np.ndarray:
    """Frames moved ``shift`` positions later in time (earlier if negative) along ``axis``, the edge
    frame repeated; ``frames`` itself when ``shift`` is 0."""
    if shift == 0:
        return frames
    n = frames.shape[axis]
    return np.take(frames, np.clip(np.arange(n) + shift, 0, n - 1), axis=axis)


def apply_view(video: np.ndarray, view: Mapping[str, Any]) -> np.ndarray:
    """A feature view's shift and flip applied to a cached view-0 video (..., L, 3, h, w) uint8,
    exactly as stage one shifts the L sampled frames before I3D; a C-contiguous array."""
    out = shift_frames(video, int(view.get("shift", 0)), axis=-4)
    if view.get("flip", False):
        out = out[..., ::-1]
    return np.ascontiguousarray(out)
