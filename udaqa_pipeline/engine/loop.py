"""Stage two's training loop: one run of one spec on one training set, read top to bottom.

:func:`train_run` splits a run by group when ``train.per_group`` is set; :func:`train_one` is the
loop: the protocol picks the fit and selection rows, the fit is built (or restored from the
checkpoint), and every epoch trains, lets the protocol observe it, logs and checkpoints; a complete
run then fits the calibrated sampler. Its parts: :mod:`.fit` (model, optimiser, one epoch),
:mod:`.selection` (protocols), :mod:`.resume`, :mod:`.runfiles` (checkpoint, log, progress),
:mod:`.distributed` (DDP) and :mod:`.calibrate`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import Config, ConfigError
from ..runs.layout import PROTOCOLS, RunSpec, safe_name
from ..data.trainset import TrainingSet, labels_digest, scoring_rules, shared_sources, split_folds
from . import distributed
from .calibrate import calibrate
from .fit import Fit, build_fit, run_epoch
from .resume import check_resumable, fit_state, restore
from .runfiles import Progress, RunFiles
from .selection import Selection, selection_for


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, not what it is: ``resume`` from its checkpoint when there is one
    (refused when it belongs to another cache, spec or config), show ``progress``, ``stop_after``
    that many epochs in this call as a kill would (tests, time-boxed jobs)."""

    resume: bool = True
    progress: bool = True
    stop_after: int | None = None


def train_run(cfg: Config, spec: RunSpec, data: TrainingSet, run_dir: Path, *, device: str,
              options: RunOptions = RunOptions()) -> Path:
    """Train the run ``spec`` of config ``cfg`` (resolved, see
    :func:`udaqa_pipeline.config.resolve`) on ``data`` into ``run_dir`` on
    ``device``; with ``train.per_group`` one run per group in ``<run_dir>/<group>/``, one after
    another, each with its own trainable source from the first weights (:meth:`TrainingSet.fresh`). Returns
    ``run_dir``. Raises :class:`ConfigError` (bad protocol, fold or split),
    :class:`~udaqa_pipeline.runs.checkpoint.CheckpointError` (a checkpoint that cannot be resumed),
    :class:`~udaqa_pipeline.engine.fit.TrainingError`."""
    if spec.protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, not {spec.protocol!r}")
    labels = data.labels
    train_rows, test_rows = split_folds(labels, spec.fold, spec.cv, cfg.train.seed, spec.split)
    shared = shared_sources(labels, train_rows, test_rows)
    if shared:
        pairs = ", ".join(f"{a} = {b}" for a, b in shared[:5]) + (f" (+{len(shared) - 5} more)" if len(shared) > 5 else "")
        raise ConfigError(f"fold {spec.fold}: {len(shared)} test sample(s) read the same video and frames as a training "
                          f"sample ({pairs}): their test results would be on trained-on video; remove the duplicate "
                          f"rows from the annotation file or give both rows the same split")
    if not cfg.train.per_group:
        return train_one(cfg, spec, data, (train_rows, test_rows), run_dir, device=device, options=options)
    groups = sorted({labels.group[i] for i in train_rows})
    for n, g in enumerate(groups):
        tr = np.asarray([i for i in train_rows if labels.group[i] == g], int)
        te = np.asarray([i for i in test_rows if labels.group[i] == g], int)
        group_data = data if n == 0 else data.fresh()
        train_one(cfg, spec.for_group(g), group_data, (tr, te), run_dir / safe_name(g), device=device, options=options)
    (run_dir / "groups.json").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "groups.json").write_text(json.dumps({"groups": groups}, indent=1) + "\n")
    return run_dir


def train_one(cfg: Config, spec: RunSpec, data: TrainingSet, rows: tuple[np.ndarray, np.ndarray], run_dir: Path, *,
              device: str, options: RunOptions) -> Path:
    """One model: ``rows`` = (training rows, test rows) of ``data`` (see :func:`train_run`)."""
    rank, world = distributed.init()
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    tcfg = cfg.train
    selection = selection_for(cfg, spec, *rows)
    files = RunFiles(run_dir, rank, tcfg.checkpoint_every)
    meta = run_meta(cfg, spec, data, selection, rows)
    ck = files.load(options.resume)
    if ck is not None:
        check_resumable(ck, cfg, spec, meta, files.checkpoint, [data.labels.ids[i] for i in rows[1]])
    calibrating = tcfg.calibrate in ("heldout", "oof")
    selection.prepare(data, ck, device=device, calibrate=calibrating)
    epochs = selection.epochs()
    meta["epochs_planned"] = epochs
    fit = build_fit(cfg, data, selection.fit_rows, device=device, rank=rank, world=world, epochs=epochs)
    start = 0
    if ck is not None:
        start = restore(fit, ck)
        selection.restore(ck)
    files.start(ck is not None, start, {"config": cfg.to_dict(), **meta})
    split = {"fit": selection.fit_rows, "select": selection.sel_rows, "test": rows[1]}
    split = {k: [data.labels.ids[i] for i in r] for k, r in split.items()}
    bar = Progress(options.progress and rank == 0, start, epochs, run_dir)
    for n, epoch in enumerate(range(start, epochs), 1):
        record = _epoch(fit, selection, spec, epoch, str(run_dir))
        last = epoch == epochs - 1 or (options.stop_after is not None and n >= options.stop_after)
        files.epoch_done(epoch, record, last, lambda: {
            **fit_state(fit), "epoch": epoch, **selection.state(), "config": cfg.to_dict(),
            "model_config": fit.model.cfg.to_dict(), "scaling": fit.scaling, "split": split, **meta})
        bar.update(record, selection.score)
        if last:
            break
    bar.close()
    distributed.finish(fit.model, data.source.module, world)
    if calibrating and rank == 0:  # once the run is complete; a resumed complete run keeps its fit
        done = files.complete(epochs)
        if done is not None and done.get("calibration") is None:
            calibrate(cfg, data, done, selection, device)
            files.save(done)
    return run_dir


def _epoch(fit: Fit, selection: Selection, spec: RunSpec, epoch: int, where: str) -> dict:
    """Train one epoch and let the protocol observe it -> the epoch's log record."""
    t0 = time.perf_counter()
    means = run_epoch(fit, epoch, where=where)
    record = {"epoch": epoch + 1, "protocol": spec.protocol, "selected_on": selection.selected_on,
              "train_fraction": round(means.pop("fraction"), 6),
              "next_fraction": round(means.pop("next_fraction"), 6), "n_train": means.pop("n_train"),
              **{f"train_{k}": v for k, v in means.items()}}
    record.update(selection.observe(epoch, fit))
    record.update(best_epoch=selection.result()["epoch"] + 1, seconds=round(time.perf_counter() - t0, 3))
    return record


def run_meta(cfg: Config, spec: RunSpec, data: TrainingSet, selection: Selection,
             rows: tuple[np.ndarray, np.ndarray]) -> dict:
    """What a run records beside its weights (checkpoint and ``config.json``): the spec (also as the
    separate keys older checkpoints carry), the protocol's name, the cache's hash, the feature
    settings and scoring rules scoring needs without the cache."""
    prov = data.provenance
    return {**spec.checkpoint_keys(), "stage": prov.stage, "select": selection.name,
            "dataset": cfg.dataset.name, "cache_hash": prov.cache_hash,
            "feature_config": prov.feature_config, "scoring_rules": scoring_rules(data.labels, np.concatenate(rows)),
            "labels_digest": labels_digest(data.labels, *rows),
            "spec": spec.to_dict()}
