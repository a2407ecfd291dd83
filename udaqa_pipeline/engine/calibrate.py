"""The calibrated sampler's fit at the end of a complete run (``train.calibrate``), never on a
test fold (:mod:`udaqa_pipeline.model.calibration` holds the fit itself)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..model.calibration import concat_heldout, fit_calibration
from ..config import Config
from ..inference.predict import heldout_draws
from ..model import UDAQA, ModelConfig
from ..runs.checkpoint import heads_state
from ..data.trainset import TrainingSet
from .recipe import CALIBRATION_SAMPLES
from .selection import Selection, inner_folds

log = logging.getLogger(__name__)

#: Fewer held-out rows than this fit no calibration (the run keeps the paper's sampler, said);
#: fewer than :data:`FEW_CALIBRATION_ROWS` fit one with a warning that it had little to go on.
MIN_CALIBRATION_ROWS = 3
FEW_CALIBRATION_ROWS = 10


def calibrate(cfg: Config, data: TrainingSet, ck: dict, selection: Selection, device: str) -> None:
    """Fit the calibrated sampler on held-out training rows and store it in the kept model: the
    validation rows (``select="val"``; with ``calibrate="oof"`` also the out-of-fold draws of inner
    folds over the fit rows, when they number at least 2 x ``inner_folds``, each inner model also
    trained on the validation rows), or out-of-fold predictions of an inner cross-validation at
    the kept epoch (``inner_cv``: from the epoch-count search; ``last`` and the paper protocol: an
    extra inner pass). Writes ``calib`` into ``ck["best"]["model"]`` and the fit's numbers into
    ``ck["calibration"]``."""
    tcfg = cfg.train
    labels, src = data.labels, data.source
    mode, fit_rows, sel_rows = selection.name, selection.fit_rows, selection.sel_rows
    # the kept heads: the selected epoch's, or the last (no epoch was selected: load_run's fallback)
    state = ck["best"]["model"] if ck["best"]["model"] is not None else ck["model"]
    kept = int(ck["best"]["epoch"]) if ck["best"]["model"] is not None else int(ck["epoch"])
    model = UDAQA(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(heads_state(state, model))
    model.to(device)
    kept_source = ck["best"].get("source") if ck["best"]["model"] is not None else ck.get("source")
    if kept_source is not None and hasattr(src, "with_state"):
        src = src.with_state(kept_source)  # the trained top of the kept epoch, beside its heads

    def draws(rows: np.ndarray) -> Any:
        return heldout_draws(model, src, labels, rows, ck["scaling"], n_samples=CALIBRATION_SAMPLES,
                             seed=tcfg.seed, step=tcfg.award_step)

    parts, source = [], []
    if mode == "val":
        parts.append(draws(sel_rows))
        source.append("validation split")
    heldout = _out_of_fold(cfg, data, selection, kept, device)
    if heldout is not None:
        parts.append(heldout)
        source.append(f"out-of-fold predictions of {tcfg.inner_folds} inner folds at epoch {kept + 1}"
                      + (" (each also trained on the validation split)" if mode == "val" else ""))
    other = np.concatenate([np.full(len(p.loc), p is heldout) for p in parts])  # the inner models' rows
    heldout, source = concat_heldout(parts), " + ".join(source)
    n = 0 if heldout is None else len(heldout.loc)
    if n < MIN_CALIBRATION_ROWS:
        log.warning(f"warning: the judge-panel sampler has {n} held-out row(s) to be calibrated on (at least "
                    f"{MIN_CALIBRATION_ROWS}), so none is fitted and the run samples as the paper does; use "
                    f"train.calibrate=oof or train.select=inner_cv, or more training data")
        ck["calibration"] = None
        return
    if n < FEW_CALIBRATION_ROWS:
        log.warning(f"warning: the judge-panel sampler is calibrated on {n} held-out rows ({source}), too few "
                    f"for its interval widths to be trusted (at least {FEW_CALIBRATION_ROWS}); "
                    f"train.calibrate=oof adds out-of-fold rows")
    # the centre shift from the kept model's own training rows, its bias being its own (calibration.py);
    # the validation rows are training rows too, the paper protocol's sel_rows are the test fold
    own = (draws(np.concatenate([fit_rows, sel_rows if mode == "val" else sel_rows[:0]]).astype(int))
           if any(len(r) > 1 for r in heldout.real) else None)  # single labels: no shift to estimate
    fit = fit_calibration(heldout, seed=tcfg.seed, own=own, other=other)
    state["calib"] = torch.tensor([fit["tau"], fit["sigma"], fit["step"], fit["mu"]], dtype=torch.float32)
    ck["calibration"] = {**fit, "fitted_on": source}


def _out_of_fold(cfg: Config, data: TrainingSet, selection: Selection, kept: int, device: str) -> Any:
    """Out-of-fold draws at the kept epoch: the protocol's own (inner_cv), else an inner pass; None
    on a validation split unless ``calibrate="oof"`` has enough fit rows for its inner folds."""
    tcfg = cfg.train
    mode, fit_rows = selection.name, selection.fit_rows
    oof = tcfg.calibrate == "oof" and len(fit_rows) >= 2 * tcfg.inner_folds
    if tcfg.calibrate == "oof" and not oof and mode == "val":
        log.warning(f"warning: train.calibrate = 'oof' needs at least 2 x train.inner_folds = "
                    f"{2 * tcfg.inner_folds} fit rows for its inner folds; this run has {len(fit_rows)}, so "
                    f"the calibration is fitted on the validation split alone (lower train.inner_folds to get the "
                    f"out-of-fold rows)")
    if mode == "val" and not oof:
        return None
    if selection.heldout is not None:
        return selection.heldout
    # with a validation split the inner models train on it too: trained on two thirds of the
    # fit rows alone they erred more than the kept model, and intervals fitted on their
    # errors held 0.88 of the true final scores for 0.80 (calibration.py, "Fit")
    _, inner = inner_folds(cfg, data, fit_rows, device=device, epochs=kept + 1, keep=[kept],
                           also=selection.sel_rows if mode == "val" else None, grouped=selection.grouped)
    return inner[kept]
