"""I3D (Inception-v1 inflated to 3D), exactly as DeepMind's Kinetics-400 RGB model.

Model code only: no file is opened here (weights live in :mod:`udaqa_pipeline.backbone.weights`).

Design choices, each matching DeepMind's Sonnet/TF graph (kinetics-i3d ``i3d.py``) so their
checkpoint reproduces their logits:

- Every convolution and max pool uses TensorFlow "SAME" padding, computed *per input shape* by
  :func:`same_padding` (TF pads asymmetrically, the extra pixel at the back, and the amount depends on
  ``n % stride``; a fixed PyTorch ``padding=`` cannot express that). Convs get the symmetric part as
  their own ``padding`` and an explicit ``F.pad`` only for the extra back element (in practice only
  the stride-2 Conv3d_1a); max pools get it exactly (-inf padding) from ``ceil_mode`` (see
  :class:`MaxPoolSame`).
- Convolutions have no bias; BatchNorm has an offset (beta) but no scale (gamma fixed to 1, so the
  state dict has no ``bn.weight``) and ``eps = 1e-3``; then ReLU.
- Head: average pool (2, 7, 7), stride 1, VALID over Mixed_5c, dropout (``dropout``, default 0.5 as in
  DeepMind's training; inactive in eval mode), a 1x1x1 conv with bias to ``num_classes`` logits, and the
  logits averaged over the remaining time positions. For inputs larger than 224 px the remaining
  spatial positions are averaged as well (DeepMind's graph only accepts 224 px there).
- ``forward_features`` returns that pooled map averaged over every remaining position: one 1024-d
  vector per clip (a 16-frame 224 px clip gives exactly one position, so no averaging happens).
  Because the logits layer is linear, ``forward_logits(x) == logits(forward_features(x))`` in eval mode.
- Inputs: ``(B, 3, T, H, W)`` float RGB in [-1, 1] (see :mod:`udaqa_pipeline.video.transforms`),
  ``T >= 9`` and ``H, W >= 193``; anything smaller leaves Mixed_5c without room for the (2, 7, 7) pool
  and raises ``ValueError``.
- State-dict keys follow piergiaj's ``pytorch_i3d`` layout (``Mixed_3b.b1b.conv3d.weight``,
  ``...bn.bias``, ``logits.conv3d.bias``) minus the always-one ``bn.weight``, so converting the common
  PyTorch checkpoints is a rename, not a reshape.

Fast inference path (used by ``classify``, feature extraction and the benchmark):
:meth:`I3D.prepare_for_inference` switches to eval mode, folds each BatchNorm into its convolution
(conv weight scaled by ``1/sqrt(var + eps)``, bias ``beta - mean/sqrt(var + eps)``), fuses the ReLU
into oneDNN's convolution on CPU, and stores the parameters and activations in the
``channels_last_3d`` layout, which oneDNN's CPU conv3d kernels run much faster than NCDHW (measured:
conv time ~91% of the forward at one thread, ~0.86 of a dense conv3d's GFLOP/s). The folded copies are derived buffers that are not saved; the state dict is
unchanged, and loading a new state dict (or calling ``train()``) drops them. Run it under
``torch.inference_mode()`` and batch several clips per call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
MIN_FRAMES = 9
MIN_SIZE = 193
FEATURE_DIM = 1024

# Inception block channels [b0, b1a, b1b, b2a, b2b, b3b] (DeepMind's table, REFERENCE section 2).
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

#: The blocks of the forward, in order: the names ``I3D.features`` starts after and stops at.
BLOCKS: tuple[str, ...] = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)  # fmt: skip


def block_index(name: str) -> int:
    """Position of block ``name`` in :data:`BLOCKS`; ``ValueError`` naming the blocks otherwise."""
    try:
        return BLOCKS.index(name)
    except ValueError:
        raise ValueError(f"I3D has no block {name!r}; blocks: {', '.join(BLOCKS)}") from None


def same_padding(n: int, k: int, s: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (front, back) for one dimension of size ``n``, kernel ``k``, stride ``s``.

    total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0); the front gets ``total // 2`` and the
    back the rest, so odd totals put the extra element at the back (unlike PyTorch's symmetric padding).
    The output size is then ``ceil(n / s)``.
    """
    if n < 1 or k < 1 or s < 1:
        raise ValueError(f"same_padding needs positive sizes, got n={n}, k={k}, s={s}")
    total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
    return total // 2, total - total // 2


def _split_same(
    shape: tuple[int, ...] | torch.Size, kernel: tuple[int, int, int], stride: tuple[int, int, int]
) -> tuple[list[int], list[int]]:
    """SAME padding of a (B, C, T, H, W) input as (symmetric part per dim, extra F.pad list or []).

    Symmetric padding is handed to the conv itself (no copy); only an asymmetric dimension (the
    stride-2 Conv3d_1a) needs an explicit ``F.pad`` of the one extra back element.
    """
    sym, extra = [], []
    for n, k, st in zip(shape[2:], kernel, stride):
        front, back = same_padding(int(n), k, st)
        sym.append(front)
        extra.append(back - front)
    if not any(extra):
        return sym, []
    # F.pad wants (W_front, W_back, H_front, H_back, T_front, T_back): last dimension first.
    return sym, [v for e in reversed(extra) for v in (0, e)]


def mixed5c_size(t: int, h: int, w: int) -> tuple[int, int, int]:
    """(T, H, W) of Mixed_5c for an input clip of ``t`` frames of ``h`` x ``w`` pixels.

    SAME padding makes every stride-2 stage ``ceil(n / 2)``: time is halved three times
    (Conv3d_1a, MaxPool3d_4a, MaxPool3d_5a), space five times (plus MaxPool3d_2a and _3a).
    """

    def halve(n: int, times: int) -> int:
        for _ in range(times):
            n = math.ceil(n / 2)
        return n

    return halve(t, 3), halve(h, 5), halve(w, 5)


def check_input_shape(shape: tuple[int, ...] | torch.Size) -> None:
    """Raise ``ValueError`` unless ``shape`` is (B, 3, T>=9, H>=193, W>=193)."""
    if len(shape) != 5 or shape[1] != 3:
        raise ValueError(
            f"I3D expects a float tensor (batch, 3, frames, height, width) of RGB in [-1, 1], got shape "
            f"{tuple(shape)}; build it with udaqa_pipeline.video.transforms.i3d_input"
        )
    t, h, w = (int(v) for v in shape[2:])
    t5, h5, w5 = mixed5c_size(t, h, w)
    if t5 < 2 or h5 < 7 or w5 < 7:
        raise ValueError(
            f"I3D needs clips of at least {MIN_FRAMES} frames and {MIN_SIZE}x{MIN_SIZE} pixels (its final "
            f"(2, 7, 7) average pool needs that much), got {t} frames of {h}x{w}; use longer clips or "
            "resize to short side 256 and crop 224"
        )


def _fused_conv_available() -> bool:
    # oneDNN conv with a fused ReLU post-op (the kernel torch.compile's CPU backend emits); optional.
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):
        return False


_FUSED_CONV = _fused_conv_available()


def bf16_supported(device: str | torch.device = "cpu") -> bool:
    """Whether bfloat16 convolutions run on ``device``: any CUDA device with bf16 support, or a CPU
    whose oneDNN has a bf16 path (AVX512-BW/VL/DQ, AVX-NE-CONVERT or AMX); older CPUs raise inside
    the convolution, so callers check this first and say so."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The CPU autocast dtype when CPU autocast is on, else None (works on torch 2.1 .. 2.13)."""
    try:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    except (TypeError, AttributeError):  # before torch 2.4 the CPU variants had their own names
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


class Unit3D(nn.Module):
    """Conv3d (SAME padding, no bias) -> BatchNorm (offset only, eps 1e-3) -> ReLU.

    With ``use_batch_norm=False`` (the logits layer) it is a plain conv with bias and no activation.
    After :meth:`fuse` (eval only) it runs as one conv with folded BatchNorm; on CPU with oneDNN the
    ReLU is fused into that conv too (``torch.ops.mkldnn._convolution_pointwise``), which saves a full
    pass over every activation tensor. Under CPU bf16 autocast a bf16 copy of the folded weight is used.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        use_batch_norm: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.use_batch_norm = use_batch_norm
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=not use_batch_norm)
        if use_batch_norm:
            # affine=False then a learnable offset only: Sonnet's BatchNorm(scale=False).
            self.bn = nn.BatchNorm3d(out_channels, eps=BN_EPS, momentum=0.001, affine=False)
            self.bn.bias = nn.Parameter(torch.zeros(out_channels))
        # folded (weight, bias) per (dtype, device): plain attributes, not buffers, so never saved
        self._fused: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] | None = None

    def fuse(self) -> None:
        """Fold BatchNorm (running statistics) into a conv weight/bias pair used in eval mode."""
        w = self.conv3d.weight.detach()
        if self.use_batch_norm:
            inv = torch.rsqrt(self.bn.running_var.detach() + BN_EPS)
            w = w * inv.view(-1, 1, 1, 1, 1)
            b = self.bn.bias.detach() - self.bn.running_mean.detach() * inv
        else:
            b = self.conv3d.bias.detach()
        self._fused = {(w.dtype, w.device): (w.contiguous(memory_format=torch.channels_last_3d), b.contiguous())}

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._fused = None  # derived from the old weights: stale after a load
        super()._load_from_state_dict(*args, **kwargs)

    def _fused_weights(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        assert self._fused is not None
        key = (dtype, device)
        if key not in self._fused:  # e.g. bf16 autocast, or the model moved after prepare_for_inference
            w, b = next(iter(self._fused.values()))
            self._fused[key] = (w.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype))
        return self._fused[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sym, extra = _split_same(x.shape, self.kernel, self.stride)
        if extra:
            x = F.pad(x, extra)
        if self._fused is None or self.training:
            x = F.conv3d(x, self.conv3d.weight, self.conv3d.bias, self.stride, sym)
            return F.relu(self.bn(x), inplace=True) if self.use_batch_norm else x
        dtype = _cpu_autocast_dtype() if x.device.type == "cpu" else None
        w, b = self._fused_weights(dtype or x.dtype, x.device)  # the oneDNN op below is not autocast-aware
        if _FUSED_CONV and x.device.type == "cpu" and self.use_batch_norm:
            return torch.ops.mkldnn._convolution_pointwise(
                x.to(w.dtype), w, b, sym, list(self.stride), [1, 1, 1], 1, "relu", [], ""
            )
        x = F.conv3d(x.to(w.dtype), w, b, self.stride, sym)
        return F.relu(x, inplace=True) if self.use_batch_norm else x


class MaxPoolSame(nn.Module):
    """3D max pool with TF SAME padding.

    Implemented as PyTorch's pool with ``padding = front`` and ``ceil_mode=True``: SAME pads at most
    one extra element at the back, and ceil mode adds exactly that last window, with -inf padding as in
    TF. (Proof sketch: SAME output is ceil(n/s) = (n + total - k)/s + 1 with total = 2*front or
    2*front + 1, which equals ceil((n + 2*front - k)/s) + 1 for s >= 2; for s = 1 total is even.)
    """

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        front = [same_padding(int(n), k, s)[0] for n, k, s in zip(x.shape[2:], self.kernel, self.stride)]
        return F.max_pool3d(x, self.kernel, self.stride, padding=front, ceil_mode=True)


class InceptionBlock(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1->3x3x3 | 1x1->3x3x3 | maxpool 3x3x3 s1 -> 1x1."""

    def __init__(self, in_channels: int, ch: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, ch[0])
        self.b1a = Unit3D(in_channels, ch[1])
        self.b1b = Unit3D(ch[1], ch[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, ch[3])
        self.b2b = Unit3D(ch[3], ch[4], (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, ch[5])
        self.out_channels = ch[0] + ch[2] + ch[4] + ch[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


class I3D(nn.Module):
    """DeepMind's Kinetics-400 I3D (RGB stream). See the module docstring for every design choice."""

    def __init__(self, num_classes: int = 400, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionBlock(192, INCEPTION_CHANNELS["Mixed_3b"])
        self.Mixed_3c = InceptionBlock(self.Mixed_3b.out_channels, INCEPTION_CHANNELS["Mixed_3c"])
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b = InceptionBlock(self.Mixed_3c.out_channels, INCEPTION_CHANNELS["Mixed_4b"])
        self.Mixed_4c = InceptionBlock(self.Mixed_4b.out_channels, INCEPTION_CHANNELS["Mixed_4c"])
        self.Mixed_4d = InceptionBlock(self.Mixed_4c.out_channels, INCEPTION_CHANNELS["Mixed_4d"])
        self.Mixed_4e = InceptionBlock(self.Mixed_4d.out_channels, INCEPTION_CHANNELS["Mixed_4e"])
        self.Mixed_4f = InceptionBlock(self.Mixed_4e.out_channels, INCEPTION_CHANNELS["Mixed_4f"])
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b = InceptionBlock(self.Mixed_4f.out_channels, INCEPTION_CHANNELS["Mixed_5b"])
        self.Mixed_5c = InceptionBlock(self.Mixed_5b.out_channels, INCEPTION_CHANNELS["Mixed_5c"])
        self.dropout = nn.Dropout(dropout)
        self.logits = Unit3D(FEATURE_DIM, num_classes, use_batch_norm=False)
        self._channels_last = False

    # -- fast path -------------------------------------------------------------------------------
    def prepare_for_inference(self, channels_last: bool = True) -> "I3D":
        """Eval mode + BatchNorm folded into the convs + ``channels_last_3d`` layout; returns ``self``.

        Numerically the same model (folding reorders float32 arithmetic: differences ~1e-5 in the
        logits). Call it after loading weights; ``load_state_dict`` and ``train()`` undo it.
        """
        self.eval()
        for m in self.modules():
            if isinstance(m, Unit3D):
                m.fuse()
        self._channels_last = channels_last
        return self

    def train(self, mode: bool = True) -> "I3D":
        if mode:
            for m in self.modules():
                if isinstance(m, Unit3D):
                    m._fused = None
            self._channels_last = False
        return super().train(mode)

    # -- forward ---------------------------------------------------------------------------------
    def blocks(self, x: torch.Tensor, start: str | None = None, stop: str = "Mixed_5c") -> torch.Tensor:
        """Activations of block ``stop`` (inclusive). ``x`` is a clip batch (B, 3, T, H, W) when
        ``start`` is None, else the activations of block ``start`` (what ``blocks(..., stop=start)``
        returned); ``start`` must come before ``stop`` in :data:`BLOCKS`."""
        first = 0 if start is None else block_index(start) + 1
        last = block_index(stop)
        if first > last:
            raise ValueError(f"start {start!r} is not before stop {stop!r}; blocks: {', '.join(BLOCKS)}")
        if start is None:
            check_input_shape(x.shape)
        if self._channels_last and not self.training:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        for name in BLOCKS[first : last + 1]:
            x = getattr(self, name)(x)
        return x

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c activations (B, 1024, T', H', W') for a clip batch (B, 3, T, H, W)."""
        return self.blocks(x)

    def pool(self, mixed_5c: torch.Tensor) -> torch.Tensor:
        """Pooled 1024-d feature per clip, (B, 1024) float32, of Mixed_5c activations; averaged over
        time (and space) when more than one position remains."""
        # AvgPool (2, 7, 7), stride 1, VALID: (B, 1024, T'-1, H'-6, W'-6).
        return F.avg_pool3d(mixed_5c, (2, 7, 7), stride=1).mean(dim=(2, 3, 4)).float()

    def features(self, x: torch.Tensor, start: str | None = None, stop: str | None = None) -> torch.Tensor:
        """The forward between two named blocks: from the clips (``start`` None) or the activations of
        block ``start``, to the activations of block ``stop`` or (``stop`` None) the pooled feature
        (B, 1024) float32. ``features(x) == features(features(x, stop=b), start=b)`` bit for bit."""
        if stop is not None:
            return self.blocks(x, start, stop)
        if start == BLOCKS[-1]:
            return self.pool(x)
        return self.pool(self.blocks(x, start))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1024-d feature per clip, (B, 1024) float32; averaged over time if T > 16."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) from pooled features (B, 1024) (eval-mode equivalent of the head)."""
        w = self.logits.conv3d.weight.flatten(1)
        return F.linear(features.to(w.dtype), w, self.logits.conv3d.bias)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics logits (B, num_classes), the per-position logits averaged over time (and space)."""
        y = self.logits(self.dropout(F.avg_pool3d(self.mixed_5c(x), (2, 7, 7), stride=1)))
        return y.mean(dim=(2, 3, 4)).float()

    forward = forward_logits
