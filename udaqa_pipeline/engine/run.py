"""The library's way into stage two: :func:`train` makes the lookups a caller leaves out (the
stage's newest cache, the default run directory, the device) once, then runs the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .. import config, resolve
from ..runs.layout import RunSpec, stage_name
from ..data.trainset import TrainingSet
from .adapt import adapted
from .loop import RunOptions, train_run


def train(dataset: str | Path, *, cache: str | Path | None = None, cache_root: str | Path | None = None,
          data: TrainingSet | None = None, spec: RunSpec | None = None, run_dir: str | Path | None = None, overrides: Iterable[str] = (),
          resume: bool = True, progress: bool = True, stop_after: int | None = None,
          device: str | None = None) -> Path:
    """Train UD-AQA on the training set of stage ``dataset`` (a stage name or stage TOML); returns
    the run directory.

    The training set is ``data`` when given (an opened cache with another feature source, or
    fine-tuning's frames), else the cache directory ``cache`` (default the stage's newest under
    ``cache_root``, see
    :func:`udaqa_pipeline.resolve.training_set`). ``spec``: the run (fold, cv, split, protocol;
    default fold 0 of the official split, honest protocol). ``run_dir``: default
    ``<runs>/<stage>/<spec.leaf()>``. ``overrides``: ``section.key=value`` strings (e.g.
    ``train.epochs=20``). ``resume``, ``progress``, ``stop_after``: see
    :class:`~udaqa_pipeline.engine.loop.RunOptions`. ``device``: see
    :func:`udaqa_pipeline.resolve.device`; bit-for-bit determinism is promised on CPU only.
    Raises what :func:`~udaqa_pipeline.engine.loop.train_run` raises, and ``CacheError`` when there
    is no cache."""
    cfg = config.resolve(dataset, overrides)
    spec = spec or RunSpec(stage_name(dataset))
    data = data or resolve.training_set(dataset, cache=cache, cache_root=cache_root, cfg=cfg)
    dev = resolve.device(device)
    data = adapted(data, cfg, dev)  # train.adapt = "top": the cache's cut through a trainable top of I3D
    run_dir = Path(run_dir) if run_dir is not None else resolve.run_dir(spec.stage, fold=spec.fold, cv=spec.cv,
                                                                        split=spec.split)
    return train_run(cfg, spec, data, run_dir, device=dev,
                     options=RunOptions(resume=resume, progress=progress, stop_after=stop_after))
