"""One fit of the heads: its model, optimiser, data generator and curriculum (:class:`Fit`), built
by :func:`build_fit`, and one epoch of training (:func:`run_epoch`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..model.calibration import HeldOut
from ..config import Config, Train
from .curriculum import Curriculum, select
from .finetune import Backbone
from ..errors import UdaqaError
from ..inference.predict import heldout_draws, predict, uncertainties
from ..model import UDAQA, clip_l2
from ..model.losses import total_loss
from ..runs.checkpoint import state_to_cpu
from ..data.trainset import FeatureSource, TrainingSet, group_index, label_scaling
from . import distributed
from .recipe import learning_rate, model_config


class TrainingError(UdaqaError, RuntimeError):
    """Training cannot go on (a non-finite loss); the message names the run, epoch, batch and fix."""


@dataclass
class Fit:
    """What one training fit carries from epoch to epoch (see :func:`build_fit`): the heads, their
    optimiser, the data generator, the curriculum, and the training set and label scaling every
    step, prediction and checkpoint reads."""

    model: UDAQA
    opt: torch.optim.Optimizer
    gen: torch.Generator  # data order, view and judge draws
    cur: Curriculum
    unc: np.ndarray  # latest predicted uncertainty of every fit row (curriculum order)
    rows: np.ndarray  # the rows it trains on
    scaling: dict
    tcfg: Config
    device: str
    net: nn.Module  # the model, or its DDP wrapper
    data: TrainingSet
    rank: int = 0
    world: int = 1
    epochs: int = 0  # the fit's planned epochs (train.adapt_epochs counts back from its end)

    def targets(self, rows: np.ndarray, draws: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """One judge per sample (index floor(draw * T)) and the panel mean, both scaled, on the fit's device."""
        labels = self.data.labels
        gi = group_index(self.scaling, [labels.group[i] for i in rows])
        lo = np.asarray(self.scaling["lo"])[gi]
        hi = np.asarray(self.scaling["hi"])[gi]
        y = np.empty(len(rows))
        m = np.empty(len(rows))
        for k, i in enumerate(rows):
            j = labels.judges[i]
            y[k] = j[min(int(draws[k] * len(j)), len(j) - 1)]
            m[k] = j.mean()
        return (torch.from_numpy((y - lo) / (hi - lo)).float().to(self.device),
                torch.from_numpy((m - lo) / (hi - lo)).float().to(self.device))

    def predict(self, rows: np.ndarray, *, n_samples: int, seed: int) -> dict[str, np.ndarray]:
        """:func:`~udaqa_pipeline.inference.predict.predict` of ``rows`` with the current heads."""
        return predict(self.model, self.data.source, self.data.labels, rows, self.scaling, n_samples=n_samples,
                       seed=seed)

    def heldout(self, rows: np.ndarray, *, n_samples: int, seed: int, step: float) -> HeldOut:
        """:func:`~udaqa_pipeline.inference.predict.heldout_draws` of ``rows`` with the current heads."""
        return heldout_draws(self.model, self.data.source, self.data.labels, rows, self.scaling,
                             n_samples=n_samples, seed=seed, step=step)

    def states(self) -> tuple[dict, dict | None]:
        """CPU copies of the heads' and the trainable source's (or None) state dicts."""
        src = self.data.source.module
        return state_to_cpu(self.model.state_dict()), (state_to_cpu(src.state_dict()) if src is not None else None)


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


def feature_stats(src: FeatureSource, rows: np.ndarray, *, l2: bool = False, bs: int = 64
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and sd (M,) of the clip features of ``rows`` over every view and clip
    (read from the cache's array when the source has one, else through ``src.batch`` on view 0),
    after :func:`~udaqa_pipeline.model.clip_l2` when ``l2``.

    A trainable source (a fine-tuned I3D) is read once, without gradients (its eval-mode centre
    view): the statistics are those of the backbone the run starts from and stay fixed while it
    trains, plain buffers with no graph to it."""
    feats = getattr(src, "features", None)
    if feats is not None:
        x = torch.from_numpy(np.ascontiguousarray(feats[np.sort(rows)])).double()
    else:
        with torch.no_grad():
            x = torch.cat([src.batch(rows[s:s + bs], np.zeros(len(rows[s:s + bs]), int))[0].double()
                           for s in range(0, len(rows), bs)])
    if l2:
        x = clip_l2(x)
    x = x.reshape(-1, x.shape[-1])
    return x.mean(0).float(), x.std(0).float()


def build_fit(cfg: Config, data: TrainingSet, rows: np.ndarray, *, device: str, rank: int = 0,
              world: int = 1, epochs: int | None = None) -> Fit:
    """Model (label scaling and feature statistics from ``rows`` of ``data``), optimiser, data
    generator and curriculum of one fit of ``epochs`` epochs (default ``train.epochs``), seeded by
    ``train.seed`` (+ rank for dropout and latent noise)."""
    tcfg = cfg.train
    seed = tcfg.seed
    src = data.source
    if len(rows) < 2:
        raise TrainingError(f"{len(rows)} training row(s) left to fit on (after the validation split): at least 2 "
                            f"are needed (a batch of one cannot be batch-normalised); mark more samples as training "
                            f"rows, lower train.val_fraction or use train.select=last")
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
    adam = torch.optim.AdamW if tcfg.optimizer == "adamw" else torch.optim.Adam
    opt = adam(params, lr=learning_rate(0, tcfg), weight_decay=tcfg.weight_decay)
    cur = Curriculum(start=tcfg.curriculum_start, step=tcfg.curriculum_step,
                     patience=tcfg.curriculum_patience,
                     enabled=tcfg.use_curriculum and mcfg.use_uncertainty)
    net = distributed.wrap(model, src.module, device, world)
    return Fit(model, opt, torch.Generator().manual_seed(seed), cur, np.zeros(len(rows)), rows, scaling,
               tcfg, device, net, data, rank, world, tcfg.epochs if epochs is None else int(epochs))


def run_epoch(fit: Fit, epoch: int, where: str = "") -> dict:
    """Train one epoch on the curriculum's share of the fit rows; returns the mean loss terms plus
    ``fraction`` (the share used), ``n_train`` and ``next_fraction``. Raises :class:`TrainingError`
    on a non-finite loss (``where`` names the run in the message)."""
    model, tcfg, rank, world = fit.model, fit.tcfg, fit.rank, fit.world
    labels, src = fit.data.labels, fit.data.source
    lr = learning_rate(epoch, tcfg)
    for g in fit.opt.param_groups:
        g["lr"] = lr
    if isinstance(src.module, Backbone):  # its own in-backward Adam follows the heads' schedule at its share
        src.module.lr = lr * src.module.lr_scale
    if tcfg.adapt_epochs and hasattr(src, "hold"):  # a top of I3D trains in the fit's last adapt_epochs only
        src.hold = epoch < fit.epochs - tcfg.adapt_epochs
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
    for b, sl in enumerate(batch_slices(len(order), tcfg.batch_size, min_size=2 * world)):
        b_rows, b_views, b_draw = order[sl], views[sl], draws[sl]
        if world > 1:  # split the global batch over ranks (>= 2 samples each, see batch_slices)
            if len(b_rows) < 2 * world:
                continue  # only when the whole subset is smaller than 2 * world
            b_rows, b_views, b_draw = b_rows[rank::world], b_views[rank::world], b_draw[rank::world]
        y, ym = fit.targets(b_rows, b_draw)
        feats, vid = src.batch(b_rows, b_views)
        out = fit.net(feats.to(fit.device), vid.to(fit.device), y)
        terms = total_loss(out, y, alpha=tcfg.alpha, beta=tcfg.beta, mean_target=ym)
        if not torch.isfinite(terms["loss"]):
            ids = ", ".join(labels.ids[i] for i in b_rows[:8])
            raise TrainingError(f"{where}: the loss became {float(terms['loss'].detach())} at epoch {epoch + 1}, batch {b + 1} "
                                f"(samples {ids}); check those samples' labels and features "
                                f"(`udaqa-pipeline datasets inspect`, `cache verify`) or lower train.lr")
        fit.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if world > 1 and src.module is not None:
            distributed.allreduce_grads(src.module, world)  # DDP wraps the heads only
        fit.opt.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(b_rows)
        n_seen += len(b_rows)
    if world > 1:
        sums, n_seen = distributed.allreduce_sums(sums, n_seen)
        distributed.broadcast_buffers(model, src.module)  # e.g. a fine-tuned I3D's BatchNorm statistics too
    means = {k: v / max(n_seen, 1) for k, v in sums.items()}
    # re-sort by the latest predicted uncertainty; decide the next epoch's share
    if fit.cur.enabled:
        fit.unc = uncertainties(model, src, fit.rows)
    next_frac = fit.cur.end_epoch(means.get("loss", math.inf))
    return {**means, "fraction": frac, "next_fraction": next_frac, "n_train": int(len(subset))}


def batch_slices(n: int, bs: int, min_size: int = 2) -> list[slice]:
    """Consecutive batches of ``bs``; a trailing batch smaller than ``min_size`` joins the previous
    batch, because BatchNorm cannot normalise a single sample whose feature map is 1x1x1 (under
    DDP ``min_size`` = 2 x world size, so every rank gets at least two samples)."""
    cuts = list(range(0, n, bs)) + [n]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] < min_size:
        del cuts[-2]
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
