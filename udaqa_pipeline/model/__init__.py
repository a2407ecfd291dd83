"""The UD-AQA model: weight attention + CVAE latent branch + uncertainty head + regressor.

The model takes clip features (B, K, M) and the downsampled video (B, L, 3, h, w) uint8; where the
features come from (the stage-one cache, or an I3D that is being fine-tuned) is the caller's concern.

Labels inside the model are *scaled* judge scores: y_s = (y - lo) / (hi - lo) with one (lo, hi)
range per scaling group (the dataset's judge scale, or per action for AQA-7); the range travels with
the model as buffers so :meth:`UDAQA.predict_judges` returns judge scores in score units.

Ablation switches (``ModelConfig``): ``use_wa`` (else mean over clips), ``use_cvae`` (else no latent
branch: a deterministic I3D+MLP), ``use_uncertainty`` (exp(-u) re-weighting; needs the CVAE),
``latent_input`` ("video": the paper's own input through the conv encoder; "feature": the shared
video feature f_v), ``regressors`` (1: one head on concat(f_v, z); 2: a deterministic head on f_v
for the judge mean + a latent head on concat(f_v, z) for the sampled judge's offset from the mean).

Small-data switches (not in the paper; off by default, on in ``stages/jigsaws.toml``):
``clip_l2`` scales every clip feature to unit L2 norm (:func:`clip_l2`: keeps the direction of the
1024-d I3D vector, drops its overall magnitude, which follows lighting and zoom more than skill);
``feature_norm`` then standardises every feature dimension with the training rows' mean and sd
(buffers ``feat_mean`` / ``feat_std``, set by :meth:`UDAQA.set_feature_norm` and saved with the
weights, so scoring applies the same shift); ``feature_dropout`` drops clip-feature entries with that
probability while training; ``pool_std`` appends the standard deviation over the K clips to the
video feature (f_v becomes 2M-d: how much the action changes over time, which an average over clips
cannot carry); ``wa_hidden`` and ``regressor_hidden`` size the heads.
"""

from .losses import total_loss
from .udaqa import UDAQA, ModelConfig, clip_l2

__all__ = ["ModelConfig", "UDAQA", "clip_l2", "total_loss"]
