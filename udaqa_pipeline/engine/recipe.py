"""Stage two's recipe: the paper's settings as overrides, and the model and learning rate a
``[train]`` section (:class:`~udaqa_pipeline.config.Train`) gives.

Policies (what the keys mean) are described in :mod:`udaqa_pipeline.engine`.
"""

from __future__ import annotations

import math

from ..config import Train
from ..model import ModelConfig

#: The paper's model and training switches (REFERENCE section 1), as ``--set`` overrides on top of a
#: stage: weight attention, the CVAE on the video, uncertainty re-weighting and curriculum, one
#: regressor (256, 64), no feature standardisation or clip pooling extras, constant Adam, the epoch
#: chosen on a validation split, the paper's sampler. The learning rate, epochs and batch size stay
#: the stage's (stages/jigsaws.toml keeps the paper's 1e-3 and 80 epochs).
PAPER_RECIPE: tuple[str, ...] = (
    "train.use_wa=true", "train.use_cvae=true", "train.use_uncertainty=true", "train.use_curriculum=true",
    "train.latent_input=video", "train.regressors=1", "train.regressor_hidden=[256, 64]", "train.wa_hidden=256",
    "train.clip_l2=false", "train.feature_norm=false", "train.pool_std=false", "train.feature_dropout=0.0",
    "train.optimizer=adam", "train.lr_schedule=constant", "train.select=val", "train.average_last=0",
    "train.calibrate=none",
)
#: Prior draws per held-out row when fitting the calibration (a coverage estimated from 8 panels of
#: 10 rows moved the fit by a factor of two).
CALIBRATION_SAMPLES = 50


def model_config(tcfg: Train, n_groups: int, feat_dim: int = 1024) -> ModelConfig:
    return ModelConfig(feat_dim=feat_dim, latent_dim=tcfg.latent_dim,
                       wa_hidden=tcfg.wa_hidden, video_channels=tcfg.video_channels,
                       dropout=tcfg.dropout, use_wa=tcfg.use_wa,
                       use_cvae=tcfg.use_cvae, use_uncertainty=tcfg.use_uncertainty,
                       latent_input=tcfg.latent_input, regressors=tcfg.regressors,
                       n_groups=n_groups, regressor_hidden=tcfg.regressor_hidden,
                       feature_norm=tcfg.feature_norm, feature_dropout=tcfg.feature_dropout,
                       clip_l2=tcfg.clip_l2, pool_std=tcfg.pool_std)


def learning_rate(epoch: int, tcfg: Train) -> float:
    """The learning rate of epoch ``epoch`` (0-based): ``lr``, or with ``lr_schedule = "cosine"``
    lr * (1 + cos(pi * epoch / epochs)) / 2, from lr at the first epoch towards 0 at the end."""
    lr = tcfg.lr
    if tcfg.lr_schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, tcfg.epochs)))
    return lr
