"""What a command works on when the user does not say: today the stage, from the runs on disk.

A command of stage two (``train``, ``evaluate``, ``ablate``, ``cv``, ``finetune``) given no stage
name takes the stage of the most recent run (:func:`stage_from_runs`), so ``make train`` and then
``udaqa-pipeline evaluate --fold 2`` work without repeating the dataset.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import runs_root as _runs_root
from .errors import UdaqaError

#: The file that makes a directory a run (``train.CHECKPOINT``, spelled out so that resolving a
#: stage does not import torch).
CHECKPOINT = "checkpoint.pt"

#: Two stages whose newest runs are closer in time than this are both "the most recent".
AMBIGUOUS_WITHIN_S = 60.0


class ResolveError(UdaqaError):
    """What to work on cannot be told from what is on disk; the message lists the candidates and
    how to name one."""


def stage_from_runs(runs_root: str | Path | None = None) -> str:
    """The stage of the most recent run under ``runs_root`` (default ``$UDAQA_RUNS`` or
    ``<repo>/runs``).

    A run is a directory holding ``checkpoint.pt`` anywhere under ``<runs_root>/<stage>/`` (a
    fold, a per-group model, an ablation row, a cross-validation run, a fine-tuned run); its stage
    is that first directory's name, and its time is the checkpoint's modification time (training
    rewrites it every epoch, so a run in progress counts as recent). The stage returned is the one
    holding the newest checkpoint.

    Raises :class:`ResolveError`, listing every stage with its newest run and the fix (name the
    stage), when the answer is ambiguous, which is exactly one of:

    - there is no run at all under ``runs_root``;
    - the newest run of another stage is less than :data:`AMBIGUOUS_WITHIN_S` (60) seconds older
      than the newest run overall (e.g. two trainings ran side by side).
    """
    root = _runs_root(runs_root)
    newest: dict[str, tuple[float, Path]] = {}
    if root.is_dir():
        for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for ck in stage_dir.rglob(CHECKPOINT):
                t = ck.stat().st_mtime
                if stage_dir.name not in newest or t > newest[stage_dir.name][0]:
                    newest[stage_dir.name] = (t, ck.parent)
    if not newest:
        raise ResolveError(f"no stage given and no run under {root} to take it from (no {CHECKPOINT} in "
                           f"{root}/<stage>/...); name the stage, e.g. `udaqa-pipeline train mtl`")
    ranked = sorted(newest.items(), key=lambda kv: -kv[1][0])
    t0 = ranked[0][1][0]
    close = [s for s, (t, _) in ranked if t0 - t < AMBIGUOUS_WITHIN_S]
    if len(close) > 1:
        listing = "; ".join(f"{s} ({run}, {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t))})"
                            for s, (t, run) in ranked)
        raise ResolveError(f"no stage given and the newest runs under {root} belong to {len(close)} stages "
                           f"within {AMBIGUOUS_WITHIN_S:.0f} s of each other ({', '.join(close)}); name the "
                           f"stage as the first argument. Runs by stage, newest first: {listing}")
    return ranked[0][0]
