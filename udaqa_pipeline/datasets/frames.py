"""A sample's frame window, decoded: the bridge from :class:`~.base.Sample` to pixels.

``cfg["frames"]`` keys:

- ``n_frames`` (L): window length (103; 160 for JIGSAWS).
- ``mode``: ``"first"``, ``"last"``, ``"uniform"`` (see :mod:`udaqa_pipeline.video.clips`) or
  ``"auto"`` = ``"last"`` when the sample sits inside an untrimmed source (``frame_end`` set: the
  CoRe MTL-AQA layout) and ``"first"`` otherwise (MUSDL trimmed folders). Default ``"first"``.
- ``short_policy``: ``"pad_last"`` (default) or ``"error"``.

Every failure raises :class:`~udaqa_pipeline.video.decode.VideoError` with its ``kind``: a span
shorter than the window under ``"error"`` or ending past the source is ``too_short``, any other
window problem (empty span, bad settings) ``bad_request``; decoding failures keep decode's kind.

The window is taken inside the sample's span ``[frame_start, frame_end)`` (whole source when
``None``). Only the window's frames are decoded: a frame folder opens just those images, a video
file decodes up to the last one. For a video file the length comes from a packet count (no
decoding); if the decoder then yields fewer frames, the exact count is taken and the window
recomputed once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..video.clips import ShortVideoError, window_indices
from ..video.decode import FrameFolder, VideoError, VideoFile, open_video
from .base import Sample


class SampledFrames(NamedTuple):
    """Decoded window of one sample."""

    frames: np.ndarray  #: uint8 (L, H, W, 3) RGB
    indices: np.ndarray  #: int64 (L,) source-frame index of each window frame (repeats when padded)
    n_source_frames: int  #: frames in the source (whole file / folder)
    short: bool  #: the span had fewer than L frames and was padded (short_policy "pad_last")


def window_mode(sample: Sample, cfg: dict) -> str:
    mode = cfg.get("frames", {}).get("mode", "first")
    if mode == "auto":
        return "last" if sample.frame_end is not None else "first"
    return mode


def _window(sample: Sample, n_source: int, cfg: dict):
    fcfg = cfg.get("frames", {})
    try:
        return window_indices(
            n_source, int(fcfg["n_frames"]), window_mode(sample, cfg), end=sample.frame_end,
            start=sample.frame_start, short_policy=fcfg.get("short_policy", "pad_last"),
        )
    except ShortVideoError as exc:
        raise VideoError(sample.source, f"too short: {exc}", "set frames.short_policy=pad_last to pad it",
                         kind="too_short") from exc
    except ValueError as exc:
        # A span ending past the source is a source shorter than its annotation (too_short); any other
        # ValueError (empty span, bad window settings) no file could satisfy (bad_request).
        past_end = sample.frame_end is not None and int(sample.frame_end) > n_source
        raise VideoError(sample.source, f"sample {sample.id}: {exc}",
                         "check the annotation's frame range against the frames on disk",
                         kind="too_short" if past_end else "bad_request") from exc


def sample_frames(sample: Sample, cfg: dict) -> SampledFrames:
    """Decode the ``cfg["frames"]`` window of ``sample`` (raises :class:`VideoError` on any failure)."""
    src = open_video(sample.source)
    try:
        if isinstance(src, FrameFolder):
            n = src.n_frames()
            win = _window(sample, n, cfg)
            return SampledFrames(src.read(win.indices), win.indices, n, win.short)
        assert isinstance(src, VideoFile)
        n = src.n_frames_fast()
        win = _window(sample, n, cfg)
        try:
            frames = src.read(win.indices)
        except VideoError as exc:
            # too_short / empty here mean the decoder gave fewer frames than the packets promised
            if exc.kind not in ("too_short", "empty"):
                raise
            n = src.n_frames()  # container count was off: count by decoding and retry once
            win = _window(sample, n, cfg)
            frames = src.read(win.indices)
        return SampledFrames(frames, win.indices, n, win.short)
    finally:
        src.close()
