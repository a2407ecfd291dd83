"""The UD-AQA model (REFERENCE section 1): weight attention + CVAE latent branch + uncertainty head +
regressor, and its calibrated judge sampler. See the package docstring for the switches."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .heads import (GaussianNet, MeanPool, Regressor, UncertaintyHead, VideoEncoder,
                    WeightAttention, reparameterize)

__all__ = ["ModelConfig", "UDAQA", "clip_l2"]


@dataclass
class ModelConfig:
    """Architecture; saved in every checkpoint so a resumed or loaded run rebuilds the same model."""

    feat_dim: int = 1024
    latent_dim: int = 6
    wa_hidden: int = 256
    video_channels: tuple[int, ...] = (16, 32, 64, 128)
    dropout: float = 0.3
    use_wa: bool = True
    use_cvae: bool = True
    use_uncertainty: bool = True
    latent_input: str = "video"  # "video" | "feature"
    regressors: int = 1  # 1 | 2
    n_groups: int = 1  # label-scaling groups (AQA-7 per-action ranges)
    regressor_hidden: tuple[int, ...] = (256, 64)
    feature_norm: bool = False
    feature_dropout: float = 0.0
    clip_l2: bool = False
    pool_std: bool = False

    def __post_init__(self) -> None:
        self.video_channels = tuple(int(c) for c in self.video_channels)
        self.regressor_hidden = tuple(int(c) for c in self.regressor_hidden)
        if not 0.0 <= self.feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), not {self.feature_dropout!r}")
        if self.latent_input not in ("video", "feature"):
            raise ValueError(f"latent_input must be 'video' or 'feature', not {self.latent_input!r}")
        if self.regressors not in (1, 2):
            raise ValueError(f"regressors must be 1 or 2, not {self.regressors!r}")
        if self.use_uncertainty and not self.use_cvae:
            raise ValueError("use_uncertainty needs use_cvae: the uncertainty head reads the latent z")
        if self.regressors == 2 and not self.use_cvae:
            raise ValueError("regressors=2 needs use_cvae: the offset head reads the latent z")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["video_channels"] = list(self.video_channels)
        d["regressor_hidden"] = list(self.regressor_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def clip_l2(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Every clip feature (..., M) divided by its L2 norm (an all-zero vector stays zero)."""
    return features / features.norm(dim=-1, keepdim=True).clamp_min(eps)


class UDAQA(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        m, d = cfg.feat_dim, cfg.latent_dim
        fv = 2 * m if cfg.pool_std else m  # width of the video feature f_v
        if cfg.feature_norm:
            self.register_buffer("feat_mean", torch.zeros(m))
            self.register_buffer("feat_std", torch.ones(m))
        self.feature_drop = nn.Dropout(cfg.feature_dropout) if cfg.feature_dropout > 0 else nn.Identity()
        self.fusion = WeightAttention(m, cfg.wa_hidden) if cfg.use_wa else MeanPool()
        if cfg.use_cvae:
            if cfg.latent_input == "video":
                self.encoder: nn.Module | None = VideoEncoder(cfg.video_channels)
                x_dim = self.encoder.out_dim
            else:
                self.encoder = None
                x_dim = fv
            self.prior = GaussianNet(x_dim, d, dropout=cfg.dropout)
            self.posterior = GaussianNet(x_dim + 1, d, dropout=cfg.dropout)
            self.regressor = Regressor(fv + d, cfg.regressor_hidden)
        else:
            self.encoder = None
            self.regressor = Regressor(fv, cfg.regressor_hidden)
        self.unc = UncertaintyHead(d) if cfg.use_uncertainty else None
        self.mean_head = Regressor(fv, cfg.regressor_hidden) if cfg.regressors == 2 else None
        self.register_buffer("scale_lo", torch.zeros(cfg.n_groups))
        self.register_buffer("scale_hi", torch.ones(cfg.n_groups))
        # calibrated sampler [tau, sigma, award step, shift mu] (udaqa_pipeline.model.calibration); zeros = the paper's
        self.register_buffer("calib", torch.zeros(4))

    # -- pieces ---------------------------------------------------------------------------------
    def encode(self, features: torch.Tensor, video: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (f_v (B, M), X (B, x_dim) or None). The expensive part; sampling reuses it."""
        features = features.float()
        if self.cfg.clip_l2:
            features = clip_l2(features)
        if self.cfg.feature_norm:
            features = (features - self.feat_mean) / self.feat_std
        features = self.feature_drop(features)
        f_v = self.fusion(features)
        if self.cfg.pool_std:
            f_v = torch.cat([f_v, features.std(dim=1)], dim=-1)
        if not self.cfg.use_cvae:
            return f_v, None
        if self.encoder is None:
            return f_v, f_v
        if video is None:
            raise ValueError("this model's latent branch reads the video: pass video (B, L, 3, h, w)")
        return f_v, self.encoder(video)

    def _head(self, f_v: torch.Tensor, z: torch.Tensor | None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if z is None:
            out["y_hat"] = self.regressor(f_v)
            return out
        if z.dim() == 3:  # (B, N, D) draws: broadcast f_v over them
            f_b = f_v.unsqueeze(1).expand(-1, z.shape[1], -1)
        else:
            f_b = f_v
        r = self.regressor(torch.cat([f_b, z], dim=-1))
        if self.mean_head is not None:
            y_mean = self.mean_head(f_v)
            out["y_mean"] = y_mean
            # the offset head learns the sampled judge's offset; the mean head gets its own L1 term,
            # so the mean is detached here and each head learns one thing
            ym = y_mean.detach()
            out["y_hat"] = (ym.unsqueeze(1) if z.dim() == 3 else ym) + r
        else:
            out["y_hat"] = r
        return out

    # -- training forward -----------------------------------------------------------------------
    def forward(self, features: torch.Tensor, video: torch.Tensor | None,
                y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Training path when ``y`` (scaled judge, (B,)) is given: z from the posterior Q(z|X, y);
        otherwise one z drawn from the prior. Returns y_hat, and when present u (the posterior's /
        prior's log-uncertainty), u_prior, mu_q/logvar_q/mu_p/logvar_p, y_mean."""
        f_v, x = self.encode(features, video)
        if x is None:
            return self._head(f_v, None)
        mu_p, logvar_p = self.prior(x)
        z_p = reparameterize(mu_p, logvar_p)
        if y is None:
            out = self._head(f_v, z_p)
            if self.unc is not None:
                out["u"] = self.unc(z_p)
            return out
        mu_q, logvar_q = self.posterior(torch.cat([x, y.float().unsqueeze(-1)], dim=-1))
        z_q = reparameterize(mu_q, logvar_q)
        out = self._head(f_v, z_q)
        out.update(mu_q=mu_q, logvar_q=logvar_q, mu_p=mu_p, logvar_p=logvar_p)
        if self.unc is not None:
            out["u"] = self.unc(z_q)
            out["u_prior"] = self.unc(z_p)
        return out

    # -- test time ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_scaled(self, features: torch.Tensor, video: torch.Tensor | None, n: int,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n prior draws per sample -> (judges (B, n) scaled, u (B, n) log-uncertainty; zeros when
        the model has no uncertainty head). Call in eval mode (dropout off)."""
        f_v, x = self.encode(features, video)
        b = f_v.shape[0]
        if x is None:
            y = self._head(f_v, None)["y_hat"]
            return y.unsqueeze(1).expand(b, n).clone(), torch.zeros(b, n, device=f_v.device)
        mu_p, logvar_p = self.prior(x)
        mu = mu_p.unsqueeze(1).expand(b, n, -1)
        lv = logvar_p.unsqueeze(1).expand(b, n, -1)
        z = reparameterize(mu, lv, generator)
        y = self._head(f_v, z)["y_hat"]
        u = self.unc(z) if self.unc is not None else torch.zeros(b, n, device=f_v.device)
        return y, u

    @torch.no_grad()
    def uncertainty(self, features: torch.Tensor, video: torch.Tensor | None) -> torch.Tensor:
        """Deterministic predicted log-uncertainty u(mu_prior) (B,), used to order the curriculum
        (needs no label, so it is the quantity the model would report at test time)."""
        f_v, x = self.encode(features, video)
        if x is None or self.unc is None:
            return torch.zeros(f_v.shape[0], device=f_v.device)
        mu_p, _ = self.prior(x)
        return self.unc(mu_p)

    def set_feature_norm(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension shift and scale of the clip features (M,), from the training rows; a sd
        below 1e-6 (a dimension constant over the training rows) is taken as 1."""
        if not self.cfg.feature_norm:
            raise ValueError("this model has feature_norm off: it keeps no feature statistics")
        std = torch.as_tensor(std, dtype=torch.float32)
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feat_std.copy_(torch.where(std < 1e-6, torch.ones_like(std), std))

    def set_scaling(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        self.scale_lo.copy_(torch.as_tensor(lo, dtype=torch.float32))
        self.scale_hi.copy_(torch.as_tensor(hi, dtype=torch.float32))

    def to_score_units(self, y_scaled: torch.Tensor, group_index: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """Undo the label scaling; ``group_index`` (B,) picks each sample's range (default 0)."""
        b = y_scaled.shape[0]
        gi = (torch.zeros(b, dtype=torch.long) if group_index is None else group_index.long()
              ).to(self.scale_lo.device)
        shape = (b,) + (1,) * (y_scaled.dim() - 1)
        lo = self.scale_lo[gi].view(shape)
        hi = self.scale_hi[gi].view(shape)
        return y_scaled * (hi - lo) + lo

    def set_calibration(self, tau: float, sigma: float, step: float = 0.0, mu: float = 0.0) -> None:
        """Judge deviation scale ``tau``, shared panel offset sd ``sigma`` and centre shift ``mu``
        (scaled label units) of the calibrated sampler, and its award ``step`` (score units; 0 =
        continuous, unclipped), see :mod:`udaqa_pipeline.model.calibration`; all 0 = the paper's sampler."""
        self.calib.copy_(torch.tensor([float(tau), float(sigma), float(step), float(mu)]))

    @torch.no_grad()
    def sample_judges(self, features: torch.Tensor, video: torch.Tensor | None, n_judges: int,
                      n_samples: int = 1, group_index: torch.Tensor | None = None,
                      generator: torch.Generator | None = None, calibrated: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """S = ``n_samples`` panels of T = ``n_judges`` judges in score units, as (location, judges, u).

        features (B, K, M) float, video (B, L, 3, h, w) uint8. ``location`` (B, S, T) is the regressor's
        output for one independent prior draw of z per judge (the paper's "more samples = more
        judges", and its sampler), moved by the fitted centre shift mu when ``calibrated``;
        ``judges`` (B, S, T) adds, with a fitted calibration (``calib``,
        :meth:`set_calibration`) and ``calibrated``, each judge's Laplace deviation (scale tau) and
        each panel's shared offset (sd sigma), rounded to awards (a fitted step: multiples of it
        inside the label range), see :mod:`udaqa_pipeline.model.calibration` (equal to ``location``
        otherwise); u (B,) is the mean predicted log-uncertainty over the
        S*T draws. Apply the dataset's scoring rule (:func:`udaqa_pipeline.datasets.rules.
        apply_rule`) to the last axis to get final scores. Switches the model to eval mode.
        """
        self.eval()
        y, u = self.sample_scaled(features, video, n_judges * n_samples, generator)
        b = y.shape[0]
        tau, sigma, step, mu = (float(x) for x in self.calib)
        on = calibrated and not (tau == 0 and sigma == 0 and mu == 0)
        y = y.view(b, n_samples, n_judges) + (mu if on else 0.0)
        loc = self.to_score_units(y.reshape(b, -1), group_index).view(b, n_samples, n_judges)
        if not on:
            return loc, loc, u.mean(dim=1)
        uni = torch.rand(y.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12) - 0.5
        lap = (-torch.sign(uni) * torch.log1p(-2.0 * uni.abs())).to(y.device, y.dtype)
        gauss = torch.randn(y.shape[:2], generator=generator, dtype=torch.float64).to(y.device, y.dtype)
        y = y + tau * lap + sigma * gauss[..., None]
        judges = self.to_score_units(y.reshape(b, -1), group_index).view(b, n_samples, n_judges)
        if step > 0:  # awards: calibration.awards, here in torch
            gi = (torch.zeros(b, dtype=torch.long) if group_index is None else group_index.long()).to(y.device)
            lo, hi = self.scale_lo[gi].view(b, 1, 1), self.scale_hi[gi].view(b, 1, 1)
            judges = torch.maximum(torch.minimum(torch.round(judges / step) * step, hi), lo)
        return loc, judges, u.mean(dim=1)

    @torch.no_grad()
    def predict_judges(self, features: torch.Tensor, video: torch.Tensor | None, n_judges: int,
                       n_samples: int = 1, group_index: torch.Tensor | None = None,
                       generator: torch.Generator | None = None, calibrated: bool = True
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(judges (B, S, T), u (B,)) of :meth:`sample_judges`."""
        _, judges, u = self.sample_judges(features, video, n_judges, n_samples, group_index, generator, calibrated)
        return judges, u
