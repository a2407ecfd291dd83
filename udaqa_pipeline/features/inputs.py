"""From a stage config and L sampled frames to I3D's input: the clip layout, a view's input tensor,
the cached video size, and the status a sample gets when reading it fails."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from ..config import Config
from .views import shift_frames


def layout_of(cfg: Config):
    """The stage config's :class:`~udaqa_pipeline.video.clips.ClipLayout` (``[clips]`` over
    ``frames.n_frames``)."""
    from ..video.clips import clip_layout

    c = cfg.clips
    return clip_layout(c.layout, cfg.frames.n_frames, c.n_clips, c.clip_len)


def view_input(frames: np.ndarray, cfg: Config, view: Mapping[str, Any]) -> torch.Tensor:
    """I3D input (3, L, crop, crop) of one view of the L sampled frames (L, H, W, 3) uint8."""
    from ..video.transforms import i3d_input

    p = cfg.preprocess
    return i3d_input(shift_frames(frames, int(view.get("shift", 0))), resize=p.resize, crop=p.crop,
                     crop_mode="center", flip=bool(view.get("flip", False)), norm=p.norm)


def video_size_of(cfg: Config) -> tuple[int, int]:
    """(h, w) of the downsampled video cached beside the features (``cache.video_size``)."""
    h, w = cfg.cache.video_size
    return int(h), int(w)


#: Sample status of each :data:`~udaqa_pipeline.video.decode.VIDEO_ERROR_KINDS` value: a file that is
#: there but cannot be decoded (empty or damaged) is ``corrupt``; an OS refusal or a request no file
#: could meet is not the video's fault, so it is a plain ``error``.
#: A truncated file, a frame folder with a gap in the window and a window FFmpeg decodes from damaged
#: data are damaged sources (``corrupt``); a rotation that cannot be applied and a frame folder whose
#: names do not say one order are not damage (``error``).
STATUS_OF_KIND: dict[str, str] = {"missing": "missing", "too_short": "too_short", "empty": "corrupt",
                                  "corrupt": "corrupt", "truncated": "corrupt", "gap": "corrupt", "damaged": "corrupt",
                                  "unsupported": "error", "unreadable": "error", "bad_request": "error",
                                  "ambiguous": "error"}


def failure_status(exc: BaseException) -> str:
    """Map an exception raised while reading a sample to its ``status`` in the sample table
    (a :class:`~udaqa_pipeline.video.decode.VideoError` by its ``kind``, see :data:`STATUS_OF_KIND`)."""
    from ..video.clips import ShortVideoError
    from ..video.decode import VideoError

    if isinstance(exc, ShortVideoError):
        return "too_short"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, VideoError):
        return STATUS_OF_KIND.get(getattr(exc, "kind", "corrupt"), "corrupt")
    return "error"
