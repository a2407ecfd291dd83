"""Stage two: train UD-AQA from the stage-one cache (no decoding, no I3D forward).

One loop, read top to bottom (nanoGPT style). Policies, fixed here:

- Labels: each step draws ONE judge of each sample at random as y (a fresh draw every epoch), scaled
  to [0, 1] by the run's label scaling: ``train.label_range = [lo, hi]`` when the stage gives the
  judge scale (MTL-AQA, FineDiving: 0..10), else the min/max of the training judges; with
  ``train.label_scale = "per_group"`` (AQA-7) one range per group (action) from its training samples.
- Views: where the cache holds V > 1 augmented feature views, each sample draws one view per epoch
  and its video tensor gets the same flip/shift (``features.apply_view``). Evaluation uses view 0.
- Folds: ``fold K`` trains on every fold but K (and on train-only rows, fold -1) and tests on K.
  ``cv=N`` replaces the cache's folds by a seeded N-fold split of all samples. ``train.per_group``
  trains one model per group (JIGSAWS task) in ``<run>/<group>/``.
- Splits: ``split="official"`` uses the folds the annotation files give (the cache's ``fold``
  column); ``split="louo"`` makes one fold per subject (JIGSAWS surgeon: leave-one-user-out, fold k
  = the k-th surgeon by letter), so no surgeon is in train and test of one fold; ``split="dev"``
  scores a recipe on the official training sets only (:func:`dev_fold`), so recipes can be chosen
  without ever reading a test fold.
- Protocols: ``honest`` (default) never looks at the test fold; how it picks the model is
  ``train.select``:
  * ``"val"``: carve a seeded ``train.val_fraction`` validation split out of the training samples
    and keep the epoch with the best validation ``train.select_metric`` (Spearman, or CRPS of the
    sampled final scores);
  * ``"inner_cv"``: ``train.inner_folds``-fold cross-validation inside the training samples picks the
    epoch count (the best out-of-fold ``select_metric`` of every epoch, pooled over the inner folds,
    smoothed over ``train.inner_smooth`` epochs), then the model is refit on every training sample
    for that many epochs and the end of that fit is kept;
  * ``"last"``: train every training sample for ``train.epochs`` and keep the end.
  With ``"inner_cv"`` and ``"last"`` the kept model is the uniform average of the heads' weights
  at the end of the last ``train.average_last`` epochs (0: the last weights; a trainable source such
  as a fine-tuned I3D keeps its last weights).
  ``paper`` keeps the epoch with the best test Spearman, as the published code does. The protocol
  is stored with the run and tags every reported number.
- Selection scores use the predicted final score = mean over ``train.eval_samples`` seeded prior
  draws of the rule applied to T sampled judges.
- Optimisation: Adam (``train.optimizer = "adam"``, L2 weight decay as in the paper) or AdamW
  (decoupled decay); learning rate constant or ``train.lr_schedule = "cosine"`` (per epoch, from
  ``lr`` to 0 over ``train.epochs``: :func:`learning_rate`). A non-finite loss stops the run with a
  :class:`TrainingError` naming the epoch, the batch and its samples.
- Determinism: one seed; the data order, judge and view draws come from a ``torch.Generator`` and
  dropout / latent noise from torch's global RNG; both states are checkpointed every epoch, so a
  killed run resumes to the same numbers as an uninterrupted one (CPU).
- Checkpoint: ONE file ``<run>/checkpoint.pt`` rewritten atomically after every
  ``train.checkpoint_every`` epochs (default 1) and after the last; see :func:`save_checkpoint`.
  ``log.jsonl`` gets one JSON line per epoch, written after the checkpoint that covers it, so a
  killed run resumes from its last checkpoint and its log never runs ahead.
- DDP: under ``torchrun`` (WORLD_SIZE > 1) each global batch is split across ranks (gloo on CPU,
  nccl on CUDA); losses are all-reduced so every rank takes the same curriculum decisions; after
  each epoch rank 0's buffers (BatchNorm statistics) of the heads and of the trainable source are
  broadcast; a trainable source's gradients are averaged across ranks (DDP wraps the heads only);
  rank 0 writes the checkpoint and the log.
- What scoring needs without the cache: the checkpoint (and ``config.json``) carry
  ``feature_config``, the cache manifest's frames/clips/preprocess/cache sections the features
  were extracted with, and ``scoring_rules``, {rule: panel size} of the run's samples, most common
  rule first (see :func:`scoring_rules`).

Feature sources: the loop reads inputs through an object with ``n_views`` and
``batch(indices, views) -> (features (B, K, M), video (B, L, 3, h, w))`` and an optional trainable
``module`` (nn.Module or None). :class:`CacheSource` reads the cache; a fine-tuning wrapper can
compute features from frames with I3D and hand its I3D in as ``module`` (optimised and
checkpointed with the heads).
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import CHECKPOINT, CheckpointError, heads_state, load_checkpoint, save_checkpoint, state_to_cpu
from .config import DEFAULTS, ConfigError, apply_overrides, load_stage
from .curriculum import Curriculum, select
from .datasets.rules import apply_rule
from .errors import UdaqaError
from .metrics import spearman
from .model import UDAQA, ModelConfig
from .model.losses import total_loss
from .trainset import (FeatureSource, Labels, TrainingSet, carve_validation, group_index, label_scaling,
                       scoring_rules, split_folds)

LOG = "log.jsonl"
PROTOCOLS = ("honest", "paper")

#: [train] keys that may change when a run resumes (everything else must match the checkpoint).
RESUMABLE_KEYS = frozenset({"epochs", "checkpoint_every"})

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


class TrainingError(UdaqaError, RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the run, epoch, batch and fix."""


# --------------------------------------------------------------------------- data




# --------------------------------------------------------------------------- prediction


@torch.no_grad()
def predict(model: UDAQA, source: FeatureSource, labels: Labels, rows: np.ndarray, scaling: dict,
            *, n_samples: int = 8, n_judges: int | None = None, seed: int = 0,
            batch_size: int = 64, calibrated: bool = True) -> dict[str, np.ndarray]:
    """Sample S panels for ``rows`` (view 0) -> final (N,), finals (N, S) (the rule on each drawn
    panel), panels (N entries of (S, T); T may vary), u (N,). ``final``, the point prediction, is
    the mean over S of the rule on the panels' locations (the paper's sampler's draws, moved by a
    fitted calibration's centre shift ``mu``), so the calibration's judge noise widens the
    distribution without adding Monte-Carlo noise to the point prediction. Seeded, so
    selection numbers are reproducible. ``calibrated=False`` draws with the paper's sampler even
    when the model carries a fitted calibration."""
    model.eval()
    dev = model.scale_lo.device
    gen = torch.Generator().manual_seed(seed)
    gi_all = group_index(scaling, [labels.group[i] for i in rows])
    t_of = np.asarray([n_judges or labels.n_judges(i) for i in rows])
    final = np.zeros(len(rows))
    finals = np.zeros((len(rows), n_samples))
    u = np.zeros(len(rows))
    panels: list[np.ndarray] = [None] * len(rows)  # type: ignore[list-item]
    for t in sorted(set(t_of.tolist())):
        pos = np.flatnonzero(t_of == t)
        for s in range(0, len(pos), batch_size):
            p = pos[s:s + batch_size]
            feats, vid = source.batch(rows[p], np.zeros(len(p), int))
            loc, j, uu = model.sample_judges(feats.to(dev), vid.to(dev), int(t), n_samples,
                                             torch.from_numpy(gi_all[p]), generator=gen, calibrated=calibrated)
            loc, j = loc.cpu().numpy().astype(np.float64), j.cpu().numpy().astype(np.float64)
            u[p] = uu.cpu().numpy()
            for k, i in enumerate(p):
                r = rows[i]
                finals[i] = apply_rule(labels.rule[r], j[k], labels.difficulty_of(r))
                final[i] = float(apply_rule(labels.rule[r], loc[k], labels.difficulty_of(r)).mean())
                panels[i] = j[k]
    return {"final": final, "finals": finals, "panels": panels, "u": u}


# --------------------------------------------------------------------------- checkpoint




# --------------------------------------------------------------------------- run setup


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


def _dist() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --------------------------------------------------------------------------- training


def train(dataset: str | None = None, *, fold: int = 0, cache: Any = None, cache_root: Any = None,
          run_dir: str | Path | None = None, overrides: Iterable[str] = (), protocol: str = "honest",
          cv: int | None = None, split: str = "official", resume: bool = True, progress: bool = True,
          source: FeatureSource | None = None, stop_after: int | None = None,
          device: str | None = None, data: TrainingSet | None = None) -> Path:
    """Train UD-AQA on ``dataset``'s (a stage name or stage TOML) training set for test fold
    ``fold``; returns the run directory.

    The training set is ``data`` when given (e.g. fine-tuning's frames), else the stage's cache
    (``cache``: a directory or opened cache; default the stage's newest, see
    :func:`udaqa_pipeline.resolve.training_set`), read through ``source`` when given.
    ``overrides``: ``section.key=value`` strings (e.g. ``train.epochs=20``). ``protocol``: "honest"
    or "paper" (see module doc). ``split``: "official" (the annotation files' folds), "louo" (one
    fold per surgeon) or "dev". ``cv``: seeded K-fold cross-validation over the whole dataset
    instead. ``resume``: continue from ``<run>/checkpoint.pt`` when present (refused when it belongs
    to another cache or config). ``stop_after``: stop after that many epochs in this call, as a kill
    would (tests, time-boxed jobs). ``device``: see :func:`udaqa_pipeline.resolve.device`;
    bit-for-bit determinism is promised on CPU only. With ``train.per_group`` one run per group goes
    in ``<run>/<group>/``. Raises :class:`ConfigError` (bad settings, fold or split),
    :class:`CheckpointError` (a checkpoint that cannot be resumed), :class:`TrainingError`.
    """
    from . import resolve

    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, not {protocol!r}")
    cfg = resolve_config(dataset, overrides)
    data = data or resolve.training_set(dataset, cache=cache, cache_root=cache_root, source=source)
    run_dir = Path(run_dir) if run_dir is not None else resolve.run_dir(dataset, fold=fold, cv=cv, split=split)
    labels = data.labels
    train_rows, test_rows = split_folds(labels, fold, cv, int(cfg["train"]["seed"]), split)
    job = dict(protocol=protocol, fold=fold, cv=cv, split=split, resume=resume, progress=progress,
               stop_after=stop_after, device=device)
    if cfg["train"]["per_group"]:
        groups = sorted({labels.group[i] for i in train_rows})
        for g in groups:
            tr = np.asarray([i for i in train_rows if labels.group[i] == g], int)
            te = np.asarray([i for i in test_rows if labels.group[i] == g], int)
            _train_one(cfg, data, tr, te, run_dir / safe_name(g), group=g, **job)
        (run_dir / "groups.json").parent.mkdir(parents=True, exist_ok=True)
        (run_dir / "groups.json").write_text(json.dumps({"groups": groups}, indent=1) + "\n")
        return run_dir
    return _train_one(cfg, data, train_rows, test_rows, run_dir, **job)


def safe_name(name: str) -> str:
    """A group's name as a directory name (``<run>/<group>/``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "all"


def learning_rate(epoch: int, tcfg: dict) -> float:
    """The learning rate of epoch ``epoch`` (0-based): ``lr``, or with ``lr_schedule = "cosine"``
    lr * (1 + cos(pi * epoch / epochs)) / 2, from lr at the first epoch towards 0 at the end."""
    lr = float(tcfg["lr"])
    if tcfg.get("lr_schedule", "constant") == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, int(tcfg["epochs"]))))
    return lr


def average_weights(avg: dict | None, state: dict, n: int) -> dict:
    """Running uniform average of state dicts: ``avg`` holds the mean of ``n - 1`` states, the
    result the mean of ``n`` (integer buffers, e.g. BatchNorm's counter, take the newest value)."""
    if avg is None or n <= 1:
        return state_to_cpu(state)
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        out[k] = avg[k] + (v - avg[k]) / n if v.is_floating_point() else v.clone()
    return out


@dataclass
class Fit:
    """What one training fit carries from epoch to epoch (see :func:`build_fit`)."""

    model: UDAQA
    opt: torch.optim.Optimizer
    gen: torch.Generator  # data order, view and judge draws
    cur: Curriculum
    unc: np.ndarray  # latest predicted uncertainty of every fit row (curriculum order)
    rows: np.ndarray  # the rows it trains on
    scaling: dict
    tcfg: dict
    device: str
    net: nn.Module  # the model, or its DDP wrapper
    rank: int = 0
    world: int = 1


def feature_stats(src: FeatureSource, rows: np.ndarray, *, l2: bool = False, bs: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and sd (M,) of the clip features of ``rows`` over every view and clip
    (read from the cache's array when the source has one, else through ``src.batch`` on view 0),
    after :func:`~udaqa_pipeline.model.clip_l2` when ``l2``."""
    from .model import clip_l2

    feats = getattr(src, "features", None)
    if feats is not None:
        x = torch.from_numpy(np.ascontiguousarray(feats[np.sort(rows)])).double()
    else:
        x = torch.cat([src.batch(rows[s:s + bs], np.zeros(len(rows[s:s + bs]), int))[0].double()
                       for s in range(0, len(rows), bs)])
    if l2:
        x = clip_l2(x)
    x = x.reshape(-1, x.shape[-1])
    return x.mean(0).float(), x.std(0).float()


def build_fit(cfg: dict, data: TrainingSet, rows: np.ndarray, *, device: str, rank: int = 0,
              world: int = 1) -> Fit:
    """Model (label scaling and feature statistics from ``rows`` of ``data``), optimiser, data
    generator and curriculum of one fit, seeded by ``train.seed`` (+ rank for dropout and latent
    noise)."""
    tcfg = cfg["train"]
    seed = int(tcfg["seed"])
    src = data.source
    scaling = label_scaling(data.labels, rows, tcfg)
    mcfg = model_config(tcfg, len(scaling["groups"]), data.n_features)
    torch.manual_seed(seed + rank)  # dropout / latent noise; data order comes from `gen`
    model = UDAQA(mcfg)
    model.set_scaling(torch.tensor(scaling["lo"]), torch.tensor(scaling["hi"]))
    if mcfg.feature_norm:
        model.set_feature_norm(*feature_stats(src, rows, l2=mcfg.clip_l2))
    model.to(device)
    if src.module is not None:
        src.module.to(device)
    params = list(model.parameters()) + (list(src.module.parameters()) if src.module is not None else [])
    adam = torch.optim.AdamW if tcfg["optimizer"] == "adamw" else torch.optim.Adam
    opt = adam(params, lr=learning_rate(0, tcfg), weight_decay=float(tcfg["weight_decay"]))
    cur = Curriculum(start=float(tcfg["curriculum_start"]), step=float(tcfg["curriculum_step"]),
                     patience=int(tcfg["curriculum_patience"]),
                     enabled=bool(tcfg["use_curriculum"]) and mcfg.use_uncertainty)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[torch.device(device).index]
                                                  if device.startswith("cuda") else None)
        if src.module is not None:  # DDP broadcast the heads from rank 0; the source starts equal too
            with torch.no_grad():
                for t in list(src.module.parameters()) + _buffers(src.module):
                    dist.broadcast(t.data, 0)
    return Fit(model, opt, torch.Generator().manual_seed(seed), cur, np.zeros(len(rows)), rows, scaling,
               tcfg, device, net, rank, world)


def run_epoch(fit: Fit, data: TrainingSet, epoch: int, where: str = "") -> dict:
    """Train one epoch on the curriculum's share of the fit rows; returns the mean loss terms plus
    ``fraction`` (the share used), ``n_train`` and ``next_fraction``. Raises :class:`TrainingError`
    on a non-finite loss (``where`` names the run in the message)."""
    model, tcfg, rank, world = fit.model, fit.tcfg, fit.rank, fit.world
    labels, src = data.labels, data.source
    for g in fit.opt.param_groups:
        g["lr"] = learning_rate(epoch, tcfg)
    frac = 1.0 if epoch == 0 else fit.cur.fraction
    subset = fit.rows if frac >= 1.0 else fit.rows[select(fit.unc, frac)]
    order = subset[torch.randperm(len(subset), generator=fit.gen).numpy()]
    views = torch.randint(0, src.n_views, (len(order),), generator=fit.gen).numpy()
    draws = torch.rand(len(order), generator=fit.gen).numpy()  # which judge each sample uses
    model.train()
    if src.module is not None:
        src.module.train()
    sums: dict[str, float] = {}
    n_seen = 0
    for b, sl in enumerate(batch_slices(len(order), int(tcfg["batch_size"]), min_size=2 * world)):
        b_rows, b_views, b_draw = order[sl], views[sl], draws[sl]
        if world > 1:  # split the global batch over ranks (>= 2 samples each, see batch_slices)
            if len(b_rows) < 2 * world:
                continue  # only when the whole subset is smaller than 2 * world
            b_rows, b_views, b_draw = b_rows[rank::world], b_views[rank::world], b_draw[rank::world]
        y, ym = _targets(labels, b_rows, b_draw, fit.scaling)
        y, ym = y.to(fit.device), ym.to(fit.device)
        feats, vid = src.batch(b_rows, b_views)
        out = fit.net(feats.to(fit.device), vid.to(fit.device), y)
        terms = total_loss(out, y, alpha=float(tcfg["alpha"]), beta=float(tcfg["beta"]), mean_target=ym)
        if not torch.isfinite(terms["loss"]):
            ids = ", ".join(labels.ids[i] for i in b_rows[:8])
            raise TrainingError(f"{where}: the loss became {float(terms['loss'].detach())} at epoch {epoch + 1}, batch {b + 1} "
                                f"(samples {ids}); check those samples' labels and features "
                                f"(`udaqa-pipeline datasets inspect`, `cache verify`) or lower train.lr")
        fit.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if world > 1 and src.module is not None:
            _allreduce_grads(src.module, world)  # DDP wraps the heads only
        fit.opt.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(b_rows)
        n_seen += len(b_rows)
    if world > 1:
        sums, n_seen = _allreduce_sums(sums, n_seen)
        # BN running stats differ per rank: rank 0's are the model's (the trainable source's too,
        # e.g. a fine-tuned I3D's BatchNorm statistics)
        for buf in _buffers(model, src.module):
            dist.broadcast(buf, 0)
    means = {k: v / max(n_seen, 1) for k, v in sums.items()}
    # re-sort by the latest predicted uncertainty; decide the next epoch's share
    if fit.cur.enabled:
        fit.unc = _uncertainties(model, src, fit.rows)
    next_frac = fit.cur.end_epoch(means.get("loss", math.inf))
    return {**means, "fraction": frac, "next_fraction": next_frac, "n_train": int(len(subset))}


def selection_score(labels: Labels, rows: np.ndarray, pred: dict, metric: str) -> float:
    """Higher is better: Spearman of the predicted final scores, or minus the mean CRPS of the
    sampled final scores (score units) against the true ones; NaN when undefined."""
    if metric == "crps":
        from .metrics import crps_ensemble

        return -float(crps_ensemble(pred["finals"], labels.final[rows][:, None]).mean())
    return spearman(labels.final[rows], pred["final"])


def inner_folds(cfg: dict, data: TrainingSet, rows: np.ndarray, *, device: str,
                epochs: int, keep: Iterable[int] = (), also: np.ndarray | None = None
                ) -> tuple[list[float], dict[int, Any]]:
    """``train.inner_folds``-fold CV inside ``rows`` (training rows only): each inner fold trains
    ``epochs`` epochs on the others (and on ``also``, rows it never predicts: the validation split
    when calibrating, so an inner model trains on about as many rows as the kept one) and predicts
    its own rows after every epoch. Returns the curve (per epoch, the ``train.select_metric`` of the
    out-of-fold predictions of every row, pooled) and, for the 0-based epochs in ``keep``, the
    out-of-fold sampler draws of every row (:class:`~udaqa_pipeline.calibration.HeldOut`, for
    calibration)."""
    tcfg = cfg["train"]
    labels, src = data.labels, data.source
    k, seed, s = int(tcfg["inner_folds"]), int(tcfg["seed"]), int(tcfg["eval_samples"])
    if len(rows) < 2 * k:
        raise ConfigError(f"{len(rows)} training samples are too few for {k} inner folds (train.inner_folds)")
    keep = set(keep)
    perm = np.random.default_rng(seed + 2).permutation(rows)
    preds: dict[int, list[dict]] = {e: [] for e in range(epochs)}
    draws: dict[int, list] = {e: [] for e in keep}
    folds = []
    for i in range(k):
        val = np.sort(perm[i::k])
        train_rows = np.setdiff1d(rows, val)
        fit = build_fit(cfg, data, train_rows if also is None else np.union1d(train_rows, also), device=device)
        folds.append(val)
        for e in range(epochs):
            run_epoch(fit, data, e, where=f"inner fold {i + 1}/{k}")
            preds[e].append(predict(fit.model, src, labels, val, fit.scaling, n_samples=s, seed=seed))
            if e in keep:
                draws[e].append(heldout_draws(fit.model, src, labels, val, fit.scaling, n_samples=CALIBRATION_SAMPLES,
                                              seed=seed, step=float(tcfg["award_step"])))
    every = np.concatenate(folds)
    curve = [selection_score(labels, every, {key: np.concatenate([p[key] for p in preds[e]])
                                             for key in ("final", "finals")}, str(tcfg["select_metric"]))
             for e in range(epochs)]
    from .calibration import concat_heldout

    return curve, {e: concat_heldout(d) for e, d in draws.items()}


def inner_cv_epochs(cfg: dict, data: TrainingSet, rows: np.ndarray, *, device: str,
                    keep_draws: bool = False) -> tuple[dict, dict[int, Any]]:
    """Choose the epoch count by :func:`inner_folds` over ``train.epochs`` epochs: the curve is
    smoothed by a centred ``train.inner_smooth``-epoch mean and its best epoch is the count.
    Returns ({"epochs", "curve" (raw), "smoothed", "folds"}, out-of-fold draws of every epoch when
    ``keep_draws`` else {})."""
    tcfg = cfg["train"]
    epochs = int(tcfg["epochs"])
    curve, draws = inner_folds(cfg, data, rows, device=device, epochs=epochs,
                               keep=range(epochs) if keep_draws else ())
    c = np.asarray(curve, float)
    w = max(1, int(tcfg["inner_smooth"]))
    smooth = np.asarray([np.nanmean(c[max(0, e - w // 2): e + w // 2 + 1]) for e in range(epochs)])
    best = int(np.nanargmax(smooth)) + 1 if np.isfinite(smooth).any() else epochs
    return {"epochs": best, "curve": c.tolist(), "smoothed": smooth.tolist(), "folds": int(tcfg["inner_folds"])}, draws


@torch.no_grad()
def heldout_draws(model: UDAQA, source: FeatureSource, labels: Labels, rows: np.ndarray, scaling: dict, *,
                  n_samples: int, seed: int = 0, batch_size: int = 64, step: float = 0.0) -> Any:
    """The paper sampler's raw draws for ``rows`` (view 0) as a
    :class:`~udaqa_pipeline.calibration.HeldOut` with award ``step`` (``train.award_step``), for the
    rows whose panel size is the most common one (a calibration is one noise model for one panel
    size)."""
    from collections import Counter

    from .calibration import HeldOut

    model.eval()
    dev = model.scale_lo.device
    gen = torch.Generator().manual_seed(seed)
    t_of = np.asarray([labels.n_judges(i) for i in rows])
    t = Counter(t_of.tolist()).most_common(1)[0][0]
    rows = np.asarray(rows)[t_of == t]
    gi = group_index(scaling, [labels.group[i] for i in rows])
    loc = []
    for s in range(0, len(rows), batch_size):
        feats, vid = source.batch(rows[s:s + batch_size], np.zeros(len(rows[s:s + batch_size]), int))
        y, _ = model.sample_scaled(feats.to(dev), vid.to(dev), int(t) * n_samples, generator=gen)
        loc.append(y.view(len(y), n_samples, int(t)).cpu().double().numpy())
    return HeldOut(loc=np.concatenate(loc), real=[labels.judges[i] for i in rows], final=labels.final[rows].copy(),
                   rule=[labels.rule[i] for i in rows], difficulty=labels.difficulty[rows].copy(),
                   lo=np.asarray(scaling["lo"], float)[gi], hi=np.asarray(scaling["hi"], float)[gi], step=step)


def _device(device: str | None) -> str:
    from . import resolve

    device = resolve.device(device)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    return device


def _train_one(cfg: dict, data: TrainingSet, train_rows: np.ndarray,
               test_rows: np.ndarray, run_dir: Path, *, protocol: str, fold: int, cv: int | None,
               split: str, resume: bool, progress: bool, stop_after: int | None, group: str | None = None,
               device: str | None = None) -> Path:
    rank, world = _dist()
    device = _device(device)
    tcfg = cfg["train"]
    seed = int(tcfg["seed"])
    labels, src, prov = data.labels, data.source, data.provenance
    # -- what the model trains on and how it is kept (see the module doc)
    mode = "paper" if protocol == "paper" else str(tcfg["select"])
    if mode == "val":
        fit_rows, sel_rows = carve_validation(train_rows, float(tcfg["val_fraction"]), seed)
    elif mode == "paper":
        fit_rows, sel_rows = train_rows, test_rows
    else:
        fit_rows, sel_rows = train_rows, train_rows[:0]
    if mode in ("val", "paper") and len(sel_rows) == 0:
        raise ConfigError(f"fold {fold} has no samples to select the epoch on")
    ckpt_path = run_dir / CHECKPOINT
    run_meta = {"protocol": protocol, "fold": fold, "cv": cv, "split_name": split, "group": group, "stage": prov.stage,
                "select": mode, "dataset": cfg["dataset"].get("name", ""), "cache_hash": prov.cache_hash,
                "feature_config": prov.feature_config,
                "scoring_rules": scoring_rules(labels, np.concatenate([train_rows, test_rows]))}
    ck = load_checkpoint(ckpt_path) if resume and ckpt_path.exists() else None
    if ck is not None:
        _check_resumable(ck, cfg, run_meta, ckpt_path)
    epochs = int(tcfg["epochs"])
    inner = None
    calibrate = tcfg["calibrate"] in ("heldout", "oof")
    heldout = None  # held-out sampler draws to fit the calibration on (see _calibrate)
    if mode == "inner_cv":  # the epoch count, from the training rows alone (kept for a resume)
        if ck is not None:
            inner = ck["inner_cv"]
        else:
            inner, draws = inner_cv_epochs(cfg, data, fit_rows, device=device, keep_draws=calibrate)
            heldout = draws.get(int(inner["epochs"]) - 1)
        epochs = int(inner["epochs"])
    run_meta["epochs_planned"] = epochs
    fit = build_fit(cfg, data, fit_rows, device=device, rank=rank, world=world)
    n_avg = int(tcfg["average_last"]) if mode in ("inner_cv", "last") else 0
    best = {"epoch": -1, "score": -math.inf, "model": None, "source": None}
    avg: dict = {"n": 0, "state": None}
    start_epoch = 0
    if ck is not None:
        fit.model.load_state_dict(heads_state(ck["model"], fit.model))
        fit.opt.load_state_dict(ck["optimizer"])
        if src.module is not None and ck.get("source") is not None:
            src.module.load_state_dict(ck["source"])
        fit.gen.set_state(ck["rng"]["data"])
        torch.set_rng_state(ck["rng"]["torch"])
        fit.cur = Curriculum.from_state(ck["curriculum"])
        fit.unc = ck["uncertainty"].numpy()
        best = dict(ck["best"])
        avg = dict(ck.get("average") or avg)
        start_epoch = int(ck["epoch"]) + 1
    elif rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / LOG).write_text("")
    if rank == 0:
        _truncate_log(run_dir / LOG, start_epoch)
        (run_dir / "config.json").write_text(json.dumps({"config": cfg, **run_meta}, indent=1,
                                                        default=str) + "\n")
    sel_name = {"val": "val", "paper": "test"}.get(mode)
    every = max(1, int(tcfg["checkpoint_every"]))
    log_lines: list[str] = []
    done_here = 0
    bar = _bar(progress and rank == 0, start_epoch, epochs, run_dir)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        means = run_epoch(fit, data, epoch, where=str(run_dir))
        record = {"epoch": epoch + 1, "protocol": protocol, "selected_on": sel_name or mode,
                  "train_fraction": round(means.pop("fraction"), 6),
                  "next_fraction": round(means.pop("next_fraction"), 6), "n_train": means.pop("n_train"),
                  **{f"train_{k}": v for k, v in means.items()}}
        # -- select: the best epoch on val/test, or the (averaged) end of training
        if sel_name is not None:
            pred = predict(fit.model, src, labels, sel_rows, fit.scaling, n_samples=int(tcfg["eval_samples"]),
                           seed=seed)
            rho = selection_score(labels, sel_rows, pred, str(tcfg["select_metric"]) if mode == "val" else "spearman")
            record[f"{sel_name}_{tcfg['select_metric'] if mode == 'val' else 'spearman'}"] = rho
            score = -math.inf if math.isnan(rho) else rho
            if score > best["score"]:
                best = {"epoch": epoch, "score": score, "model": state_to_cpu(fit.model.state_dict()),
                        "source": state_to_cpu(src.module.state_dict()) if src.module is not None else None}
        else:
            rho = float("nan")
            state = fit.model.state_dict()
            if n_avg and epoch >= epochs - n_avg:
                avg = {"n": avg["n"] + 1, "state": average_weights(avg["state"], state, avg["n"] + 1)}
            best = {"epoch": epoch, "score": rho, "averaged": avg["n"],
                    "model": avg["state"] if avg["n"] else state_to_cpu(state),
                    "source": state_to_cpu(src.module.state_dict()) if src.module is not None else None}
        record.update(best_epoch=best["epoch"] + 1, seconds=round(time.perf_counter() - t0, 3))
        log_lines.append(json.dumps(record))
        done_here += 1
        stopping = epoch == epochs - 1 or (stop_after is not None and done_here >= stop_after)
        if rank == 0 and ((epoch + 1) % every == 0 or stopping):
            ck = {"model": state_to_cpu(fit.model.state_dict()), "optimizer": fit.opt.state_dict(),
                  "source": state_to_cpu(src.module.state_dict()) if src.module is not None else None,
                  "epoch": epoch, "best": best, "average": avg, "inner_cv": inner, "config": cfg,
                  "model_config": fit.model.cfg.to_dict(), "scaling": fit.scaling,
                  "curriculum": fit.cur.state_dict(),
                  "uncertainty": torch.from_numpy(fit.unc.astype(np.float32)).clone(),
                  "rng": {"data": fit.gen.get_state(), "torch": torch.get_rng_state()},
                  "split": {"fit": [labels.ids[i] for i in fit_rows],
                            "select": [labels.ids[i] for i in sel_rows],
                            "test": [labels.ids[i] for i in test_rows]},
                  **run_meta}
            save_checkpoint(ckpt_path, ck)  # checkpoint before the log lines: the log never runs ahead
            with (run_dir / LOG).open("a") as f:
                f.write("".join(ln + "\n" for ln in log_lines))
            log_lines = []
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{record.get('train_loss', float('nan')):.4f}", rho=f"{rho:.3f}",
                            frac=f"{record['train_fraction']:.1f}")
        if stopping:
            break
    if bar is not None:
        bar.close()
    if world > 1:
        _check_ranks_agree(fit.model, src.module)
        dist.barrier()
    # -- calibrate the sampler once the run is complete (a resumed complete run keeps its fit)
    if calibrate and rank == 0 and ckpt_path.exists():
        done = load_checkpoint(ckpt_path)
        if int(done["epoch"]) + 1 >= epochs and done.get("calibration") is None:
            _calibrate(cfg, data, done, heldout, mode, fit_rows, sel_rows, device)
            save_checkpoint(ckpt_path, done)
    return run_dir


def _calibrate(cfg: dict, data: TrainingSet, ck: dict, heldout: Any, mode: str,
               fit_rows: np.ndarray, sel_rows: np.ndarray, device: str) -> None:
    """Fit the calibrated sampler on held-out training rows and store it in the kept model: the
    validation rows (``select="val"``; with ``calibrate="oof"`` also the out-of-fold draws of inner
    folds over the fit rows, when they number at least 2 x ``inner_folds``, each inner model also
    trained on the validation rows), or out-of-fold predictions of an inner cross-validation at
    the kept epoch (``inner_cv``: from the epoch-count search; ``last`` and the paper protocol: an
    extra inner pass). Never on a test fold. Writes ``calib`` into ``ck["best"]["model"]`` and the
    fit's numbers into ``ck["calibration"]``."""
    from .calibration import fit_calibration

    tcfg = cfg["train"]
    labels, src = data.labels, data.source
    # the kept heads: the selected epoch's, or the last (no epoch was selected: load_run's fallback)
    state = ck["best"]["model"] if ck["best"]["model"] is not None else ck["model"]
    kept = int(ck["best"]["epoch"]) if ck["best"]["model"] is not None else int(ck["epoch"])
    from .calibration import concat_heldout

    model = UDAQA(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(heads_state(state, model))
    model.to(device)

    def draws(rows: np.ndarray) -> Any:
        return heldout_draws(model, src, labels, rows, ck["scaling"], n_samples=CALIBRATION_SAMPLES,
                             seed=int(tcfg["seed"]), step=float(tcfg["award_step"]))

    parts, source = [], []
    if mode == "val":
        parts.append(draws(sel_rows))
        source.append("validation split")
    # "oof" on a validation split adds out-of-fold draws when the fit rows are enough for the inner folds
    oof = tcfg["calibrate"] == "oof" and len(fit_rows) >= 2 * int(tcfg["inner_folds"])
    if tcfg["calibrate"] == "oof" and not oof and mode == "val":
        print(f"warning: train.calibrate = 'oof' needs at least 2 x train.inner_folds = {2 * int(tcfg['inner_folds'])} "
              f"fit rows for its inner folds; this run has {len(fit_rows)}, so the calibration is fitted on the "
              f"validation split alone (lower train.inner_folds to get the out-of-fold rows)", file=sys.stderr)
    if mode != "val" or oof:
        if heldout is None:
            # with a validation split the inner models train on it too: trained on two thirds of the
            # fit rows alone they erred more than the kept model, and intervals fitted on their
            # errors held 0.88 of the true final scores for 0.80 (calibration.py, "Fit")
            _, inner = inner_folds(cfg, data, fit_rows, device=device, epochs=kept + 1, keep=[kept],
                                   also=sel_rows if mode == "val" else None)
            heldout = inner[kept]
        parts.append(heldout)
        source.append(f"out-of-fold predictions of {int(tcfg['inner_folds'])} inner folds at epoch {kept + 1}"
                      + (" (each also trained on the validation split)" if mode == "val" else ""))
    other = np.concatenate([np.full(len(p.loc), p is heldout) for p in parts])  # the inner models' rows
    heldout, source = concat_heldout(parts), " + ".join(source)
    # the centre shift from the kept model's own training rows, its bias being its own (calibration.py);
    # the validation rows are training rows too, the paper protocol's sel_rows are the test fold
    own = (draws(np.concatenate([fit_rows, sel_rows if mode == "val" else sel_rows[:0]]).astype(int))
           if any(len(r) > 1 for r in heldout.real) else None)  # single labels: no shift to estimate
    fit = fit_calibration(heldout, seed=int(tcfg["seed"]), own=own, other=other)
    state["calib"] = torch.tensor([fit["tau"], fit["sigma"], fit["step"], fit["mu"]], dtype=torch.float32)
    ck["calibration"] = {**fit, "fitted_on": source}


def _buffers(*modules: nn.Module | None) -> list[torch.Tensor]:
    return [b for m in modules if m is not None for b in m.buffers()]


def _allreduce_grads(module: nn.Module, world: int) -> None:
    """Average the gradients of a trainable source across ranks (DDP only syncs the heads). A source
    that steps inside backward and clears its gradients (finetune's Backbone) leaves nothing here."""
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _check_ranks_agree(model: nn.Module, source: nn.Module | None = None) -> None:
    """Raise if DDP ranks ended with different weights or buffers, heads and trainable source alike
    (gradient sync or buffer broadcast broken)."""
    states = [model.state_dict()] + ([source.state_dict()] if source is not None else [])
    total = torch.stack([p.detach().double().sum() for sd in states for p in sd.values()
                         if p.is_floating_point()]).sum().reshape(1)
    got = [torch.zeros(1, dtype=torch.float64, device=total.device) for _ in range(dist.get_world_size())]
    dist.all_gather(got, total)
    if any(not torch.equal(g, got[0]) for g in got):
        raise RuntimeError(f"DDP ranks diverged: parameter checksums {[float(g) for g in got]}")


def batch_slices(n: int, bs: int, min_size: int = 2) -> list[slice]:
    """Consecutive batches of ``bs``; a trailing batch smaller than ``min_size`` joins the previous
    batch, because BatchNorm cannot normalise a single sample whose feature map is 1x1x1 (under
    DDP ``min_size`` = 2 x world size, so every rank gets at least two samples)."""
    cuts = list(range(0, n, bs)) + [n]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < min_size:
        del cuts[-2]
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]


def _targets(labels: Labels, rows: np.ndarray, draws: np.ndarray, scaling: dict
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """One judge per sample (index floor(draw * T)) and the panel mean, both scaled."""
    gi = group_index(scaling, [labels.group[i] for i in rows])
    lo = np.asarray(scaling["lo"])[gi]
    hi = np.asarray(scaling["hi"])[gi]
    y = np.empty(len(rows))
    m = np.empty(len(rows))
    for k, i in enumerate(rows):
        j = labels.judges[i]
        y[k] = j[min(int(draws[k] * len(j)), len(j) - 1)]
        m[k] = j.mean()
    return (torch.from_numpy((y - lo) / (hi - lo)).float(), torch.from_numpy((m - lo) / (hi - lo)).float())


@torch.no_grad()
def _uncertainties(model: UDAQA, src: FeatureSource, rows: np.ndarray, bs: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(rows), bs):
        r = rows[s:s + bs]
        feats, vid = src.batch(r, np.zeros(len(r), int))
        dev = model.scale_lo.device
        out.append(model.uncertainty(feats.to(dev), vid.to(dev)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def _allreduce_sums(sums: dict[str, float], n: int) -> tuple[dict[str, float], int]:
    keys = sorted(sums)
    dev = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([sums[k] for k in keys] + [float(n)], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return {k: float(t[i]) for i, k in enumerate(keys)}, int(t[-1])


def _check_resumable(ck: dict, cfg: dict, meta: dict, path: Path) -> None:
    fix = "train with --no-resume to start over, or pass another --run directory"
    if ck.get("cache_hash") != meta["cache_hash"]:
        raise CheckpointError(f"{path} was trained on cache {ck.get('cache_hash')}, the current cache is "
                              f"{meta['cache_hash']}; {fix}")
    for k in ("protocol", "fold", "cv", "split_name", "group", "select"):
        if ck.get(k) != meta[k]:
            raise CheckpointError(f"{path} has {k}={ck.get(k)!r}, this run asks for {meta[k]!r}; {fix}")
    a = copy.deepcopy(ck["config"])
    b = copy.deepcopy(cfg)
    for k in RESUMABLE_KEYS:
        a.get("train", {}).pop(k, None)
        b.get("train", {}).pop(k, None)
    if json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
        diff = _diff_keys(a, b)
        raise CheckpointError(f"{path} was trained with other settings ({', '.join(diff)}); {fix}")


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def _truncate_log(path: Path, start_epoch: int) -> None:
    """Drop log lines past the checkpoint (a run killed between the two writes)."""
    if not path.exists():
        path.write_text("")
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["epoch"] <= start_epoch]
    path.write_text("".join(ln + "\n" for ln in keep))


def _bar(enabled: bool, start: int, total: int, run_dir: Path):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=f"train {run_dir.name}", unit="epoch")


# --------------------------------------------------------------------------- loading




def main() -> None:
    """``torchrun --nproc_per_node N -m udaqa_pipeline.train DATASET [options]``: the CLI's train."""
    import sys

    from .cli import main as cli_main

    cli_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    main()
