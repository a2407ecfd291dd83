"""Helpers the dataset adapters share: path resolution, guarded pickle loading, numpy-to-builtin
conversion, and the :class:`DatasetIndex` every adapter returns."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..safe_pickle import UnsafePickleError, safe_load
from .base import Sample


class AnnotationError(ValueError):
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


def dataset_cfg(cfg: dict) -> dict:
    return cfg.get("dataset", {}) if isinstance(cfg, dict) else {}


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
    """A split file's content (list/tuple/set/array of keys) as normalised key tuples."""
    if isinstance(obj, dict):
        obj = list(obj)
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if not isinstance(obj, (list, tuple, set, frozenset)):
        raise AnnotationError(path, f"{what} should hold a list of keys, found {type(obj).__name__}", "re-download it")
    return [norm_key(k) for k in obj]
