"""Inference: sample judge panels from a trained model for given rows of a training set.

Everything here is a pure read of a model (eval mode, no gradient) and a feature source, seeded by
its own ``torch.Generator``: the selection passes of training, the calibration fit, evaluation and
cross-validation all predict through these functions, never through the training loop.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from ..model.calibration import HeldOut
from ..datasets.rules import apply_rule
from ..model import UDAQA
from ..data.trainset import FeatureSource, Labels, group_index


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


@torch.no_grad()
def heldout_draws(model: UDAQA, source: FeatureSource, labels: Labels, rows: np.ndarray, scaling: dict, *,
                  n_samples: int, seed: int = 0, batch_size: int = 64, step: float = 0.0) -> Any:
    """The paper sampler's raw draws for ``rows`` (view 0) as a
    :class:`~udaqa_pipeline.model.calibration.HeldOut` with award ``step`` (``train.award_step``), for the
    rows whose panel size is the most common one (a calibration is one noise model for one panel
    size)."""
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


@torch.no_grad()
def uncertainties(model: UDAQA, src: FeatureSource, rows: np.ndarray, bs: int = 64) -> np.ndarray:
    """The predicted uncertainty u (N,) of ``rows`` (view 0), float64."""
    model.eval()
    out = []
    for s in range(0, len(rows), bs):
        r = rows[s:s + bs]
        feats, vid = src.batch(r, np.zeros(len(r), int))
        dev = model.scale_lo.device
        out.append(model.uncertainty(feats.to(dev), vid.to(dev)).cpu().numpy())
    return np.concatenate(out).astype(np.float64)
