"""Helpers the dataset adapters share: path resolution, guarded pickle loading, numpy-to-builtin
conversion, the :class:`DatasetIndex` every adapter returns, and :class:`LabelCheck`, the one place
where labels are checked (non-finite scores refused, judge values held against the judge scale).

**Judge policy** (:func:`settle_judges`, the same in every adapter). A judge value outside the
dataset's judge scale, or off its step (MTL-AQA and FineDiving: 0..10 in steps of 0.5, REFERENCE
section 3; JIGSAWS GRS items: integers 1..5; AQA-7 and a user's folder: ``dataset.judge_scale`` /
``dataset.judge_step`` when the stage sets them) is an outlier. Training never sees it as written:

1. when every outlier of a panel divided by 10 lands on the scale and step (a slipped decimal point:
   45.0 for 4.5) and the scoring rule applied to the corrected panel reproduces the published final
   score (within ``dataset.rule_atol``), the corrected values are used;
2. otherwise the outlier judges are dropped from the panel (55.5, 8.9) and the published final score
   is kept; where the file publishes no final score (JIGSAWS ``label.pkl``: the GRS is the sum of the
   items), or no judge is left, the sample is left out, since its label cannot be formed.

Either way the published panel stays in ``Sample.extra["published_judges"]`` and ``datasets
inspect`` lists every outlier by sample id (``judge_outliers``) and in one warning line.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ConfigError
from ..errors import UdaqaError
from ..safe_pickle import UnsafePickleError, safe_load
from .base import Sample
from .rules import RULE_ATOL, rule_holds


class AnnotationError(UdaqaError, ValueError):
    """An annotation file that is missing or unusable; the message names the file and the fix."""

    def __init__(self, path: str | Path | None, reason: str, fix: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.reason = reason
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{reason}" + (f"; {fix}" if fix else ""))


@dataclass
class DatasetIndex:
    """What an adapter read: the samples plus notes for ``datasets inspect``.

    ``warnings`` are facts about the published files worth knowing (a typo judge value, scores
    stored x100, keys outside both splits); the data are reported as published, never "fixed".
    """

    samples: list[Sample]
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    #: Judge values off the judge scale, one dict each (:meth:`LabelCheck.outliers`).
    judge_outliers: list[dict] = field(default_factory=list)


def resolve(root: Path, rel: str | Path) -> Path:
    """``rel`` under ``root`` (an absolute ``rel`` wins, as ``Path`` joining does)."""
    return Path(root) / Path(rel)


def need_file(root: Path, rel: str, key: str, what: str, dataset: str) -> Path:
    """``root/rel`` if it is a file, else an :class:`AnnotationError` saying what to put where."""
    p = resolve(root, rel)
    if not p.is_file():
        raise AnnotationError(
            p,
            f"missing {what}",
            f"put the published file there, pass --root to the folder that holds it, or set "
            f"dataset.{key}=PATH (stages/{dataset}.toml)",
        )
    return p


def load_pickle(path: Path, what: str) -> Any:
    """Annotation pickle through the restricted unpickler, with errors that name the file."""
    try:
        return safe_load(path)
    except UnsafePickleError as exc:
        raise AnnotationError(path, f"{what} asks to run code while loading ({exc}); refused", "use the published file") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise AnnotationError(path, f"{what} is damaged or not a pickle ({type(exc).__name__}: {exc})", "re-download it") from exc


def to_float(x: Any) -> float:
    """A numpy scalar / 0-d or 1-element array / Python number as a float."""
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size != 1:
        raise ValueError(f"expected one number, got {a.size}")
    return float(a[0])


def to_int(x: Any) -> int:
    return int(np.asarray(x).reshape(-1)[0])


def to_floats(x: Any) -> tuple[float, ...]:
    """A judge panel (list, tuple, np.float64 array, ...) as a tuple of floats."""
    return tuple(float(v) for v in np.asarray(x, dtype=np.float64).reshape(-1))


def norm_key(key: Any) -> tuple:
    """A split/annotation key with numpy ints/strs turned into builtins, so lookups agree."""
    if isinstance(key, (tuple, list, np.ndarray)):
        return tuple(norm_key(k)[0] if isinstance(k, (tuple, list)) else _scalar(k) for k in key)
    return (_scalar(key),)


def _scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode("latin1")
    return v


def as_key_list(obj: Any, path: Path, what: str) -> list[tuple]:
    """A split file's content (list/tuple/set/array of keys) as normalised key tuples.

    A (2, N) numeric array is refused (N keys of 2 items stored transposed would otherwise read as
    2 keys of N items that match nothing)."""
    if isinstance(obj, dict):
        obj = list(obj)
    if isinstance(obj, np.ndarray):
        if obj.ndim == 2 and obj.shape[0] == 2 and obj.shape[1] != 2:
            raise AnnotationError(path, f"{what} is a {obj.shape[0]} x {obj.shape[1]} array; expected one key per row "
                                  f"(N x 2)", "it is stored transposed: save its transpose (array.T)")
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple, set, frozenset)):
        raise AnnotationError(path, f"{what} should hold a list of keys, found {type(obj).__name__}", "re-download it")
    return [norm_key(k) for k in obj]


# ------------------------------------------------------------------------------------------ labels
#: The divisor the judge policy tries on an outlier: a slipped decimal point (45.0 written for 4.5).
DECIMAL_SLIP = 10.0


@dataclass(frozen=True)
class JudgeScale:
    """The values a judge can give: ``lo..hi`` (inclusive), multiples of ``step`` (``None``: any)."""

    lo: float
    hi: float
    step: float | None = None

    def allows(self, value: float) -> bool:
        if not (self.lo - 1e-9 <= value <= self.hi + 1e-9):
            return False
        if self.step is None:
            return True
        r = value / self.step
        return abs(r - round(r)) < 1e-6

    def __str__(self) -> str:
        return f"{self.lo:g}..{self.hi:g}" + (f" in steps of {self.step:g}" if self.step else "")


#: Diving panels (MTL-AQA, FineDiving; REFERENCE section 3).
DIVING_SCALE = JudgeScale(0.0, 10.0, 0.5)
#: JIGSAWS GRS items (REFERENCE section 3).
GRS_ITEM_SCALE = JudgeScale(1.0, 5.0, 1.0)


def judge_scale(dcfg: dict, default: JudgeScale | None, stage: str) -> JudgeScale | None:
    """The judge scale a stage asks for: ``dataset.judge_scale = [lo, hi]`` (``[]``: none, only
    finiteness is checked) and ``dataset.judge_step`` (``0``: any value); an absent key keeps the
    adapter's published ``default``. Raises :class:`~udaqa_pipeline.config.ConfigError` for a value
    that is not ``[lo, hi]`` with ``lo < hi`` or a negative step."""
    where = f"(stages/{stage}.toml or --set dataset.judge_scale=[LO,HI])"
    raw = dcfg.get("judge_scale")
    if raw is None:
        scale = default
    elif isinstance(raw, (list, tuple)) and len(raw) == 0:
        scale = None
    else:
        try:
            lo, hi = (float(x) for x in raw)
        except (TypeError, ValueError):
            raise ConfigError(f"dataset.judge_scale = {raw!r} is not [lo, hi]; give two numbers, or [] for no "
                              f"scale {where}") from None
        if not lo < hi:
            raise ConfigError(f"dataset.judge_scale = {raw!r} needs lo < hi {where}")
        scale = JudgeScale(lo, hi, default.step if default is not None else None)
    if "judge_step" not in dcfg:
        return scale
    try:
        step = float(dcfg["judge_step"])
    except (TypeError, ValueError):
        step = -1.0
    if step < 0:
        raise ConfigError(f"dataset.judge_step = {dcfg['judge_step']!r} is not a step >= 0 (0: any value) "
                          f"(stages/{stage}.toml or --set dataset.judge_step=0.5)")
    if scale is None:
        if step > 0:
            raise ConfigError(f"dataset.judge_step = {step:g} is set but there is no judge scale; set "
                              f"dataset.judge_scale=[LO,HI] too, or judge_step = 0 (stages/{stage}.toml)")
        return None
    return JudgeScale(scale.lo, scale.hi, step if step > 0 else None)


@dataclass(frozen=True)
class JudgeFix:
    """One judge value off the scale: its index in the published panel, the value as published,
    and what training gets (``None``: the judge is dropped)."""

    judge: int
    value: float
    used: float | None


def settle_judges(judges: tuple[float, ...], scale: JudgeScale, rule: str, difficulty: float | None,
                  final: float | None, atol: float = RULE_ATOL) -> tuple[tuple[float, ...], tuple[JudgeFix, ...]]:
    """The judge policy (module docstring): ``(panel to train on, the fixes)``; no fix -> the panel
    unchanged. ``final=None`` (no published final score) never confirms a correction."""
    bad = [i for i, v in enumerate(judges) if not scale.allows(v)]
    if not bad:
        return tuple(judges), ()
    slipped = {i: round(judges[i] / DECIMAL_SLIP, 9) for i in bad}
    if final is not None and all(scale.allows(v) for v in slipped.values()):
        fixed = tuple(slipped.get(i, v) for i, v in enumerate(judges))
        try:
            holds = rule_holds(rule, fixed, difficulty, final, atol)
        except ValueError:  # a panel the rule cannot score confirms nothing
            holds = False
        if holds:
            return fixed, tuple(JudgeFix(i, judges[i], slipped[i]) for i in bad)
    kept = tuple(v for i, v in enumerate(judges) if i not in slipped)
    return kept, tuple(JudgeFix(i, judges[i], None) for i in bad)


def _show(v: Any) -> str:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    return f"{a[0]:g}" if a.size == 1 else "[" + ", ".join(f"{x:g}" for x in a) + "]"


class LabelCheck:
    """The label checks of one annotation file, the same in every adapter.

    Per row: :meth:`finite` records a NaN/inf final score, judge score or difficulty (the row is
    then skipped), :meth:`judges` applies the judge policy. At the end :meth:`report` raises
    :class:`AnnotationError` naming every non-finite row, else returns the warning lines (outliers
    and left-out samples by id); :meth:`outliers` gives them structured for ``datasets inspect``.
    """

    def __init__(self, path: Path, scale: JudgeScale | None, atol: float = RULE_ATOL) -> None:
        self.path, self.scale, self.atol = Path(path), scale, float(atol)
        self.nonfinite: list[str] = []
        self.fixes: list[tuple[str, JudgeFix]] = []
        self.left_out: list[str] = []

    def finite(self, where: str, **values: Any) -> bool:
        """False (and the row recorded) when any value given is NaN or infinite; ``None`` is skipped."""
        bad = []
        for name, v in values.items():
            if v is None:
                continue
            a = np.asarray(v, dtype=np.float64)
            if a.size and not np.isfinite(a).all():
                bad.append(f"{name}={_show(a)}")
        if bad:
            self.nonfinite.append(f"{where} {', '.join(bad)}")
        return not bad

    def judges(self, sid: str, rule: str, judges: tuple[float, ...], difficulty: float | None,
               final: float | None) -> tuple[tuple[float, ...] | None, dict]:
        """``(panel training gets, extra for the Sample)``; panel ``None``: leave the sample out.
        ``final=None`` when the file publishes no final score (it is the rule over the panel)."""
        if self.scale is None:
            return tuple(judges), {}
        used, fixes = settle_judges(tuple(judges), self.scale, rule, difficulty, final, self.atol)
        if not fixes:
            return used, {}
        self.fixes += [(sid, f) for f in fixes]
        if not used or (final is None and any(f.used is None for f in fixes)):
            self.left_out.append(sid)
            return None, {}
        return used, {"published_judges": tuple(judges)}

    def outliers(self) -> list[dict]:
        """``[{"id", "file", "judge" (0-based, published panel), "value", "used" (None: dropped)}]``."""
        return [{"id": sid, "file": self.path.name, "judge": f.judge, "value": f.value, "used": f.used}
                for sid, f in self.fixes]

    def report(self) -> list[str]:
        """Warning lines; raises :class:`AnnotationError` when any row was non-finite."""
        if self.nonfinite:
            more = f" (and {len(self.nonfinite) - 10} more)" if len(self.nonfinite) > 10 else ""
            raise AnnotationError(
                self.path, f"{len(self.nonfinite)} row(s) hold a non-finite score (NaN or inf), which would make every "
                f"training loss NaN: " + "; ".join(self.nonfinite[:10]) + more,
                "fill in the real scores or remove those rows")
        out = []
        if self.fixes:
            shown = "; ".join(f"{sid} judge {f.judge}: {f.value:g} -> " + ("dropped" if f.used is None else f"{f.used:g}")
                              for sid, f in self.fixes[:10])
            more = f" (and {len(self.fixes) - 10} more)" if len(self.fixes) > 10 else ""
            out.append(f"{self.path.name}: {len(self.fixes)} judge value(s) off the judge scale {self.scale}: "
                       f"{shown}{more} (policy: value/10 when it is on the scale and the rule then gives the published "
                       "final score, else the judge is dropped)")
        if self.left_out:
            out.append(f"{self.path.name}: {len(self.left_out)} sample(s) left out, their label cannot be formed "
                       f"without the dropped judge(s): " + ", ".join(self.left_out[:10]))
        return out
