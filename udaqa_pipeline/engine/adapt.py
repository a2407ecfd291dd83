"""Train the top of I3D from a cached cut (``train.adapt = "top"``): a feature source beside the
frozen cache (:class:`~udaqa_pipeline.data.trainset.CacheSource`) and the frames through a trainable
I3D (:class:`~.finetune.FrameSource`), run by the same loop.

:class:`CutSource` reads the activation stage one stored at ``cache.cut`` (:mod:`udaqa_pipeline.cache.cut`)
and runs the I3D blocks from the cut on (:class:`~.finetune.Backbone` with the blocks below dropped)
to the clip features, with gradients in a training step. Design choices:

- **Learning rate**: the blocks train at ``finetune.lr_scale`` x the heads' learning rate (0.1, as
  the published AQA code fine-tunes I3D), following the heads' schedule, with their own Adam inside
  the backward pass and the heads' weight decay (:class:`~.finetune.Backbone`).
- **BatchNorm** (``finetune.freeze_bn``, default on): the Kinetics running statistics in training
  and evaluation alike, scale and shift trained, so the top starts from exactly the function that
  wrote the cached features (:mod:`.finetune` says why batch statistics fail here).
- **Augmentation**: the cache's V feature views (flip, +-shift) are the augmentation: each sample
  draws one view per epoch (the loop's view draw), and its cut is that view's. Evaluation, selection
  and calibration passes run view 0 in eval mode, as stage one does.
- **Feature standardisation** (``train.feature_norm``): the statistics are those of the cached
  features, which are the starting top's output on every view (exactly, for an fp32 cut), fixed for
  the run.
- **Weight averaging** (``train.average_last``) averages the top's weights with the heads'.
- **Heads first** (``train.adapt_epochs = N``): the top trains in the last N epochs only; before,
  the heads learn on the cache's features, which are the untrained top's output (exactly, for an
  fp32 cut; to the bf16 rounding of the cut, about 1e-2 relative, otherwise), at the cost of the
  frozen recipe. Fine-tuning a pretrained network from trained heads rather than from random ones
  is "linear probing, then fine-tuning" (Kumar et al., ICLR 2022): the first steps' gradients
  through random heads do not pull the pretrained features off course. It also lets the heads
  have the frozen recipe's whole schedule while the top costs only N epochs.
- **Per-group stages and inner folds** (calibration, ``select = "inner_cv"``): each group's model and
  each inner model train their own top from the Kinetics weights (:meth:`CutSource.fork`).
- The checkpoint's ``source`` holds the trained blocks (and their Adam moments) only; scoring and
  evaluation put them over the Kinetics I3D (:func:`udaqa_pipeline.backbone.weights.i3d_with`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..config import Config, ConfigError
from ..data.trainset import view_video
from .finetune import Backbone, _auto_flag

#: Videos per no-grad pass of the top (selection, calibration, curriculum passes).
INFER_VIDEOS = 16
NO_CUT = ("train.adapt = 'top' trains the I3D blocks above a stored cut: name it with --set cache.cut=Mixed_5b "
          "(or Mixed_4f) on `train` too, after `udaqa-pipeline features STAGE --set cache.cut=Mixed_5b` has added "
          "it to the cache")


def top_backbone(cfg: Config, device: torch.device, state: dict | None = None) -> Backbone:
    """The trainable top of I3D above ``cache.cut`` (the blocks below dropped), from the Kinetics
    weights, or with ``state`` (a run's ``source`` state) loaded over them."""
    from ..backbone.weights import load_i3d

    cut = cfg.cache.cut
    if cut == "none":
        raise ConfigError(NO_CUT)
    f, t = cfg.finetune, cfg.train
    bb = Backbone(load_i3d(device=device), lr=t.lr * f.lr_scale, lr_scale=f.lr_scale, weight_decay=t.weight_decay,
                  freeze_bn=f.freeze_bn, checkpointing=False, amp=_auto_flag(f.amp, device), train_from=cut, drop_below=True)
    if state is not None:
        bb.load_state_dict(state)
    return bb.to(device)


class CutSource:
    """Clip features from a cut store through a trainable top of I3D (module doc).

    ``cut`` (N, V, K, c, t, h, w) as stored, in label-table order, ``have`` its (N,) mask and
    ``dtype`` its storage (:func:`udaqa_pipeline.cache.cut.read_cut`; a numpy array, so parallel
    jobs share it memory-mapped); ``video`` / ``views`` / ``features`` are the cache's.
    ``batch(indices, views)`` -> (features (B, K, 1024) float32, video (B, L, 3, h, w) uint8)."""

    def __init__(self, cache: Any, cfg: Config, device: str | torch.device, *, module: Backbone | None = None,
                 cut: tuple[np.ndarray, np.ndarray, str] | None = None) -> None:
        from ..cache.cut import below, read_cut

        if cfg.cache.cut == "none":
            raise ConfigError(NO_CUT)
        self.cache, self.cfg, self.device = cache, cfg, torch.device(device)
        self.cut, self.have, self.dtype = cut if cut is not None else read_cut(cache, cfg.cache.cut, cfg.cache.cut_dtype)
        self.at = below(cfg.cache.cut)
        self.features = cache.features  # (N, V, K, 1024): the starting top's output, for feature_norm
        self.video = cache.video
        self.views = list(cache.views) or [{"flip": False, "shift": 0}]
        self.n_views = int(self.cut.shape[1])
        self.module = module if module is not None else top_backbone(cfg, self.device)
        #: the top is held at its weights and the cached features read instead (train.adapt_epochs)
        self.hold = False

    def with_state(self, state: dict | None) -> "CutSource":
        """Another source on the same arrays with its own top: the Kinetics weights, or ``state`` (a
        run's trained blocks)."""
        return CutSource(self.cache, self.cfg, self.device, module=top_backbone(self.cfg, self.device, state),
                         cut=(self.cut, self.have, self.dtype))

    def fork(self) -> "CutSource":
        """Another source on the same arrays whose top starts from the Kinetics weights."""
        return self.with_state(None)

    def _top(self, x: np.ndarray) -> torch.Tensor:
        from ..cache.cut import decode

        b, k = x.shape[:2]
        t = decode(x.reshape(b * k, *x.shape[2:]), self.dtype)
        return self.module.features(t, at=self.at).view(b, k, -1)

    def batch(self, indices: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(indices, dtype=np.int64)
        v = np.asarray(views, dtype=np.int64)
        if self.hold:
            return torch.from_numpy(np.ascontiguousarray(self.features[idx, v])), view_video(self.video, self.views, idx, v)
        lacking = [self.cache.samples.column("id")[int(i)].as_py() for i in idx if not self.have[i]]
        if lacking:
            raise ConfigError(f"samples {', '.join(lacking[:5])} have no {self.cfg.cache.cut} cut in {self.cache.path}; "
                              f"rerun `udaqa-pipeline features` with --set cache.cut={self.cfg.cache.cut}")
        x = self.cut[idx, v]
        if torch.is_grad_enabled():
            feats = self._top(x)
        else:
            with self.module.inference():
                feats = torch.cat([self._top(x[s:s + INFER_VIDEOS]) for s in range(0, len(idx), INFER_VIDEOS)])
        return feats, view_video(self.video, self.views, idx, v)


def adapted(data: Any, cfg: Config, device: str | torch.device, state: dict | None = None) -> Any:
    """``data`` as ``cfg.train.adapt`` trains on it: itself (``"none"``, or a source that is already
    trainable), or its cache read through a :class:`CutSource` (``"top"``) whose top starts from the
    Kinetics weights or ``state`` (a run's trained blocks). A training set already read through a
    cut gets a new top on the same arrays."""
    from dataclasses import replace

    from ..cache import open_cache
    from ..data.trainset import from_cache

    if isinstance(data.source, CutSource):
        return replace(data, source=data.source.with_state(state))
    if cfg.train.adapt == "none" or data.source.module is not None:
        return data
    if data.provenance.cache_dir is None:
        raise ConfigError("train.adapt = 'top' trains from a cache's cut; this training set has no cache")
    cache = open_cache(data.provenance.cache_dir)
    module = top_backbone(cfg, torch.device(device), state) if state is not None else None
    return from_cache(cache, data.provenance.stage, CutSource(cache, cfg, device, module=module))
