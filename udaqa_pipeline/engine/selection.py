"""How a run picks the model it keeps: one small object per selection protocol, all with the
same methods, and the inner cross-validation two of them use.

- :class:`BestOnValidation` (``train.select = "val"``): a seeded ``train.val_fraction`` split
  carved out of the training rows; the epoch with the best validation ``train.select_metric``.
- :class:`BestOnTest` (protocol ``paper``): the epoch with the best test Spearman, as the
  published code does.
- :class:`KeepLast` (``"last"``): every training row for ``train.epochs``; the end is kept.
- :class:`InnerCV` (``"inner_cv"``): the epoch count from an inner cross-validation of the
  training rows (:func:`inner_cv_epochs`), then kept as :class:`KeepLast` keeps its end.

The last two keep the uniform average of the weights over the last ``train.average_last`` epochs
(0: the last weights): the heads' and, when the source trains (a top of I3D, a fine-tuned I3D), its
weights and BatchNorm statistics too, so the kept heads read the features of the kept backbone.

Each has ``fit_rows`` / ``sel_rows``, ``name`` (the checkpoint's ``select``), ``selected_on`` (the
log's), :meth:`~Selection.prepare` (before the fit is built), :meth:`~Selection.epochs`,
:meth:`~Selection.observe` (after every epoch: the log fields it adds), :meth:`~Selection.result`
(the kept model), :meth:`~Selection.state` / :meth:`~Selection.restore` (checkpoint).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable

import numpy as np

from ..model.calibration import concat_heldout
from ..config import Config, ConfigError
from ..metrics import crps_ensemble, spearman
from ..runs.layout import RunSpec

log = logging.getLogger(__name__)

#: Fewer selection rows than this cannot rank epochs (a Spearman of 2 rows is +-1, of 1 undefined):
#: the run says so, and an epoch is still kept only if its score is defined.
MIN_SELECTION_ROWS = 3
from ..data.trainset import Labels, TrainingSet, carve_validation
from .fit import Fit, average_weights, build_fit, run_epoch
from .recipe import CALIBRATION_SAMPLES

def selection_score(labels: Labels, rows: np.ndarray, pred: dict, metric: str) -> float:
    """Higher is better: Spearman of the predicted final scores, or minus the mean CRPS of the
    sampled final scores (score units) against the true ones; NaN when undefined."""
    if metric == "crps":
        return -float(crps_ensemble(pred["finals"], labels.final[rows][:, None]).mean())
    return spearman(labels.final[rows], pred["final"])


def inner_partition(rows: np.ndarray, k: int, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """``k`` inner validation folds of ``rows``, sorted: a seeded permutation dealt round-robin, or,
    with ``groups`` (one label per row of ``rows``), whole groups dealt largest first to the fold
    with the fewest rows so far (seeded order among equal sizes), so no group is on both sides of an
    inner fold. Raises ``ConfigError`` when there are fewer groups than folds."""
    rows = np.asarray(rows)
    rng = np.random.default_rng(seed + 2)
    if groups is None:
        perm = rng.permutation(rows)
        return [np.sort(perm[i::k]) for i in range(k)]
    groups = np.asarray(groups)
    names = rng.permutation(np.unique(groups))
    if len(names) < k:
        raise ConfigError(f"{len(names)} subjects are too few for {k} subject-grouped inner folds "
                          f"(train.inner_folds)")
    names = sorted(names, key=lambda g: -int((groups == g).sum()))  # stable: the seeded order breaks ties
    folds: list[list] = [[] for _ in range(k)]
    for g in names:
        folds[int(np.argmin([len(f) for f in folds]))].extend(rows[groups == g].tolist())
    return [np.sort(np.asarray(f, dtype=rows.dtype)) for f in folds]


def inner_folds(cfg: Config, data: TrainingSet, rows: np.ndarray, *, device: str,
                epochs: int, keep: Iterable[int] = (), also: np.ndarray | None = None, grouped: bool = False
                ) -> tuple[list[float], dict[int, Any]]:
    """``train.inner_folds``-fold CV inside ``rows`` (training rows only): each inner fold trains
    ``epochs`` epochs on the others (and on ``also``, rows it never predicts: the validation split
    when calibrating, so an inner model trains on about as many rows as the kept one) and predicts
    its own rows after every epoch. Returns the curve (per epoch, the ``train.select_metric`` of the
    out-of-fold predictions of every row, pooled) and, for the 0-based epochs in ``keep``, the
    out-of-fold sampler draws of every row (:class:`~udaqa_pipeline.model.calibration.HeldOut`, for
    calibration). ``grouped``: inner folds of whole subjects (:func:`inner_partition` over
    :func:`~udaqa_pipeline.data.trainset.subject_folds`), as a leave-one-surgeon-out test split
    holds out whole surgeons, so held-out errors are those of people the model never saw."""
    tcfg = cfg.train
    labels = data.labels
    k, seed, s = tcfg.inner_folds, tcfg.seed, tcfg.eval_samples
    if len(rows) < 2 * k:
        raise ConfigError(f"{len(rows)} training samples are too few for {k} inner folds (train.inner_folds)")
    keep = set(keep)
    from ..data.trainset import subject_folds

    groups = subject_folds(labels)[0][rows] if grouped else None
    preds: dict[int, list[dict]] = {e: [] for e in range(epochs)}
    draws: dict[int, list] = {e: [] for e in keep}
    folds = []
    for i, val in enumerate(inner_partition(rows, k, seed, groups)):
        train_rows = np.setdiff1d(rows, val)
        fit = build_fit(cfg, data.fresh(), train_rows if also is None else np.union1d(train_rows, also),
                        device=device, epochs=epochs)
        folds.append(val)
        for e in range(epochs):
            run_epoch(fit, e, where=f"inner fold {i + 1}/{k}")
            preds[e].append(fit.predict(val, n_samples=s, seed=seed))
            if e in keep:
                draws[e].append(fit.heldout(val, n_samples=CALIBRATION_SAMPLES, seed=seed,
                                            step=tcfg.award_step))
    every = np.concatenate(folds)
    curve = [selection_score(labels, every, {key: np.concatenate([p[key] for p in preds[e]])
                                             for key in ("final", "finals")}, tcfg.select_metric)
             for e in range(epochs)]
    return curve, {e: concat_heldout(d) for e, d in draws.items()}


def inner_cv_epochs(cfg: Config, data: TrainingSet, rows: np.ndarray, *, device: str,
                    keep_draws: bool = False, grouped: bool = False) -> tuple[dict, dict[int, Any]]:
    """Choose the epoch count by :func:`inner_folds` over ``train.epochs`` epochs: the curve is
    smoothed by a centred ``train.inner_smooth``-epoch mean and its best epoch is the count.
    Returns ({"epochs", "curve" (raw), "smoothed", "folds"}, out-of-fold draws of every epoch when
    ``keep_draws`` else {})."""
    tcfg = cfg.train
    epochs = tcfg.epochs
    curve, draws = inner_folds(cfg, data, rows, device=device, epochs=epochs,
                               keep=range(epochs) if keep_draws else (), grouped=grouped)
    c = np.asarray(curve, float)
    w = max(1, tcfg.inner_smooth)
    smooth = np.asarray([np.nanmean(c[max(0, e - w // 2): e + w // 2 + 1]) for e in range(epochs)])
    best = int(np.nanargmax(smooth)) + 1 if np.isfinite(smooth).any() else epochs
    return {"epochs": best, "curve": c.tolist(), "smoothed": smooth.tolist(), "folds": tcfg.inner_folds}, draws


class Selection:
    """The protocol's state across epochs (module doc); subclasses say how an epoch is scored."""

    name = ""
    #: inner folds (epoch count, calibration) of whole subjects: set under ``split="louo"``
    grouped = False
    selected_on = ""

    def __init__(self, cfg: Config, fit_rows: np.ndarray, sel_rows: np.ndarray) -> None:
        self.cfg, self.tcfg = cfg, cfg.train
        self.fit_rows, self.sel_rows = fit_rows, sel_rows
        self.best: dict = {"epoch": -1, "score": -math.inf, "model": None, "source": None}
        self.avg: dict = {"n": 0, "state": None}
        self.inner: dict | None = None
        self.heldout: Any = None  # out-of-fold draws at the kept epoch, when the protocol made them
        self.score = float("nan")  # the latest epoch's selection score

    def prepare(self, data: TrainingSet, ck: dict | None, *, device: str, calibrate: bool) -> None:
        """Work done before the fit is built (the inner cross-validation); nothing by default."""

    def epochs(self) -> int:
        return self.tcfg.epochs

    def observe(self, epoch: int, fit: Fit) -> dict:
        raise NotImplementedError

    def result(self) -> dict:
        """The kept model: {"epoch", "score", "model", "source"} (+ "averaged")."""
        return self.best

    def state(self) -> dict:
        return {"best": self.best, "average": self.avg, "inner_cv": self.inner}

    def restore(self, ck: dict) -> None:
        self.best = dict(ck["best"])
        self.avg = dict(ck.get("average") or self.avg)


class _BestEpoch(Selection):
    metric = "spearman"

    def observe(self, epoch: int, fit: Fit) -> dict:
        seed = self.tcfg.seed
        if epoch == 0 and len(self.sel_rows) < MIN_SELECTION_ROWS:
            log.warning(f"warning: the epoch is selected on {len(self.sel_rows)} {self.selected_on} row(s), too few to "
                        f"rank epochs (at least {MIN_SELECTION_ROWS}); raise train.val_fraction, or train.select=last")
        pred = fit.predict(self.sel_rows, n_samples=self.tcfg.eval_samples, seed=seed)
        rho = selection_score(fit.data.labels, self.sel_rows, pred, self.metric)
        self.score = rho
        score = -math.inf if math.isnan(rho) else rho
        if score > self.best["score"]:
            model, source = fit.states()
            self.best = {"epoch": epoch, "score": score, "model": model, "source": source}
        if epoch == self.epochs() - 1 and self.best["model"] is None:
            log.warning(f"warning: no epoch had a defined {self.selected_on} {self.metric} (constant labels or "
                        f"predictions on {len(self.sel_rows)} row(s)): the last epoch is kept")
        return {f"{self.selected_on}_{self.metric}": rho}


class BestOnValidation(_BestEpoch):
    name = selected_on = "val"

    def __init__(self, cfg: Config, train_rows: np.ndarray, test_rows: np.ndarray) -> None:
        t = cfg.train
        super().__init__(cfg, *carve_validation(train_rows, t.val_fraction, t.seed))
        self.metric = t.select_metric


class BestOnTest(_BestEpoch):
    name, selected_on = "paper", "test"

    def __init__(self, cfg: Config, train_rows: np.ndarray, test_rows: np.ndarray) -> None:
        super().__init__(cfg, train_rows, test_rows)


class KeepLast(Selection):
    name = selected_on = "last"

    def __init__(self, cfg: Config, train_rows: np.ndarray, test_rows: np.ndarray) -> None:
        super().__init__(cfg, train_rows, train_rows[:0])
        self.n_avg = self.tcfg.average_last

    def observe(self, epoch: int, fit: Fit) -> dict:
        self.score = float("nan")
        model, source = fit.states()
        if self.n_avg and epoch >= self.epochs() - self.n_avg:
            n = self.avg["n"] + 1
            self.avg = {"n": n, "state": average_weights(self.avg["state"], model, n),
                        "source": None if source is None else average_weights(self.avg.get("source"), source, n)}
        averaged = self.avg["n"] > 0
        self.best = {"epoch": epoch, "score": self.score, "averaged": self.avg["n"],
                     "model": self.avg["state"] if averaged else model,
                     "source": self.avg.get("source") if averaged and source is not None else source}
        return {}


class InnerCV(KeepLast):
    name = selected_on = "inner_cv"

    def prepare(self, data: TrainingSet, ck: dict | None, *, device: str, calibrate: bool) -> None:
        """The epoch count, from the training rows alone (a resumed run keeps its checkpoint's)."""
        if ck is not None:
            self.inner = ck["inner_cv"]
        else:
            self.inner, draws = inner_cv_epochs(self.cfg, data, self.fit_rows, device=device, keep_draws=calibrate,
                                                grouped=self.grouped)
            self.heldout = draws.get(int(self.inner["epochs"]) - 1)

    def epochs(self) -> int:
        return int(self.inner["epochs"])

    def restore(self, ck: dict) -> None:
        super().restore(ck)
        self.inner = ck["inner_cv"]


SELECTION_CLASSES = {"val": BestOnValidation, "paper": BestOnTest, "last": KeepLast, "inner_cv": InnerCV}


def selection_for(cfg: Config, spec: RunSpec, train_rows: np.ndarray, test_rows: np.ndarray) -> Selection:
    """The protocol object of ``spec.protocol`` ("paper") or ``train.select``. Raises
    :class:`ConfigError` when the protocol selects on rows the fold does not have."""
    mode = "paper" if spec.protocol == "paper" else cfg.train.select
    sel = SELECTION_CLASSES[mode](cfg, train_rows, test_rows)
    sel.grouped = spec.split == "louo"  # inner folds hold out whole surgeons, as the test split does
    if isinstance(sel, _BestEpoch) and len(sel.sel_rows) == 0:
        raise ConfigError(f"fold {spec.fold} has no samples to select the epoch on")
    return sel
