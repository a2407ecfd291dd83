"""A sample's frame window, decoded: the bridge from :class:`~.base.Sample` to pixels.

The ``[frames]`` section (:class:`~udaqa_pipeline.config.Frames`):

- ``n_frames`` (L): window length (103; 160 for JIGSAWS).
- ``mode``: ``"first"``, ``"last"``, ``"uniform"`` (see :mod:`udaqa_pipeline.video.clips`) or
  ``"auto"`` = ``"last"`` when the sample sits inside an untrimmed source (``frame_end`` set: the
  CoRe MTL-AQA layout) and ``"first"`` otherwise (MUSDL trimmed folders), the default.
- ``short_policy``: ``"pad_last"`` (default) or ``"error"``.
- ``gap_policy`` (numbered frame folders): ``"error"`` (default) refuses a window over a missing
  frame number, naming the numbers; ``"nearest"`` takes each missing frame from its nearest
  existing neighbour and records the filled numbers in :attr:`SampledFrames.filled`.
- ``damaged`` (video files): ``"fail"`` (default) refuses a window holding frames FFmpeg decoded
  from damaged data (``damaged``, see :attr:`~udaqa_pipeline.video.decode.VideoFile.damaged`):
  error concealment makes them look like frames, and the features move with them; ``"keep"``
  decodes it anyway and records those frames in :attr:`SampledFrames.damaged`.

Every failure raises :class:`~udaqa_pipeline.video.decode.VideoError` with its ``kind``: a span
shorter than the window under ``"error"`` or ending past the source is ``too_short``, any other
window problem (empty span, bad settings) ``bad_request``; decoding failures keep decode's kind
(``truncated``, ``gap``, ``corrupt``, ...).

The window is taken inside the sample's span ``[frame_start, frame_end)`` (whole source when
``None``). In a frame folder whose names carry frame numbers, index ``i`` is frame number
``first + i`` (``first`` = the folder's lowest number), so a missing file is a gap, never a shift.

Only the window's frames are decoded, in one pass: a frame folder opens just those images; a video
file's length is what its container states (:meth:`~udaqa_pipeline.video.decode.VideoFile.container_count`:
header cross-checked with the index or packets, no decoding) and the window is decoded once, the
MPEG-1/2/4 family skipping B-frames no window frame needs. When decoding shows the container's
count was wrong (a window reaching the end decodes to the end, so the exact count is then known),
the window is laid out again on the exact count and decoded a second time: the frames are always
those of ``floor(linspace(0, n - 1, L))`` (or the mode's rule) over the exactly decoded ``n``. A
file the container says is longer than what decodes is ``truncated``, never a padded short video.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..config import Frames
from ..video.clips import ShortVideoError, window_indices
from ..video.decode import GAP_POLICIES, FrameFolder, VideoError, VideoFile, number_ranges, open_video
from .base import Sample


class SampledFrames(NamedTuple):
    """Decoded window of one sample."""

    frames: np.ndarray  #: uint8 (L, H, W, 3) RGB
    indices: np.ndarray  #: int64 (L,) source-frame index of each window frame (repeats when padded or filled)
    n_source_frames: int  #: frames in the source (whole file / folder span)
    short: bool  #: the span had fewer than L frames and was padded (short_policy "pad_last")
    filled: tuple[int, ...] = ()  #: frame numbers missing from a folder, filled from a neighbour (gap_policy "nearest")
    damaged: tuple[int, ...] = ()  #: source frames of the window decoded from damaged data (damaged "keep")


def window_mode(sample: Sample, fcfg: Frames) -> str:
    mode = fcfg.mode
    if mode == "auto":
        return "last" if sample.frame_end is not None else "first"
    return mode


def _window(sample: Sample, n_source: int, fcfg: Frames):
    try:
        return window_indices(
            n_source, fcfg.n_frames, window_mode(sample, fcfg), end=sample.frame_end,
            start=sample.frame_start, short_policy=fcfg.short_policy,
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


def sample_frames(sample: Sample, fcfg: Frames) -> SampledFrames:
    """Decode the ``fcfg`` window (the stage's ``[frames]`` section) of ``sample`` (raises
    :class:`VideoError` on any failure)."""
    _gap_policy(sample, fcfg)  # a mistyped policy is refused for video files too, not only where it applies
    src = open_video(sample.source)
    try:
        if isinstance(src, FrameFolder):
            return _folder_frames(src, sample, fcfg)
        assert isinstance(src, VideoFile)
        out = _video_frames(src, sample, fcfg)
    finally:
        src.close()
    out = out._replace(damaged=src.damaged)
    if out.damaged and fcfg.damaged == "fail":
        used = int(np.isin(out.indices, out.damaged).sum())
        raise VideoError(sample.source, f"{used} of the window's {len(out.indices)} frames decode from damaged data "
                         f"(FFmpeg flags frame {number_ranges(list(src.corrupt_frames))} corrupt; the frames after "
                         f"it up to the next key frame predict from it)",
                         "fetch or re-encode the video again, or set frames.damaged = \"keep\" to use it as "
                         "decoded (the sample is flagged in the table)", kind="damaged")
    return out


def _gap_policy(sample: Sample, fcfg: Frames) -> str:
    policy = fcfg.gap_policy
    if policy not in GAP_POLICIES:
        raise VideoError(sample.source, f"frames.gap_policy = {policy!r} is not a gap policy",
                         f"set frames.gap_policy to one of {', '.join(GAP_POLICIES)}", kind="bad_request")
    return policy


def _folder_frames(src: FrameFolder, sample: Sample, fcfg: Frames) -> SampledFrames:
    n = src.n_frames()
    win = _window(sample, n, fcfg)
    frames = src.read(win.indices, gap_policy=_gap_policy(sample, fcfg))
    indices = win.indices
    if src.filled:  # record the frame each window position really shows
        pos, _ = src.locate(win.indices, "nearest")
        indices = np.asarray(src.numbers, np.int64)[pos] - src.first_number
    return SampledFrames(frames, indices, n, win.short, src.filled)


def _video_frames(src: VideoFile, sample: Sample, fcfg: Frames) -> SampledFrames:
    count = src.container_count()
    if count.frames == 0:  # the container says nothing usable: count by decoding (raises empty if nothing decodes)
        n = src.n_frames()
        win = _window(sample, n, fcfg)
        return SampledFrames(src.read(win.indices), win.indices, n, win.short)
    exact: int | None = None
    try:
        win = _window(sample, count.frames, fcfg)
        frames = src.read(win.indices, count=count)
        if src.decoded_frames is None or src.decoded_frames == count.frames:
            return SampledFrames(frames, win.indices, count.frames, win.short)
        exact = src.decoded_frames  # the window reached the end and the container's count was off
    except VideoError as exc:
        # too_short / empty here mean the container promised more frames than decode, or an untrusted
        # count made the span look short; truncated and corrupt files never get here.
        if exc.kind not in ("too_short", "empty") or (count.trusted and src.decoded_frames is None):
            raise
        exact = src.decoded_frames
    n = exact if exact is not None else src.n_frames()  # count by decoding only when no pass has yet
    win = _window(sample, n, fcfg)
    return SampledFrames(src.read(win.indices), win.indices, n, win.short)
