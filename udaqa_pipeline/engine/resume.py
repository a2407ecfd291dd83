"""Resuming a run: whether a checkpoint may be continued by this run, and the fit restored from it.

A checkpoint is resumed only by the same cache, the same :class:`~udaqa_pipeline.runs.layout.RunSpec`
(read from the separate keys of a checkpoint written before the spec was stored), the same
selection protocol and the same config, except the keys in :data:`RESUMABLE_KEYS`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..config import Config
from .curriculum import Curriculum
from ..runs.checkpoint import CheckpointError, heads_state
from ..runs.layout import RunSpec
from .fit import Fit

#: [train] keys that may change when a run resumes (everything else must match the checkpoint).
RESUMABLE_KEYS = frozenset({"epochs", "checkpoint_every"})


def check_resumable(ck: dict, cfg: Config, spec: RunSpec, meta: dict, path: Path, test_ids: Iterable[str] = ()) -> None:
    """Raise :class:`CheckpointError` (naming what differs and the fix) unless ``ck`` at ``path``
    was trained on ``meta["cache_hash"]`` with ``spec``, ``meta["select"]`` and ``cfg``, on the labels
    and split of ``meta["labels_digest"]`` (``test_ids``: this run's test samples, to name the moved ones)."""
    fix = "train with --no-resume to start over, or pass another --run directory"
    if ck.get("cache_hash") != meta["cache_hash"]:
        raise CheckpointError(f"{path} was trained on cache {ck.get('cache_hash')}, the current cache is "
                              f"{meta['cache_hash']}; {fix}")
    old = RunSpec.from_checkpoint(ck)
    for f in fields(RunSpec):
        a, b = getattr(old, f.name), getattr(spec, f.name)
        if a != b:
            raise CheckpointError(f"{path} has {f.name}={a!r}, this run asks for {b!r}; {fix}")
    if ck.get("labels_digest", meta["labels_digest"]) != meta["labels_digest"]:  # older runs did not record it
        test = set((ck.get("split") or {}).get("test", []))
        moved = sorted(test ^ set(test_ids))
        what = f"; samples that moved into or out of test: {', '.join(moved[:8])}" if moved else ""
        raise CheckpointError(f"{path} was trained on other labels or another split than the cache holds now (a label "
                              f"fix, a changed score or a sample moved between training and test{what}); train with "
                              f"--no-resume to retrain on the current labels")
    if ck.get("select") != meta["select"]:
        raise CheckpointError(f"{path} has select={ck.get('select')!r}, this run asks for {meta['select']!r}; {fix}")
    # Both sides resolved the same way (a config saved before a default existed reads back with it);
    # [dataset] says how annotation files are read, which reaches training only through the cache.
    a, b = Config.from_dict(ck["config"]).to_dict(), cfg.to_dict()
    for d in (a, b):
        del d["dataset"]
        for k in RESUMABLE_KEYS:
            del d["train"][k]
    if a != b:
        diff = _diff_keys(a, b)
        raise CheckpointError(f"{path} was trained with other settings ({', '.join(diff)}); {fix}")


def restore(fit: Fit, ck: dict) -> int:
    """Load a checkpoint's heads, optimiser, trainable source, RNG states, curriculum and
    uncertainties into ``fit``; returns the epoch to continue from (0-based)."""
    src = fit.data.source
    fit.model.load_state_dict(heads_state(ck["model"], fit.model))
    fit.opt.load_state_dict(ck["optimizer"])
    if src.module is not None and ck.get("source") is not None:
        src.module.load_state_dict(ck["source"])
    fit.gen.set_state(ck["rng"]["data"])
    torch.set_rng_state(ck["rng"]["torch"])
    fit.cur = Curriculum.from_state(ck["curriculum"])
    fit.unc = ck["uncertainty"].numpy()
    return int(ck["epoch"]) + 1


def fit_state(fit: Fit) -> dict:
    """The checkpoint's part that :func:`restore` reads back (heads, optimiser, source, RNG states,
    curriculum, uncertainties)."""
    model, source = fit.states()
    return {"model": model, "optimizer": fit.opt.state_dict(), "source": source,
            "curriculum": fit.cur.state_dict(),
            "uncertainty": torch.from_numpy(fit.unc.astype(np.float32)).clone(),
            "rng": {"data": fit.gen.get_state(), "torch": torch.get_rng_state()}}


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out

