"""The frozen I3D forward over clips, whole or between two named blocks, and :func:`featurize`
(one video's L sampled frames -> its cached features and video).

Every forward is exactly ``batch_size`` clips (default 16 on CPU, 64 on GPU), the last batch padded
with zero clips. A fixed batch shape makes each clip's result independent of which other clips
share its batch (the kernels are picked by shape; with a varying batch, CPU results differ at
~1e-11), so a resumed or sharded extraction gives bit-identical features. ``dtype="bf16"`` runs the
forward under bfloat16 autocast (features differ at ~1e-2 relative from fp32).

A forward can stop at, and start from, a named block of I3D (:data:`~udaqa_pipeline.backbone.i3d.BLOCKS`):
:func:`activations_at` runs clips up to a block, :func:`features_from` runs a block's activations
to the pooled feature; together they give what :func:`forward_clips` gives, bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..backbone.i3d import FEATURE_DIM
from ..config import DTYPES
from ..config import Config
from .inputs import layout_of, video_size_of, view_input
from .views import apply_view, make_views


def default_batch_size(device: torch.device) -> int:
    """Clips per forward when none is recorded or given: 64 on a GPU, 16 otherwise."""
    return 64 if device.type == "cuda" else 16


def _batched(step: Callable[[torch.Tensor], torch.Tensor], model: torch.nn.Module, x: torch.Tensor,
             batch_size: int, dtype: str) -> np.ndarray:
    """``step`` over ``x`` (n, ...) in zero-padded batches of exactly ``batch_size``; float32 (n, ...)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    device = next(model.parameters()).device
    out: np.ndarray | None = None
    for start in range(0, x.shape[0], batch_size):
        part = x[start : start + batch_size]
        n = part.shape[0]
        if n < batch_size:
            part = torch.cat([part, part.new_zeros((batch_size - n,) + tuple(part.shape[1:]))])
        part = part.to(device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            y = step(part)
        if out is None:
            out = np.empty((x.shape[0],) + tuple(y.shape[1:]), np.float32)
        out[start : start + n] = y.float().cpu().numpy()[:n]
    return out if out is not None else np.empty((0, FEATURE_DIM), np.float32)


def forward_clips(model: torch.nn.Module, clips: torch.Tensor, batch_size: int, dtype: str = "fp32") -> np.ndarray:
    """I3D features (n, 1024) float32 of ``clips`` (n, 3, T, H, W) (``model.forward_features``)."""
    return _batched(model.forward_features, model, clips, batch_size, dtype)


def activations_at(model: torch.nn.Module, clips: torch.Tensor, block: str, batch_size: int,
                   dtype: str = "fp32") -> np.ndarray:
    """Activations (n, C, T', H', W') float32 of I3D block ``block`` for ``clips`` (n, 3, T, H, W)."""
    return _batched(lambda x: model.features(x, stop=block), model, clips, batch_size, dtype)


def features_from(model: torch.nn.Module, activations: torch.Tensor, block: str, batch_size: int,
                  dtype: str = "fp32") -> np.ndarray:
    """Pooled I3D features (n, 1024) float32 from the activations (n, C, T', H', W') of ``block``."""
    return _batched(lambda x: model.features(x, start=block), model, activations, batch_size, dtype)


def featurize(
    frames: np.ndarray,
    model: torch.nn.Module,
    cfg: Config,
    view: Mapping[str, Any] | int | None = None,
    *,
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features (K, 1024) float32 and downsampled video (L, 3, h, w) uint8 of one video's L sampled
    frames (``datasets.frames.sample_frames(...).frames``), exactly as stage one caches them.

    ``view``: a view dict ({"flip", "shift"}), an index into the config's views, or None (view 0).
    The returned video has the same view applied. ``model`` should be an eval I3D, ideally after
    ``prepare_for_inference()`` as extraction uses; use the extraction's ``batch_size`` (default
    16 on CPU, 64 on GPU) for bit-identical numbers. Raises ``ValueError`` unless there are L frames.
    """
    from ..video.transforms import downsample_video

    L = cfg.frames.n_frames
    if frames.shape[0] != L:
        raise ValueError(
            f"featurize needs the L = {L} sampled frames (frames.n_frames), got {frames.shape[0]}; "
            f"sample them with udaqa_pipeline.datasets.frames.sample_frames"
        )
    if view is None or isinstance(view, int):
        views = make_views(max(cfg.cache.views, (view or 0) + 1), cfg.cache.view_shift)
        view = views[view or 0]
    layout = layout_of(cfg)
    x = view_input(frames, cfg, view)
    clips = torch.stack([x[:, s : s + layout.clip_len] for s in layout.starts])
    device = next(model.parameters()).device
    feats = forward_clips(model, clips, batch_size or default_batch_size(device), cfg.cache.dtype)
    video = apply_view(downsample_video(frames, video_size_of(cfg)), view)
    return feats, video
