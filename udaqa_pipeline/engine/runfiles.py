"""A run directory as training writes it, in one place: ``config.json`` (the resolved config and
the run's provenance), ``checkpoint.pt`` and ``log.jsonl``, and the progress bar.

Only rank 0 writes. The checkpoint is rewritten atomically after every ``train.checkpoint_every``
epochs and after the last; the log gets one JSON line per epoch, appended after the checkpoint
that covers it, so a killed run resumes from its last checkpoint and its log never runs ahead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..runs.checkpoint import load_checkpoint, save_checkpoint
from ..runs.layout import CHECKPOINT, LOG


class RunFiles:
    """The files of one run directory ``run_dir`` written by rank ``rank``."""

    def __init__(self, run_dir: Path, rank: int, every: int) -> None:
        self.dir, self.rank, self.every = run_dir, rank, max(1, every)
        self.checkpoint = run_dir / CHECKPOINT
        self._lines: list[str] = []

    def load(self, resume: bool) -> dict | None:
        """The checkpoint to continue from, or None (none there, or ``resume`` off)."""
        return load_checkpoint(self.checkpoint) if resume and self.checkpoint.exists() else None

    def start(self, resumed: bool, start_epoch: int, config: dict) -> None:
        """A fresh run's empty log, or a resumed one's cut back to its checkpoint; ``config.json``."""
        if self.rank != 0:
            return
        if not resumed:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / LOG).write_text("")
        truncate_log(self.dir / LOG, start_epoch)
        (self.dir / "config.json").write_text(json.dumps(config, indent=1, default=str) + "\n")

    def epoch_done(self, epoch: int, record: dict, last: bool, checkpoint: Callable[[], dict]) -> None:
        """Queue ``record``'s log line; on a checkpoint epoch (or the ``last`` of this call) save
        ``checkpoint()`` and then append the queued lines."""
        self._lines.append(json.dumps(record))
        if self.rank == 0 and ((epoch + 1) % self.every == 0 or last):
            save_checkpoint(self.checkpoint, checkpoint())  # before the log lines: the log never runs ahead
            with (self.dir / LOG).open("a") as f:
                f.write("".join(ln + "\n" for ln in self._lines))
            self._lines = []

    def complete(self, epochs: int) -> dict | None:
        """The checkpoint when it covers all ``epochs``, else None."""
        if not self.checkpoint.exists():
            return None
        ck = load_checkpoint(self.checkpoint)
        return ck if int(ck["epoch"]) + 1 >= epochs else None

    def save(self, ck: dict) -> None:
        save_checkpoint(self.checkpoint, ck)


class Progress:
    """The tqdm bar of a run's epochs (rank 0, when enabled), or nothing."""

    def __init__(self, enabled: bool, start: int, total: int, run_dir: Path) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=f"train {run_dir.name}", unit="epoch")

    def update(self, record: dict, score: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{record.get('train_loss', float('nan')):.4f}", rho=f"{score:.3f}",
                                 frac=f"{record['train_fraction']:.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def truncate_log(path: Path, start_epoch: int) -> None:
    """Drop log lines past the checkpoint (a run killed between the two writes)."""
    if not path.exists():
        path.write_text("")
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and json.loads(ln)["epoch"] <= start_epoch]
    path.write_text("".join(ln + "\n" for ln in keep))
