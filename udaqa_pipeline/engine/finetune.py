"""Fine-tune I3D end to end with the stage-two heads (``train --finetune-backbone``, ``finetune``).

Stage two's loop (:func:`udaqa_pipeline.engine.run.train`) is reused as is: the same heads, losses,
judge draws, curriculum, honest/paper protocols, checkpoint file and resume. What changes is the
feature source: :class:`FrameSource` decodes the frames of each sample (dataset adapter +
``sample_frames``, never the cache) and computes the K clip features with a trainable I3D
(:class:`Backbone`, handed to the loop as ``source.module`` so it is moved, switched to train mode,
checkpointed and restored with the heads).

Design choices:

- **Augmentation** (training steps only, one draw per sample per step, all clips of a video share
  it): temporal shift of the L-frame window by s in [-``max_shift``, ``max_shift``] frames with the
  edge frame repeated (stage one's view shift, default 3 as CoRe's jitter), horizontal flip with
  p = 0.5, and a random ``crop`` px square after the short side is resized to ``resize``
  (``i3d_input(crop_mode="random")``). The downsampled video of the latent branch gets the same
  shift and flip. Evaluation (the loop's ``predict`` / uncertainty passes, which run under
  ``torch.no_grad``) sees the plain centre view with I3D in eval mode, exactly as stage one.
  Augmentation seeds are drawn from torch's global RNG, which the loop checkpoints, so a resumed
  run draws the same augmentations as an uninterrupted one.
- **Backbone learning rate**: ``finetune.lr_scale`` x the heads' learning rate (default 0.1),
  following the heads' schedule (``train.lr_schedule``) epoch by epoch, as one optimizer with two
  parameter groups under one scheduler does in the published code. The
  loop builds one Adam over the heads; the backbone is updated by its own Adam *inside the backward
  pass* (a post-accumulate-grad hook per parameter, PyTorch's "optimizer step in backward" recipe),
  which then clears the gradient, so the heads' optimizer skips those parameters. Adam's moments
  live in buffers of :class:`Backbone`, so they are checkpointed and resumed with the weights. Same
  weight decay as the heads. Under DDP each gradient is all-reduced in the hook before the step.
- ``finetune.freeze_bn`` (default on): BatchNorm layers stay in eval mode, normalising with the
  Kinetics running statistics while their scale and shift train, so a clip's features are the same
  function of its frames in a training step and in evaluation. Off, a step normalises with the
  statistics of its batch, as the published AQA code does; but a batch is B videos x K clips of the
  same few videos, whose statistics are no population's: on JIGSAWS Suturing, after 30 epochs of
  training the top from the Mixed_5b cut that way, the training rows' features in eval mode were
  66% (relative L2) away from their training-mode features and the heads' predictions of the
  training rows 5.6 points (GRS, 6..30) low.
- ``finetune.freeze_backbone``: no gradient, I3D in eval mode (a frozen-feature baseline that still
  sees augmented frames). The weights never change.
- ``finetune.train_from`` (a block name, e.g. ``"Mixed_5b"``): the blocks below it stay frozen (eval
  mode, no gradient, not checkpointed); only the blocks from it on train. This is end-to-end
  fine-tuning of the top of I3D, the same computation as training it from a cut store
  (``train.adapt = "top"``, :mod:`.adapt`) but with the bottom run, and augmented, on every step.
- **Memory**: bf16 autocast (``finetune.amp``) and activation checkpointing of every I3D block
  (``finetune.checkpointing``), both ``"auto"`` = on for CUDA, off on CPU (where memory is not the
  limit and recomputation would cost a third more); "on"/"off" force them. Batch 4 x 10 clips x 16
  x 224 px then keeps only the 16 block inputs per clip. During recomputation BatchNorm momentum
  is set to 0 (and its counter restored) so running statistics are updated once per step.
- **Decoding** runs in ``workers`` persistent DataLoader worker processes (default: min(8, CPUs)
  on CUDA, 0 on CPU); inference passes overlap decoding with the I3D forward.
- **Config**: the resolved stage config (:func:`udaqa_pipeline.config.resolve`) holds the
  ``[finetune]`` section (:class:`~udaqa_pipeline.config.Finetune`) with its defaults, so the config in
  the checkpoint carries the fine-tuning settings and ``finetune.*`` overrides work like any other.
- **Cache hash**: no feature cache is read, but the run records the hash stage one would give these
  frames/clips/preprocess settings and samples, prefixed ``ft-`` (so ``evaluate`` on cached frozen
  features refuses the run instead of scoring it with the wrong features; use
  :func:`udaqa_pipeline.evaluation.finetuned.evaluate_finetuned`).
- **Per-group stages** (``train.per_group``, JIGSAWS tasks): one group after another, each with its
  own heads and its own backbone, every one from the same starting weights, in ``<run>/<group>/``.
- **Refusal**: before training, one fine-tuning step is timed on synthetic clips of the real shape
  and an epoch is estimated; above ``max_epoch_minutes`` (default 30) the run is refused with the
  estimate unless ``force`` (a forced run skips the timing step). The same step measures the memory
  a step needs (what autograd keeps for the backward, counted by a saved-tensors hook, x the batch,
  plus weights, gradients and Adam's moments): above 80% of what is free (the GPU's free memory, or
  the machine's available memory) activation checkpointing is turned on when it is ``auto``, else
  the run is refused naming the batch size that fits.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import config, resolve
from ..config import Config
from ..errors import UdaqaError
from ..backbone.i3d import BLOCKS
from ..runs.layout import RunSpec


ADAM_BETAS = (0.9, 0.999)

log = logging.getLogger(__name__)
ADAM_EPS = 1e-8


class FinetuneError(UdaqaError, RuntimeError):
    """Fine-tuning cannot run as asked; the message says why and what to do."""


# --------------------------------------------------------------------------- pure pieces


def adam_update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
                *, lr: float, weight_decay: float = 0.0, betas: tuple[float, float] = ADAM_BETAS,
                eps: float = ADAM_EPS) -> None:
    """One in-place Adam step on ``p`` (``torch.optim.Adam`` semantics: L2 weight decay added to the
    gradient, bias-corrected moments). ``m``, ``v`` are the moment buffers, ``step`` a 0-d count."""
    b1, b2 = betas
    if weight_decay:
        g = g.add(p, alpha=weight_decay)
    step.add_(1)
    n = float(step)
    m.lerp_(g, 1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    denom = (v.sqrt() / math.sqrt(1 - b2 ** n)).add_(eps)
    p.addcdiv_(m, denom, value=-lr / (1 - b1 ** n))


def augmentation(seed: int, max_shift: int, flip: bool) -> tuple[int, bool, torch.Generator]:
    """(temporal shift, flip, generator for the crop) drawn from one seed."""
    g = torch.Generator().manual_seed(int(seed))
    s = int(torch.randint(-max_shift, max_shift + 1, (1,), generator=g)) if max_shift > 0 else 0
    f = bool(torch.rand((), generator=g) < 0.5) if flip else False
    return s, f, g


def estimate_epoch_seconds(step_s: float, infer_s: float, decode_s: float, *, n_fit: int, n_select: int,
                           batch_size: int, workers: int, curriculum: bool) -> float:
    """Seconds for one full-data epoch: training steps + the selection pass (+ the curriculum's
    uncertainty pass over the fit rows) + decoding not hidden by ``workers`` processes."""
    steps = n_fit / max(batch_size, 1)  # per video: a last short batch costs its share only
    n_infer = n_select + (n_fit if curriculum else 0)
    decode = decode_s * (n_fit + n_infer) / max(workers, 1)
    compute = steps * step_s + n_infer * infer_s
    return compute + (decode if workers == 0 else max(0.0, decode - compute))


def _auto_flag(setting: str | bool, device: torch.device) -> bool:
    """``auto`` (on for CUDA, off on CPU), on/true or off/false (checked by :class:`~udaqa_pipeline.config.Finetune`)."""
    s = str(setting).lower()
    return device.type == "cuda" if s == "auto" else s in ("on", "true")


# --------------------------------------------------------------------------- backbone


def _buffer_name(kind: str, pname: str) -> str:
    return f"adam_{kind}__" + pname.replace(".", "__")


class Backbone(nn.Module):
    """A trainable I3D for the stage-two loop (``source.module``); see the module docstring.

    ``features(x)`` maps clips (N, 3, T, H, W) to (N, 1024) float32 like ``I3D.forward_features``,
    with bf16 autocast when ``amp`` and activation checkpointing when training with gradients.
    """

    def __init__(self, i3d: nn.Module, *, lr: float, lr_scale: float = 1.0, weight_decay: float = 0.0,
                 freeze: bool = False, freeze_bn: bool = False, checkpointing: bool = True, amp: bool = False,
                 train_from: str | None = None, drop_below: bool = False) -> None:
        super().__init__()
        from ..backbone.i3d import block_index

        self.i3d = i3d
        #: the in-backward Adam step's learning rate; the loop sets it to the heads' lr x lr_scale each epoch
        self.lr = float(lr)
        self.lr_scale = float(lr_scale)
        self.weight_decay = float(weight_decay)
        self.freeze = bool(freeze)
        self.freeze_bn = bool(freeze_bn)
        self.checkpointing = bool(checkpointing)
        self.amp = bool(amp)
        self.train_from = None if train_from in (None, "none") else str(train_from)
        #: blocks that never train (below ``train_from``): eval mode, run without gradients
        self.frozen = BLOCKS[:block_index(self.train_from)] if self.train_from else ()
        if drop_below:  # fed at the cut: the blocks below hold no weights worth keeping or checkpointing
            for name in self.frozen:
                setattr(i3d, name, nn.Identity())
        self._bns = [m for name in BLOCKS if name not in self.frozen for m in getattr(i3d, name).modules()
                     if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.train(True)  # applies the freeze rules to the I3D's own mode from the start
        if self.freeze:
            i3d.requires_grad_(False)
            return
        for name, p in i3d.named_parameters():
            # the Kinetics classifier is not on the feature path; frozen blocks do not train
            if name.startswith("logits.") or name.split(".", 1)[0] in self.frozen:
                p.requires_grad_(False)
                continue
            self.register_buffer(_buffer_name("m", name), torch.zeros_like(p))
            self.register_buffer(_buffer_name("v", name), torch.zeros_like(p))
            self.register_buffer(_buffer_name("step", name), torch.zeros((), dtype=torch.float64))
            p.register_post_accumulate_grad_hook(self._hook(name))

    def _hook(self, name: str):
        def step(p: torch.Tensor) -> None:
            g = p.grad
            if g is None:
                return
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(g)
                g.div_(dist.get_world_size())
            with torch.no_grad():
                adam_update(p, g, getattr(self, _buffer_name("m", name)), getattr(self, _buffer_name("v", name)),
                            getattr(self, _buffer_name("step", name)), lr=self.lr, weight_decay=self.weight_decay)
            p.grad = None  # the heads' optimizer must not step this parameter again
        return step

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if self.freeze:
            self.i3d.eval()
            return self
        for name in self.frozen:
            getattr(self.i3d, name).eval()
        if self.freeze_bn:
            for m in self._bns:
                m.eval()
        return self

    @contextlib.contextmanager
    def inference(self):
        """Eval mode for the duration (restores the previous mode after)."""
        was = self.training
        self.train(False)
        try:
            yield
        finally:
            self.train(was)

    @contextlib.contextmanager
    def _recompute(self):
        # Activation checkpointing re-runs each block's forward during backward; with momentum 0 the
        # BatchNorm running statistics are not updated a second time.
        # num_batches_tracked is put back too, so the state equals an un-checkpointed step exactly.
        saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                 for m in self._bns]
        for m in self._bns:
            m.momentum = 0.0
        try:
            yield
        finally:
            for m, (mom, n) in zip(self._bns, saved):
                m.momentum = mom
                if n is not None:
                    m.num_batches_tracked.copy_(n)

    def features(self, x: torch.Tensor, at: str | None = None) -> torch.Tensor:
        """(N, 1024) float32 from clips (N, 3, T, H, W), or from the output (N, C, t, h, w) of block
        ``at`` (the activation a cut store holds: the blocks after ``at`` run)."""
        from ..backbone.i3d import block_index, check_input_shape

        if at is None:
            check_input_shape(x.shape)
        dev = next(self.i3d.parameters()).device
        x = x.to(dev, non_blocking=True)
        ckpt = self.checkpointing and self.training and torch.is_grad_enabled() and not self.freeze
        blocks = BLOCKS if at is None else BLOCKS[block_index(at) + 1:]
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
            for name in blocks:
                block = getattr(self.i3d, name)
                if name in self.frozen:
                    with torch.no_grad():
                        x = block(x)
                elif ckpt and any(True for _ in block.parameters()):
                    x = checkpoint(block, x, use_reentrant=False,
                                   context_fn=lambda: (contextlib.nullcontext(), self._recompute()))
                else:
                    x = block(x)
            # AvgPool (2, 7, 7) stride 1 VALID, then the mean over what remains (I3D.forward_features)
            x = F.avg_pool3d(x, (2, 7, 7), stride=1).mean(dim=(2, 3, 4))
        return x.float()


# --------------------------------------------------------------------------- frames


class _Items(torch.utils.data.Dataset):
    """Decodes and preprocesses one sample per key (row, seed, augment); runs in DataLoader workers."""

    def __init__(self, samples: Sequence[Any], cfg: Config) -> None:
        self.samples = list(samples)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int, bool]) -> dict:
        from ..features import video_size_of, shift_frames
        from ..datasets.frames import sample_frames
        from ..video.transforms import downsample_video, i3d_input

        row, seed, augment = key
        sample = self.samples[row]
        try:
            t0 = time.perf_counter()
            frames = sample_frames(sample, self.cfg.frames).frames
            L = self.cfg.frames.n_frames
            if frames.shape[0] != L:
                raise ValueError(f"sample_frames returned {frames.shape[0]} frames, the config asks for {L}")
            p, f = self.cfg.preprocess, self.cfg.finetune
            shift, flip, gen = augmentation(seed, f.max_shift, f.flip) if augment else (0, False, None)
            frames = shift_frames(frames, shift)
            x = i3d_input(frames, resize=p.resize, crop=p.crop, crop_mode="random" if augment and f.random_crop
                          else "center", flip=flip, norm=p.norm, generator=gen)
            video = downsample_video(frames, video_size_of(self.cfg))
            if flip:
                video = np.ascontiguousarray(video[..., ::-1])
            return {"row": row, "x": x, "video": torch.from_numpy(video), "error": None,
                    "seconds": time.perf_counter() - t0}
        except Exception as e:  # noqa: BLE001 - reported with the sample's id by the caller
            return {"row": row, "x": None, "video": None, "error": f"{type(e).__name__}: {e}"}


class _Requests:
    """Batch sampler whose batches are whatever keys are pending (one key per batch)."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, int, bool]] = []

    def __iter__(self):
        return iter([[k] for k in self.pending])

    def __len__(self) -> int:
        return len(self.pending)


def _first(batch: list) -> Any:
    return batch[0]


class FrameData:
    """A dataset's samples and a run's config as stage two's input without a cache: the label table
    and provenance of the samples (every row ``ok``: a frame that cannot be read fails its batch),
    ``sample_list`` and ``config`` for the frame source. :meth:`training_set` pairs them with a
    feature source.

    The provenance's ``cache_hash`` (``ft-...``) names the samples and the frame/clip/preprocess
    settings, not the backbone's weights (the features are computed while training), so evaluating a
    fine-tuned run rebuilds the same hash from the same dataset and refuses a changed one."""

    def __init__(self, stage: str, cfg: Config, samples: Sequence[Any], root: Path) -> None:
        from ..cache import samples_table
        from ..cache.legacy import legacy_key, samples_fingerprint
        from ..cache.plan import base_rows
        from ..cache.manifest import key_hash
        from ..data.trainset import FEATURE_SECTIONS, Labels, Provenance

        self.sample_list = list(samples)
        self.config = cfg
        rows = base_rows(self.sample_list, stage, root)
        fp = samples_fingerprint(rows)
        for r in rows:
            r["status"] = "ok"
        self.labels = Labels.from_table(samples_table(rows))
        key = legacy_key(dataset=stage, cfg=cfg, views=[{"flip": False, "shift": 0}], dtype="finetune",
                         weights_sha256="frames", samples_fingerprint=fp)
        saved = cfg.to_dict()
        self.provenance = Provenance(stage=stage, adapter=cfg.dataset.name or stage, cache_hash="ft-" + key_hash(key),
                                     feature_config={k: saved[k] for k in FEATURE_SECTIONS})

    def training_set(self, source: Any) -> Any:
        """The :class:`~udaqa_pipeline.data.trainset.TrainingSet` of these samples read through ``source``."""
        from ..data.trainset import TrainingSet

        return TrainingSet(self.labels, source, self.provenance, n_features=1024)


class FrameSource:
    """Stage-two feature source computing clip features from frames with a trainable I3D.

    ``batch(indices, views)``: with gradients enabled (a training step) each sample gets a fresh
    augmentation and the features keep their graph to the backbone; under ``torch.no_grad`` (the
    loop's selection and curriculum passes) the centre view goes through I3D in eval mode, in
    chunks of ``infer_batch`` videos while the workers decode ahead. ``views`` is ignored
    (``n_views`` = 1: augmentation is drawn per step instead of from cached views).
    :meth:`fork` / :meth:`with_state` give another source on the same decoding workers whose backbone
    starts again from this one's first weights / holds a given state.
    """

    n_views = 1

    def __init__(self, data: FrameData, backbone: Backbone, *, workers: int = 0, infer_batch: int = 4,
                 _share: "FrameSource | None" = None) -> None:
        from ..features import layout_of
        from ..runs.checkpoint import state_to_cpu

        self.data = data
        self.module = backbone
        self.layout = layout_of(data.config)
        self.workers = int(workers)
        self.infer_batch = max(1, int(infer_batch))
        if _share is not None:  # a fork decodes through the same workers and starts from the same weights
            self.items, self._requests, self._loader, self.start = (_share.items, _share._requests, _share._loader,
                                                                    _share.start)
            return
        self.start = state_to_cpu(backbone.i3d.state_dict())
        self.items = _Items(data.sample_list, data.config)
        self._requests = _Requests()
        self._loader = None
        if self.workers > 0:
            self._loader = torch.utils.data.DataLoader(
                self.items, batch_sampler=self._requests, num_workers=self.workers, collate_fn=_first,
                persistent_workers=True, prefetch_factor=2)

    def with_state(self, state: dict | None) -> "FrameSource":
        """Another source on the same samples and decoding workers with its own backbone: this one's
        first weights, or ``state`` (a run's trained backbone) loaded over them."""
        from ..backbone.i3d import I3D

        i3d = I3D()
        i3d.load_state_dict(self.start)
        dev = next(self.module.i3d.parameters()).device
        bb = build_backbone(self.data.config, dev, i3d)
        if state is not None:
            bb.load_state_dict(state)
        return FrameSource(self.data, bb, workers=self.workers, infer_batch=self.infer_batch, _share=self)

    def fork(self) -> "FrameSource":
        """Another source whose backbone starts from this one's first weights (a group's or an inner
        fold's own I3D: :meth:`TrainingSet.fresh <udaqa_pipeline.data.trainset.TrainingSet.fresh>`)."""
        return self.with_state(None)

    def _load(self, keys: list[tuple[int, int, bool]]) -> Iterable[dict]:
        if self._loader is None:
            return (self.items[k] for k in keys)
        self._requests.pending = keys
        return iter(self._loader)

    def _check(self, item: dict) -> dict:
        if item["error"] is not None:
            s = self.data.sample_list[item["row"]]
            raise FinetuneError(f"sample {s.id} ({s.source}) cannot be read: {item['error']}; fix the file or "
                                f"drop the sample from the annotations (stage one would mark it and skip it)")
        return item

    def _clips(self, items: list[dict]) -> torch.Tensor:
        n = self.layout.clip_len
        return torch.stack([it["x"][:, s:s + n] for it in items for s in self.layout.starts])

    def _features(self, items: list[dict]) -> torch.Tensor:
        f = self.module.features(self._clips(items))
        return f.view(len(items), len(self.layout.starts), -1)

    def batch(self, indices: np.ndarray, views: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [int(i) for i in np.asarray(indices)]
        if torch.is_grad_enabled():
            seeds = torch.randint(0, 2**31 - 1, (len(rows),)).tolist()  # global RNG: checkpointed
            items = [self._check(it) for it in self._load([(r, s, True) for r, s in zip(rows, seeds)])]
            return self._features(items), torch.stack([it["video"] for it in items])
        feats, vids, chunk = [], [], []
        with self.module.inference():
            for it in self._load([(r, 0, False) for r in rows]):
                chunk.append(self._check(it))
                if len(chunk) == self.infer_batch:
                    feats.append(self._features(chunk))
                    vids.extend(c["video"] for c in chunk)
                    chunk = []
            if chunk:
                feats.append(self._features(chunk))
                vids.extend(c["video"] for c in chunk)
        return torch.cat(feats), torch.stack(vids)

    def close(self) -> None:
        self._loader = None  # persistent workers exit with the loader


# --------------------------------------------------------------------------- setup


def build_backbone(cfg: Config, device: torch.device, i3d: nn.Module | None = None) -> Backbone:
    """The Kinetics I3D (cached weights) wrapped as a trainable :class:`Backbone` per ``cfg``."""
    from ..backbone.weights import load_i3d

    f = cfg.finetune
    t = cfg.train
    i3d = i3d if i3d is not None else load_i3d(device=device)
    i3d.to(device)
    return Backbone(i3d, lr=t.lr * f.lr_scale, lr_scale=f.lr_scale, weight_decay=t.weight_decay, freeze=f.freeze_backbone,
                    freeze_bn=f.freeze_bn, checkpointing=_auto_flag(f.checkpointing, device),
                    amp=_auto_flag(f.amp, device), train_from=f.train_from)


def time_step(backbone: Backbone, cfg: Config, batch_size: int, *, n_videos: int | None = None,
              warmup: bool | None = None) -> dict[str, float]:
    """Time one training step (fwd + bwd + in-backward update) and one no-grad pass of the backbone on
    synthetic clips of the config's shape, on a copy (the real weights are not touched).

    ``n_videos`` videos of K clips each (default ``batch_size`` on CUDA, 1 on CPU, scaled to
    ``batch_size``). Returns seconds per step (batch ``batch_size``) and per video inference."""
    from ..features import layout_of

    dev = next(backbone.i3d.parameters()).device
    probe = Backbone(copy.deepcopy(backbone.i3d), lr=backbone.lr, lr_scale=backbone.lr_scale,
                     weight_decay=backbone.weight_decay,
                     freeze=backbone.freeze, freeze_bn=backbone.freeze_bn, checkpointing=backbone.checkpointing,
                     amp=backbone.amp, train_from=backbone.train_from)
    probe.train()
    k = len(layout_of(cfg).starts)
    n = n_videos or (batch_size if dev.type == "cuda" else 1)
    crop = cfg.preprocess.crop
    x = torch.rand(n * k, 3, cfg.clips.clip_len, crop, crop, generator=torch.Generator().manual_seed(0))
    x = (x * 2 - 1).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    saved: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in probe.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # what autograd keeps for the backward, counted once per storage and without the weights
        # (counted apart): the step's activation memory
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    def step() -> None:
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            f = probe.features(x)
        if f.requires_grad:
            f.square().mean().backward()

    if warmup if warmup is not None else dev.type == "cuda":
        step()
    sync()
    t0 = time.perf_counter()
    step()
    sync()
    t_step = (time.perf_counter() - t0) * batch_size / n
    with torch.no_grad(), probe.inference():
        sync()
        t0 = time.perf_counter()
        probe.features(x)
        sync()
        t_inf = (time.perf_counter() - t0) / n
    params = sum(p.numel() * p.element_size() for p in probe.parameters())
    trained = sum(p.numel() * p.element_size() for p in probe.parameters() if p.requires_grad)
    del probe
    return {"step_s": t_step, "infer_s_per_video": t_inf, "videos_timed": n, "clips_per_video": k,
            "saved_bytes_per_video": sum(saved.values()) / n, "param_bytes": params, "trained_param_bytes": trained}


def step_memory(saved_per_video: float, batch_size: int, param_bytes: int, trained_bytes: int) -> float:
    """Bytes one training step needs: the activations autograd keeps for ``batch_size`` videos, the
    weights, and for the trained ones their gradient and Adam's two moments."""
    return saved_per_video * batch_size + param_bytes + 3 * trained_bytes


def memory_available(device: torch.device) -> int:
    """Bytes free for a step: the GPU's free memory, or the machine's available memory (Linux
    ``SC_AVPHYS_PAGES``), 0 when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def _check_memory(src: FrameSource, cfg: Config, t: dict) -> dict:
    """Refuse a step that cannot fit (naming the batch size that would), or turn activation
    checkpointing on when it is ``auto`` and the step fits only with it. Uses at most 80% of what
    is free. Returns the (possibly re-timed) estimate."""
    bs = cfg.train.batch_size
    dev = next(src.module.i3d.parameters()).device
    free = memory_available(dev) * 0.8
    need = step_memory(t["saved_bytes_per_video"], bs, t["param_bytes"], t["trained_param_bytes"])
    gb = 1 << 30
    if not free or need <= free:
        return {**t, "step_bytes": need}
    if not src.module.checkpointing and str(cfg.finetune.checkpointing).lower() == "auto":
        log.info(f"a fine-tuning step of {bs} videos needs about {need / gb:.1f} GB, {free / gb:.1f} GB are free: "
                 f"activation checkpointing is turned on (finetune.checkpointing = auto)")
        src.module.checkpointing = True
        return _check_memory(src, cfg, time_step(src.module, cfg, bs))
    fixed = t["param_bytes"] + 3 * t["trained_param_bytes"]
    fits = int((free - fixed) // max(t["saved_bytes_per_video"], 1))
    hint = ("" if src.module.checkpointing else ", or finetune.checkpointing=on")
    raise FinetuneError(f"a fine-tuning step of {bs} videos x {t['clips_per_video']} clips needs about "
                        f"{need / gb:.1f} GB and {free / gb:.1f} GB are free on {dev} (80% of what is available); "
                        + (f"--set train.batch_size={fits} fits{hint}" if fits >= 2 else
                           f"not even 2 videos fit{hint}: fewer clips (clips.n_clips) or a GPU")
                        + " (or pass --force to try anyway)")


def _check_time(src: FrameSource, cfg: Config, n_fit: int, n_sel: int, workers: int, max_minutes: float,
                force: bool) -> dict:
    bs = cfg.train.batch_size
    t = _check_memory(src, cfg, time_step(src.module, cfg, bs))
    t0 = time.perf_counter()
    src._check(src.items[(0, 0, False)])
    decode_s = time.perf_counter() - t0
    epoch = estimate_epoch_seconds(t["step_s"], t["infer_s_per_video"], decode_s, n_fit=n_fit, n_select=n_sel,
                                   batch_size=bs, workers=workers, curriculum=cfg.train.use_curriculum)
    dev = next(src.module.i3d.parameters()).device
    est = {**t, "decode_s_per_video": decode_s, "epoch_s": epoch, "device": str(dev),
           "total_h": epoch * cfg.train.epochs / 3600}
    msg = (f"fine-tuning estimate on {dev}: {t['step_s']:.2f} s per step of {bs} videos x "
           f"{t['clips_per_video']} clips, about {epoch / 60:.1f} min per epoch over {n_fit} training + {n_sel} "
           f"selection videos, {est['total_h']:.1f} h for {cfg.train.epochs} epochs, about "
           f"{est.get('step_bytes', 0) / (1 << 30):.1f} GB per step")
    log.info(msg)
    if epoch > max_minutes * 60 and not force:
        raise FinetuneError(f"{msg}: more than {max_minutes:g} min per epoch, so it is refused on this machine. "
                            f"Run it on a GPU, shrink it (--set train.epochs=..., fewer clips), or pass --force")
    return est


def load_frame_samples(cfg: Config, stage: str, root: str | Path | None, limit: int | None) -> tuple[list, Path]:
    from ..datasets import load_stage_samples

    samples, root_p = load_stage_samples(cfg, stage, root, limit)
    if not samples:
        raise FinetuneError(f"dataset {stage!r} under {root_p} has no samples; check --root and the annotations")
    return samples, root_p


def prepare(dataset: str, root: str | Path | None = None, *, run_dir: str | Path | None = None,
            spec: RunSpec | None = None, overrides: Iterable[str] = (), samples: Sequence[Any] | None = None,
            limit: int | None = None, device: str | torch.device | None = None, jobs: int | None = None,
            i3d: nn.Module | None = None) -> tuple[Path, Config, FrameData, FrameSource]:
    """Resolve the run's config and build its frame data and trainable source (no training);
    ``spec`` names the default run directory (``<runs>/<stage>/finetune-fold<k>``)."""
    from ..cache.extract import stage_name

    stage = stage_name(dataset)
    spec = spec or RunSpec(stage)
    run = Path(run_dir) if run_dir is not None else resolve.run_dir(stage, "finetune", fold=spec.fold, cv=spec.cv)
    cfg = config.resolve(dataset, overrides)
    if samples is None:
        samples, root_p = load_frame_samples(cfg, stage, root, limit)
    else:
        root_p = Path(root if root is not None else ".")
    dev = torch.device(resolve.device(device))
    data = FrameData(stage, cfg, samples, root_p)
    if jobs is None:
        jobs = min(8, os.cpu_count() or 1) if dev.type == "cuda" else 0
    src = FrameSource(data, build_backbone(cfg, dev, i3d), workers=jobs)
    return run, cfg, data, src


def finetune(dataset: str, root: str | Path | None = None, *, spec: RunSpec | None = None,
             run_dir: str | Path | None = None, overrides: Iterable[str] = (), resume: bool = True,
             progress: bool = True, force: bool = False, jobs: int | None = None, device: str | None = None,
             max_epoch_minutes: float = 30.0, stop_after: int | None = None, limit: int | None = None,
             samples: Sequence[Any] | None = None, i3d: nn.Module | None = None) -> Path:
    """Train UD-AQA with I3D unfrozen on ``dataset``'s frames for the run ``spec`` (its fold, cv and
    protocol; default fold 0, honest); returns the run dir.

    Same arguments as :func:`udaqa_pipeline.engine.run.train` where they overlap (``overrides`` also take
    ``finetune.*`` keys: lr_scale, freeze_backbone, freeze_bn, amp, checkpointing, max_shift, flip,
    random_crop). ``root``: the dataset folder (default the stage's ``dataset.root``). ``force``: run
    even when the estimated epoch exceeds ``max_epoch_minutes``. ``jobs``: decoding processes.
    ``limit``: the first N samples only. ``samples`` / ``i3d``: explicit samples and backbone (tests).
    Default run dir: ``<runs>/<stage>/finetune-fold<k>``.
    """
    from .loop import RunOptions, train_run
    from ..data.trainset import carve_validation, split_folds

    run, cfg, data, src = prepare(dataset, root, run_dir=run_dir, spec=spec, overrides=overrides,
                                  samples=samples, limit=limit, device=device, jobs=jobs, i3d=i3d)
    spec = replace(spec, stage=data.provenance.stage) if spec is not None else RunSpec(data.provenance.stage)
    labels = data.labels
    tr, te = split_folds(labels, spec.fold, spec.cv, cfg.train.seed)
    protocol = spec.protocol
    n_sel = len(te) if protocol == "paper" else max(1, int(round(cfg.train.val_fraction * len(tr))))
    if protocol == "honest":
        carve_validation(tr, cfg.train.val_fraction, cfg.train.seed)  # fails early if too few
    if not force:  # forced runs skip the timing step altogether
        _check_time(src, cfg, len(tr) - (n_sel if protocol == "honest" else 0), n_sel, src.workers,
                    max_epoch_minutes, force)
    dev = next(src.module.i3d.parameters()).device
    try:  # each group (and inner fold) trains its own backbone from the Kinetics weights: TrainingSet.fresh
        return train_run(cfg, spec, data.training_set(src), run, device=str(dev),
                         options=RunOptions(resume=resume, progress=progress, stop_after=stop_after))
    finally:
        src.close()
