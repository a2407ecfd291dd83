"""Stage two's settings: the ``[train]`` section resolved and checked, the paper's recipe as
overrides, and the model and learning rate they give.

Policies (what the keys mean) are described in :mod:`udaqa_pipeline.engine`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ..config import DEFAULTS, ConfigError, apply_overrides, load_stage
from ..model import ModelConfig

#: Defaults for [train] keys a stage file may leave out (model switches, eval sampling): the
#: ``[train]`` section of :data:`udaqa_pipeline.config.DEFAULTS`, where every default has its home.
TRAIN_DEFAULTS: dict[str, Any] = DEFAULTS["train"]
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
SELECTIONS = ("val", "inner_cv", "last")
#: Prior draws per held-out row when fitting the calibration (a coverage estimated from 8 panels of
#: 10 rows moved the fit by a factor of two).
CALIBRATION_SAMPLES = 50
SELECT_METRICS = ("spearman", "crps")


def resolve_config(dataset: str, overrides: Iterable[str] = ()) -> dict:
    """Stage config with [train] defaults filled in and ``section.key=value`` overrides applied."""
    cfg = load_stage(dataset)
    cfg.setdefault("train", {})
    for k, v in TRAIN_DEFAULTS.items():
        cfg["train"].setdefault(k, v)
    cfg = apply_overrides(cfg, overrides)
    t = cfg["train"]
    if t["regressors"] not in (1, 2):
        raise ConfigError("train.regressors must be 1 or 2")
    for key, allowed in (("select", SELECTIONS), ("select_metric", SELECT_METRICS),
                         ("optimizer", ("adam", "adamw")), ("lr_schedule", ("constant", "cosine")),
                         ("calibrate", ("heldout", "oof", "none"))):
        if t[key] not in allowed:
            raise ConfigError(f"train.{key} must be one of {allowed}, not {t[key]!r}")
    if t["inner_folds"] < 2:  # its type is checked where it is read (config.check_value)
        raise ConfigError(f"train.inner_folds must be a whole number of folds, at least 2, not {t['inner_folds']!r}")
    step = float(t["award_step"])
    if step < 0:
        raise ConfigError(f"train.award_step must be 0 (continuous draws) or a positive award step, not {step}")
    if step > 0 and t["label_range"] and t["label_scale"] == "global":
        lo, hi = (float(x) for x in t["label_range"])
        if any(abs(x / step - round(x / step)) > 1e-6 for x in (lo, hi)):
            raise ConfigError(f"train.award_step={step}: awards are multiples of the step, and the ends of "
                              f"train.label_range [{lo:g}, {hi:g}] are not, so they would not be awards; use the "
                              f"judge scale's step (diving: 0.5)")
    if step > 0 and (not t["label_range"] or t["label_scale"] != "global"):
        raise ConfigError(f"train.award_step={t['award_step']} rounds sampled judges to awards clipped to the judge "
                          f"scale, so it needs train.label_range = [lo, hi] with train.label_scale = 'global' "
                          f"(set them, or award_step = 0 for continuous draws)")
    return cfg


def model_config(tcfg: dict, n_groups: int, feat_dim: int = 1024) -> ModelConfig:
    return ModelConfig(feat_dim=feat_dim, latent_dim=int(tcfg["latent_dim"]),
                       wa_hidden=int(tcfg["wa_hidden"]), video_channels=tuple(tcfg["video_channels"]),
                       dropout=float(tcfg["dropout"]), use_wa=bool(tcfg["use_wa"]),
                       use_cvae=bool(tcfg["use_cvae"]), use_uncertainty=bool(tcfg["use_uncertainty"]),
                       latent_input=str(tcfg["latent_input"]), regressors=int(tcfg["regressors"]),
                       n_groups=n_groups, regressor_hidden=tuple(tcfg["regressor_hidden"]),
                       feature_norm=bool(tcfg["feature_norm"]), feature_dropout=float(tcfg["feature_dropout"]),
                       clip_l2=bool(tcfg["clip_l2"]), pool_std=bool(tcfg["pool_std"]))


def learning_rate(epoch: int, tcfg: dict) -> float:
    """The learning rate of epoch ``epoch`` (0-based): ``lr``, or with ``lr_schedule = "cosine"``
    lr * (1 + cos(pi * epoch / epochs)) / 2, from lr at the first epoch towards 0 at the end."""
    lr = float(tcfg["lr"])
    if tcfg.get("lr_schedule", "constant") == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, int(tcfg["epochs"]))))
    return lr
