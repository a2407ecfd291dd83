"""Pure frame-window and clip-layout arithmetic (no I/O).

Two steps turn a source video into I3D inputs:

1. :func:`window_indices` picks the ``L`` source frames a sample uses (``L = n_frames`` of the
   stage config: 103, or 160 for JIGSAWS), and applies the short-video policy.
2. :func:`clip_layout` cuts those ``L`` frames into ``K`` clips of ``clip_len`` frames.

Window modes (over the sample's span ``[span_start, span_end)`` of the source, the whole source by
default):

- ``"first"``: the first ``L`` frames of the span (MUSDL on trimmed MTL-AQA folders; AQA-7).
- ``"last"``: the ``L`` frames ending at the span end, end exclusive (CoRe on the untrimmed
  MTL-AQA folders: ``image_list[end_frame - 103 : end_frame]``).
- ``"uniform"``: ``L`` frames spread evenly over the span, first and last frame included:
  ``floor(linspace(0, n - 1, L))`` (JIGSAWS; FineDiving as TSA samples its folders). With more
  than ``L`` frames no frame repeats.

Short-video policy (``short_policy``), when the span has fewer than ``L`` frames:

- ``"pad_last"`` (default): take every frame of the span, then repeat the last frame until there
  are ``L``; the result is flagged ``short=True`` so the sample table records it. The clip layout
  therefore never changes with video length, and a short video is never silently dropped.
- ``"error"``: raise :class:`ShortVideoError` (the extraction records the sample as failed).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..config import ConfigError
from ..errors import UdaqaError

CLIP_KINDS = ("overlapping", "non_overlapping")
WINDOW_MODES = ("first", "last", "uniform")
SHORT_POLICIES = ("pad_last", "error")


class ClipLayout(NamedTuple):
    """Where the ``K`` clips start inside the ``n_frames``-frame window (stored with the features)."""

    kind: str
    n_frames: int
    clip_len: int
    starts: tuple[int, ...]

    def indices(self) -> np.ndarray:
        """Window-frame indices of every clip, shape ``(K, clip_len)``."""
        return np.asarray(self.starts, np.int64)[:, None] + np.arange(self.clip_len, dtype=np.int64)[None, :]


class ShortVideoError(UdaqaError, ValueError):
    """A span shorter than the window under ``short_policy = "error"``."""


def clip_layout(kind: str, n_frames: int, n_clips: int, clip_len: int) -> ClipLayout:
    """Start frames of ``n_clips`` clips of ``clip_len`` frames inside an ``n_frames`` window.

    ``"overlapping"`` (MUSDL / the paper): ``step = ceil((n_frames - clip_len) / (n_clips - 1))``,
    ``start_k = min(k * step, n_frames - clip_len)``: even steps, and the last clip is moved back
    so it ends exactly at the window's end. Over 103 frames with 10 clips of 16 this gives
    0, 10, ..., 80, 87. Starts must be strictly increasing; a window too short for that (the
    clamp would repeat a clip) raises ``ConfigError`` (a ``ValueError``). With ``step > clip_len`` the clips do not
    overlap but still cover the window evenly.

    ``"non_overlapping"`` (JIGSAWS): ``start_k = k * clip_len``; needs
    ``n_clips * clip_len <= n_frames`` (160 = 10 x 16); frames past the last clip are unused.
    """
    if n_clips < 1 or clip_len < 1:
        raise ConfigError(f"need n_clips >= 1 and clip_len >= 1, got n_clips={n_clips}, clip_len={clip_len}")
    if n_frames < clip_len:
        raise ConfigError(f"a {n_frames}-frame window cannot hold a {clip_len}-frame clip: raise frames.n_frames")
    span = n_frames - clip_len
    if kind == "overlapping":
        if n_clips == 1:
            starts = (0,)
        else:
            step = math.ceil(span / (n_clips - 1))
            starts = tuple(min(k * step, span) for k in range(n_clips))
            if any(b <= a for a, b in zip(starts, starts[1:])):
                raise ConfigError(
                    f"overlapping layout of {n_clips} clips of {clip_len} over {n_frames} frames would "
                    f"repeat clips (starts {starts}): use more frames or fewer clips"
                )
    elif kind == "non_overlapping":
        if n_clips * clip_len > n_frames:
            raise ConfigError(
                f"{n_clips} non-overlapping clips of {clip_len} need {n_clips * clip_len} frames, the window "
                f"has {n_frames}: raise frames.n_frames or use clips.layout = \"overlapping\""
            )
        starts = tuple(k * clip_len for k in range(n_clips))
    else:
        raise ConfigError(f"unknown clip layout {kind!r}; use one of {', '.join(CLIP_KINDS)}")
    return ClipLayout(kind, n_frames, clip_len, starts)


class Window(NamedTuple):
    """Source-frame indices of a sample's window (length ``n_frames``) and whether it was padded."""

    indices: np.ndarray
    short: bool


def window_indices(
    n_source: int,
    n_frames: int,
    mode: str,
    end: int | None = None,
    *,
    start: int | None = None,
    short_policy: str = "pad_last",
) -> Window:
    """The ``n_frames`` source-frame indices a sample uses (see the module docstring).

    ``start``/``end`` (0-based, end exclusive) bound the sample's span inside a longer source
    (``None`` = the source's first / last frame). An ``end`` past ``n_source`` or an empty span is
    an annotation/video mismatch and raises ``ValueError``.
    """
    if n_frames < 1:
        raise ConfigError(f"n_frames must be >= 1, got {n_frames}")
    if mode not in WINDOW_MODES:
        raise ConfigError(f"unknown window mode {mode!r}; use one of {', '.join(WINDOW_MODES)}")
    if short_policy not in SHORT_POLICIES:
        raise ConfigError(f"unknown short_policy {short_policy!r}; use one of {', '.join(SHORT_POLICIES)}")
    lo = 0 if start is None else int(start)
    hi = n_source if end is None else int(end)
    if hi > n_source:
        raise ValueError(f"window ends at frame {hi} but the source has only {n_source} frames")
    if lo < 0 or hi <= lo:
        raise ValueError(f"empty frame span [{lo}, {hi}) in a source of {n_source} frames")
    n = hi - lo
    if n < n_frames:
        if short_policy == "error":
            raise ShortVideoError(
                f"only {n} frames where the window needs {n_frames} (frames.short_policy = \"error\"; "
                "\"pad_last\" repeats the last frame instead)"
            )
        idx = np.concatenate([np.arange(lo, hi), np.full(n_frames - n, hi - 1)])
        return Window(idx.astype(np.int64), True)
    if mode == "first":
        idx = np.arange(lo, lo + n_frames)
    elif mode == "last":
        idx = np.arange(hi - n_frames, hi)
    else:
        idx = lo + np.floor(np.linspace(0, n - 1, n_frames)).astype(np.int64)
    return Window(idx.astype(np.int64), False)
