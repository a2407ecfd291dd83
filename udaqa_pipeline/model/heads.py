"""The UD-AQA building blocks (REFERENCE section 1), each a small ``nn.Module`` with no I/O.

Design choices the paper leaves open, fixed here and documented once:

- Weight attention: 4 linear layers ``M -> hidden -> hidden -> hidden -> M`` (``hidden`` = 256 by
  default, ReLU between, none after the last), softmax over the K clips per feature dimension.
  The narrow hidden width keeps WA at ~0.7 M parameters instead of 4 M for a 1024-wide stack; the
  paper only fixes the 1024-d output.
- Video encoder (latent branch input): four ``Conv3d`` layers 3->16->32->64->128, kernel 3,
  stride 2, padding 1 (halves T, H and W each time), no conv bias, BatchNorm3d + ReLU after each,
  then global average pooling -> X in R^128. uint8 pixels are mapped to [-1, 1] (x / 127.5 - 1),
  the same range the I3D input uses.
- Prior / posterior nets: 3 linear layers ``in -> 128 -> 64 -> 2D`` with ReLU + dropout (p=0.3)
  after the first two; the output is split into mu and log sigma^2. The posterior's input is
  X concatenated with the scaled judge score y.
- Uncertainty head: 2 linear layers ``D -> 32 -> 1`` with a ReLU between; the output is
  u = log-uncertainty (unbounded, so exp(-u) is always a positive weight).
- Regressor: 3 linear layers ``M + D -> 256 -> 64 -> 1`` with ReLU between (``hidden`` sets the two
  inner widths; one width gives 2 layers).
"""

from __future__ import annotations

import torch
from torch import nn


class WeightAttention(nn.Module):
    """Per-dimension soft attention over clips: f_v = sum_k softmax_k(W(f_k)) * f_k."""

    def __init__(self, dim: int = 1024, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (B, K, M) -> video feature (B, M)."""
        w = torch.softmax(self.net(feats), dim=1)  # softmax over the K clips, per dimension
        return (w * feats).sum(dim=1)


class MeanPool(nn.Module):
    """The ablation baseline's clip fusion: plain average over the K clips."""

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=1)


class VideoEncoder(nn.Module):
    """Conv3d encoder of the cached downsampled video (B, L, 3, h, w) uint8 -> X (B, 128)."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            # bias=False: BatchNorm's shift makes a conv bias redundant
            layers += [nn.Conv3d(c_in, c, kernel_size=3, stride=2, padding=1, bias=False),
                       nn.BatchNorm3d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.out_dim = c_in

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dtype == torch.uint8:
            x = video.float() / 127.5 - 1.0
        else:  # already float (e.g. a fine-tuning wrapper): taken as [-1, 1]
            x = video.float()
        x = x.permute(0, 2, 1, 3, 4)  # (B, L, 3, h, w) -> (B, 3, L, h, w) as Conv3d wants
        return self.net(x).mean(dim=(2, 3, 4))


class GaussianNet(nn.Module):
    """Prior P(z|X) or posterior Q(z|X, y): 3 linear layers -> (mu, log sigma^2), each (B, D)."""

    def __init__(self, in_dim: int, latent_dim: int = 6, hidden: tuple[int, int] = (128, 64),
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden[0]), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden[1], 2 * latent_dim),
        )
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(x).chunk(2, dim=-1)
        return mu, logvar


class UncertaintyHead(nn.Module):
    """z (..., D) -> u (...,) = log-uncertainty."""

    def __init__(self, latent_dim: int = 6, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(-1)


class Regressor(nn.Module):
    """concat(f_v, z) (..., M + D) -> score (...,) in scaled units."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] = (256, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(in_dim, h), nn.ReLU()]
            in_dim = h
        self.net = nn.Sequential(*layers, nn.Linear(in_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I) (drawn from ``generator`` when given; a CPU generator
    draws on the CPU and the noise is moved, so seeded sampling gives the same z on any device)."""
    if generator is not None and generator.device != mu.device:
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    else:
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps
