"""The simulated judging panel: what a judge deducts for each visible fault, and its awards.

Seven judges (one per seat, the same for the whole dataset, drawn from the seed): each deducts
``sum_k w_jk * penalty_k`` from 9.8 with its own weights ``w_jk`` (log-normal around shared weights),
its own bias (normal, sd 0.3) and its own noise (sd 0.25..0.5), clipped to the diving scale and
rounded to its step. The final score is not computed here: it is :data:`RULE` of
:mod:`udaqa_pipeline.datasets.rules`, the same function that scores real MTL-AQA panels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..datasets.common import DIVING_SCALE
from ..datasets.rules import RULE_JUDGES

#: The MTL-AQA rule (middle 3 of 7 x DD), which the ``mtl`` adapter applies to a 7-judge file.
RULE = "mtl_middle3"
N_JUDGES = RULE_JUDGES[RULE]


def round_half(x: np.ndarray) -> np.ndarray:
    """Clip awards to the diving scale (0..10) and round to its step of 0.5 (half-way values round
    to even halves), so every award is one the ``mtl`` adapter's judge check accepts."""
    s = DIVING_SCALE
    return np.clip(np.round(np.asarray(x, dtype=np.float64) / s.step) * s.step, s.lo, s.hi)


#: Shared deduction weights (points off 10 at the worst value of each penalty, before judge
#: spread). Rotation and splash weigh most: they are what an entry is judged by.
PENALTY_WEIGHTS = {
    "height": 1.0,
    "distance": 0.8,
    "tightness": 1.1,
    "rotation": 2.1,
    "line": 1.1,
    "splash": 1.9,
    "timing": 0.6,
}


def penalties(factors: dict[str, float]) -> dict[str, float]:
    """Map quality factors (see :class:`~.dives.DiveSpec`) to penalties in [0, 1] (0 = flawless)."""
    splash = (factors["splash"] - 0.15) / 1.6
    return {
        "height": 1.0 - factors["jump"],
        "distance": abs(factors["distance"]),
        "tightness": 1.0 - factors["tightness"],
        "rotation": min(abs(factors["rotation_error_deg"]) / 45.0, 1.5),
        "line": 1.0 - factors["line"],
        "splash": float(np.clip(splash, 0.0, 1.2)),
        "timing": abs(factors["timing"]),
    }


@dataclass(frozen=True)
class JudgePanel:
    """Seven judges: per-judge multiplicative weights on each penalty, additive bias, noise sd."""

    weights: np.ndarray  # (7, n_penalties), order of PENALTY_WEIGHTS
    bias: np.ndarray  # (7,)
    noise: np.ndarray  # (7,)

    @staticmethod
    def draw(seed: int) -> "JudgePanel":
        rng = np.random.default_rng(np.random.SeedSequence((seed, 7919)))
        base = np.array(list(PENALTY_WEIGHTS.values()))
        weights = base[None, :] * np.exp(rng.normal(0.0, 0.15, size=(N_JUDGES, base.size)))
        return JudgePanel(weights, rng.normal(0.0, 0.3, N_JUDGES), rng.uniform(0.25, 0.5, N_JUDGES))

    def expected(self, factors: dict[str, float]) -> np.ndarray:
        """Noise-free award of each judge (before rounding)."""
        pen = np.array([penalties(factors)[k] for k in PENALTY_WEIGHTS])
        return 9.8 - self.weights @ pen + self.bias

    def score(self, factors: dict[str, float], rng: np.random.Generator) -> np.ndarray:
        """Awards in 0..10, steps of 0.5, shape (7,), float64."""
        return round_half(self.expected(factors) + rng.normal(0.0, 1.0, N_JUDGES) * self.noise)


def spread_ceiling(seed: int, n_dives: int = 1000, dives_per_video: int = 10, n_panels: int = 2000,
                   mc_seed: int = 123, panel: JudgePanel | None = None) -> float:
    """The best Spearman's rho any predictor can reach between its per-dive uncertainty and the
    real panel's sd on this generator: that of an oracle which knows each dive's expected panel sd
    (the mean sd over ``n_panels`` fresh panels of the same dive, judged as :meth:`JudgePanel.score`
    judges, seeded by ``mc_seed``) against the sd of one such panel per dive, over ``n_dives`` dives
    drawn like the generator's with ``seed`` (videos of ``dives_per_video``), judged by ``panel``
    (default the generator's, ``JudgePanel.draw(seed)``). Unitless, in [-1, 1].

    Why it is low (0.15-0.21 for seeds 0-2): every judge's noise sd is fixed per seat, so what a
    dive changes is only how the seats' weights and the awards' rounding and clipping act on its
    faults; the sd of 7 awards from one panel is mostly the luck of that panel. A target of 0.4 for
    rho(uncertainty, real panel sd) is out of reach on the demo for any model."""
    from ..metrics import spearman
    from .dives import draw_dive, draw_event

    panel = panel or JudgePanel.draw(seed)
    rng = np.random.default_rng(mc_seed)
    expected_sd, one_sd = np.empty(n_dives), np.empty(n_dives)
    for k in range(n_dives):
        vv, dd = k // dives_per_video + 1, k % dives_per_video + 1
        e = panel.expected(draw_dive(seed, vv, dd, draw_event(seed, vv)).factors)
        sims = round_half(e[None] + rng.normal(size=(n_panels, N_JUDGES)) * panel.noise)
        expected_sd[k] = sims.std(axis=1, ddof=1).mean()
        one_sd[k] = round_half(e + rng.normal(size=N_JUDGES) * panel.noise).std(ddof=1)
    return float(spearman(expected_sd, one_sd))
