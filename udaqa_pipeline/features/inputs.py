"""From a stage config and L sampled frames to I3D's input: the clip layout, a view's input tensor,
the cached video size, and the status a sample gets when reading it fails."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .views import shift_frames


def layout_of(cfg: Mapping[str, Any]):
    """The stage config's :class:`~udaqa_pipeline.video.clips.ClipLayout`."""
    from ..video.clips import clip_layout

    c = cfg["clips"]
    return clip_layout(c.get("layout", "overlapping"), int(cfg["frames"]["n_frames"]), int(c["n_clips"]),
                       int(c["clip_len"]))


def view_input(frames: np.ndarray, cfg: Mapping[str, Any], view: Mapping[str, Any]) -> torch.Tensor:
    """I3D input (3, L, crop, crop) of one view of the L sampled frames (L, H, W, 3) uint8."""
    from ..video.transforms import i3d_input

    p = cfg.get("preprocess", {})
    return i3d_input(
        shift_frames(frames, int(view.get("shift", 0))), resize=int(p.get("resize", 256)), crop=int(p.get("crop", 224)),
        crop_mode="center", flip=bool(view.get("flip", False)), norm=p.get("norm", "i3d"),
    )


def video_size_of(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(h, w) of the downsampled video cached beside the features (``cache.video_size``)."""
    h, w = cfg.get("cache", {}).get("video_size", [64, 64])
    return int(h), int(w)


#: Sample status of each :data:`~udaqa_pipeline.video.decode.VIDEO_ERROR_KINDS` value: a file that is
#: there but cannot be decoded (empty or damaged) is ``corrupt``; an OS refusal or a request no file
#: could meet is not the video's fault, so it is a plain ``error``.
#: A truncated file and a frame folder with a gap in the window are damaged sources (``corrupt``); a
#: rotation that cannot be applied is not the file's fault (``error``).
STATUS_OF_KIND: dict[str, str] = {"missing": "missing", "too_short": "too_short", "empty": "corrupt",
                                  "corrupt": "corrupt", "truncated": "corrupt", "gap": "corrupt",
                                  "unsupported": "error", "unreadable": "error", "bad_request": "error"}


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
