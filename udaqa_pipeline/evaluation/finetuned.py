"""Evaluation of a run whose backbone was fine-tuned: the test videos' features come from their frames
through the run's own I3D (:mod:`udaqa_pipeline.engine.finetune`), not from a frozen cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import resolve
from ..backbone.i3d import I3D
from ..backbone.weights import i3d_state
from ..engine.finetune import FinetuneError, FrameData, FrameSource, build_backbone, load_frame_samples
from ..inference.run import load_run
from ..runs.layout import CHECKPOINT
from .evaluate import evaluate
from .report import write_report


def evaluate_finetuned(run_dir: str | Path, root: str | Path | None = None, *, judges: int | None = None,
                       samples: int = 50, device: str | None = None, jobs: int | None = None,
                       make_plots: bool = True) -> dict:
    """Stage two's :func:`~udaqa_pipeline.evaluation.evaluate.evaluate` on a fine-tuned run: the test videos'
    features are computed from their frames with the run's fine-tuned backbone (centre view)."""

    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file() and (run_dir / "groups.json").is_file():
        groups = json.loads((run_dir / "groups.json").read_text())["groups"]
        raise FinetuneError(f"{run_dir} holds one fine-tuned model and backbone per group ({', '.join(groups)}): "
                            f"evaluate each, e.g. `udaqa-pipeline evaluate-finetuned {run_dir}/{groups[0]}`")
    run = load_run(run_dir)
    state = run.source_state  # load_run keeps it with the heads' epoch
    if state is None:
        raise FinetuneError(f"{run_dir} has no fine-tuned backbone; evaluate it with `udaqa-pipeline evaluate`")
    cfg = run.config
    stage = str(run.checkpoint.get("stage") or run.checkpoint.get("dataset") or cfg.dataset.get("name", ""))
    samples_, root_p = load_frame_samples(cfg, stage, root, None)
    dev = torch.device(resolve.device(device))
    i3d = I3D()
    i3d.load_state_dict(i3d_state(state))
    data = FrameData(stage, cfg, samples_, root_p)
    if data.provenance.cache_hash != run.cache_hash:
        raise FinetuneError(f"the samples or frame settings under {root_p} are not the ones {run_dir} was fine-tuned "
                            f"on ({data.provenance.cache_hash} vs {run.cache_hash}); pass the same --root and stage")
    if jobs is None:
        jobs = min(8, os.cpu_count() or 1) if dev.type == "cuda" else 0
    src = FrameSource(data, build_backbone(cfg, dev, i3d), workers=jobs)
    try:
        with torch.no_grad():
            return write_report(evaluate(run_dir, data=data.training_set(src), judges=judges, samples=samples),
                                make_plots=make_plots)
    finally:
        src.close()
