"""Scoring rules: a judge panel (and the dive's difficulty) -> the final score. Pure numpy.

Every rule takes ``judges`` of shape ``(..., T)`` and returns shape ``(...)``, so the same call
scores one panel, a batch, or ``S`` sampled panels per sample; ``difficulty`` broadcasts against
the leading dims (a scalar, or shape ``(...)``).

======================  =======  ==============================================================
rule                    judges   final score
======================  =======  ==============================================================
``mtl_middle3``         7        drop the 2 highest and 2 lowest, sum the middle 3, x DD
                                 (MTL-AQA; FineDiving individual dives with 7 judges)
``sum_dd``              3        sum x DD (FineDiving 3-judge panels, already trimmed)
``sum_dd_0.6``          5        sum x 0.6 x DD (FineDiving synchronised, 5 judges)
``sum``                 any      sum (JIGSAWS: GRS = sum of 6 items, 6..30)
``mean``                any      mean (a user's folder with several raters)
``identity``            1        the single label (AQA-7, judge-less MTL-AQA file)
======================  =======  ==============================================================
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import ConfigError

#: Judges a rule needs (``None``: any count, the dataset's own). At test time the model draws this
#: many latent samples, one per judge, and applies the rule.
RULE_JUDGES: dict[str, int | None] = {
    "mtl_middle3": 7,
    "sum_dd": 3,
    "sum_dd_0.6": 5,
    "sum": None,
    "mean": None,
    "identity": 1,
}

#: Rules that multiply by the degree of difficulty.
DIFFICULTY_RULES = frozenset({"mtl_middle3", "sum_dd", "sum_dd_0.6"})

#: FineDiving: the panel size decides the rule (REFERENCE section 3).
FINEDIVING_RULES: dict[int, str] = {7: "mtl_middle3", 3: "sum_dd", 5: "sum_dd_0.6"}

#: Tolerance under which a stored final score "satisfies" its rule (scores are 2-decimal numbers).
RULE_ATOL = 1e-6


def _middle3(j: np.ndarray) -> np.ndarray:
    return np.sort(j, axis=-1)[..., 2:5].sum(axis=-1)


_PANEL: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mtl_middle3": _middle3,
    "sum_dd": lambda j: j.sum(axis=-1),
    "sum_dd_0.6": lambda j: j.sum(axis=-1) * 0.6,
    "sum": lambda j: j.sum(axis=-1),
    "mean": lambda j: j.mean(axis=-1),
    "identity": lambda j: j[..., 0],
}


def check_rule(rule: str) -> str:
    """Return ``rule`` if known, else raise ``ConfigError`` (a ``ValueError``) listing the known rules."""
    if rule not in RULE_JUDGES:
        raise ConfigError(f"unknown scoring rule {rule!r}; known: {', '.join(RULE_JUDGES)}")
    return rule


def apply_rule(rule: str, judges, difficulty=None) -> np.ndarray:
    """Final score(s) from judge panel(s) ``(..., T)`` under ``rule``; returns float64 ``(...)``.

    Raises ``ValueError`` for an unknown rule, a panel size the rule cannot take, or a missing
    difficulty for a rule that needs one.
    """
    check_rule(rule)
    j = np.asarray(judges, dtype=np.float64)
    if j.ndim == 0:
        j = j[None]
    t = j.shape[-1]
    need = RULE_JUDGES[rule]
    if need is not None and t != need:
        raise ValueError(f"rule {rule!r} needs {need} judge scores, got {t}")
    if t == 0:
        raise ValueError(f"rule {rule!r} got an empty judge panel")
    out = _PANEL[rule](j)
    if rule in DIFFICULTY_RULES:
        if difficulty is None:
            raise ValueError(f"rule {rule!r} multiplies by the difficulty, but none was given")
        out = out * np.asarray(difficulty, dtype=np.float64)
    return np.asarray(out, dtype=np.float64)


def judges_needed(rule: str, observed: int | None = None) -> int:
    """Number of judges to sample for ``rule``: its fixed count, else ``observed`` (the data's)."""
    need = RULE_JUDGES[check_rule(rule)]
    if need is not None:
        return need
    if observed is None or observed < 1:
        raise ValueError(f"rule {rule!r} takes any number of judges: pass the dataset's panel size")
    return int(observed)


def finediving_rule(n_judges: int) -> str:
    """The FineDiving rule for a panel of ``n_judges`` (7, 5 or 3)."""
    try:
        return FINEDIVING_RULES[int(n_judges)]
    except KeyError:
        raise ValueError(
            f"FineDiving panels have 3, 5 or 7 judges, got {n_judges}: check the annotation file"
        ) from None


def rule_holds(rule: str, judges, difficulty, final, atol: float = RULE_ATOL) -> bool:
    """Whether a stored final score equals its rule applied to its judges (within ``atol``)."""
    return bool(abs(float(apply_rule(rule, judges, difficulty)) - float(final)) < atol)
