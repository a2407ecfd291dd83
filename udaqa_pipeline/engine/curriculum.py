"""Uncertainty-guided curriculum (REFERENCE section 1).

Schedule, as a small state machine the training loop calls once per epoch:
- epoch 1 (index 0) trains on every sample (no uncertainty exists yet);
- after every epoch the training samples are sorted by the model's latest predicted uncertainty,
  ascending (re-sorted every epoch);
- from epoch 2 the loop trains on the lowest ``start`` fraction (40%);
- when the monitored loss has not improved for ``patience`` (3) consecutive epochs on the current
  fraction, ``step`` (20%) more is added (capped at 100%) and the patience counter restarts with a
  fresh best, because a larger subset has a different loss level.
"Improvement" means a strictly lower mean training loss on the epoch's subset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Curriculum:
    start: float = 0.4
    step: float = 0.2
    patience: int = 3
    enabled: bool = True
    fraction: float = 1.0  # fraction used by the next epoch
    best: float = math.inf
    bad_epochs: int = 0
    epochs_seen: int = 0

    def end_epoch(self, loss: float) -> float:
        """Record the finished epoch's loss; return the fraction the next epoch trains on."""
        self.epochs_seen += 1
        if not self.enabled:
            self.fraction = 1.0
            return self.fraction
        if self.epochs_seen == 1:  # after the warm-up epoch on everything
            self.fraction = self.start
            self.best, self.bad_epochs = math.inf, 0
            return self.fraction
        if loss < self.best:
            self.best, self.bad_epochs = loss, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience and self.fraction < 1.0:
            self.fraction = min(1.0, round(self.fraction + self.step, 10))
            self.best, self.bad_epochs = math.inf, 0
        return self.fraction

    def state_dict(self) -> dict:
        d = asdict(self)
        d["best"] = None if math.isinf(self.best) else float(self.best)
        return d

    @classmethod
    def from_state(cls, d: dict) -> "Curriculum":
        d = dict(d)
        d["best"] = math.inf if d.get("best") is None else d["best"]
        return cls(**d)


def select(uncertainty: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ceil(fraction * N) samples with the lowest uncertainty (stable order on ties,
    at least two samples where there are two: a batch of one cannot be batch-normalised)."""
    n = len(uncertainty)
    k = max(min(2, n), min(n, math.ceil(fraction * n - 1e-9)))
    order = np.argsort(np.asarray(uncertainty), kind="stable")
    return np.sort(order[:k])
