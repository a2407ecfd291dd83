"""Stage configs: one TOML per dataset in ``stages/``, resolved once into a typed :class:`Config`.

One precedence, applied by :func:`resolve` and nowhere else:

1. the defaults written on the fields of :mod:`udaqa_pipeline.config.schema`;
2. the stage TOML, after the stage it ``extends`` (``extends = "mtl"`` at the top of a file: the
   named stage's sections first, then this file's keys over them, key by key);
3. the command line: ``--set section.key=value`` (parsed as TOML; a bare word is a string), then
   the dedicated flags (``--backend``, ``--views``, ``--dtype``), passed as ``flags``.

Every value is checked against its key's type once, when the config is built (see
:mod:`~udaqa_pipeline.config.schema`); unknown sections and keys are refused so a typo never
silently does nothing. The resolved config's :meth:`Config.to_dict` is what caches, runs and
checkpoints save.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Iterable, Mapping

from .schema import (ADAPTS, BACKENDS, CUTS, DTYPES, SECTIONS, SELECT_METRICS, SELECTIONS, Cache, Clips, Config, ConfigError,
                     DatasetConfig, Finetune, Frames, Preprocess, Train, check_value, default_of)

__all__ = ["ADAPTS", "BACKENDS", "CUTS", "DTYPES", "SECTIONS", "SELECT_METRICS", "SELECTIONS", "Cache", "Clips", "Config",
           "ConfigError", "DatasetConfig", "Finetune", "Frames", "Preprocess", "Train", "apply_overrides",
           "available_stages", "cache_root", "check_value", "config_hash", "default_of", "read_stage",
           "resolve", "runs_root", "REPO_ROOT", "STAGES_DIR"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES_DIR = Path(os.environ.get("UDAQA_STAGES", REPO_ROOT / "stages"))


def available_stages() -> list[str]:
    return sorted(p.stem for p in STAGES_DIR.glob("*.toml"))


def _stage_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = STAGES_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise ConfigError(
            f"no stage config {p}: use one of {', '.join(available_stages())} or a path to a .toml file"
        )
    return p


def read_stage(name_or_path: str | Path) -> dict[str, Any]:
    """The nested dict of ``stages/<name>.toml`` (or a TOML file path), merged over the stage it
    ``extends`` (a stage name, or a path relative to the file), every value checked; no defaults
    filled in (that is :func:`resolve`'s). Raises :class:`ConfigError` for a missing file, an
    ``extends`` loop or a bad value, naming the file."""
    return _load(_stage_path(name_or_path), ())


def _load(p: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if p.resolve() in seen:
        raise ConfigError(f"{p}: `extends` loops back to itself ({' -> '.join(str(s) for s in seen)})")
    with p.open("rb") as f:
        own = tomllib.load(f)
    base_name = own.pop("extends", None)
    cfg: dict[str, Any] = {}
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"{p}: extends = {base_name!r} must name a stage, e.g. extends = \"mtl\"")
        rel = p.parent / base_name
        base = rel if base_name.endswith(".toml") and rel.is_file() else _stage_path(base_name)
        cfg = _load(base, seen + (p.resolve(),))
    for section, body in own.items():
        if not isinstance(body, dict):
            raise ConfigError(f"{p}: {section} = {body!r} is not a section; write it under [{section}]")
        merged = cfg.setdefault(section, {})
        for k, v in body.items():
            merged[k] = check_value(f"{section}.{k}", v, source=str(p))
    return cfg


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings need no quotes on the command line


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of the nested dict ``cfg`` with ``section.key=value`` overrides applied (values parsed
    as TOML, checked). A key of a typed section is accepted when ``cfg`` leaves it out (it replaces
    the default); a ``[dataset]`` key must be one the stage has. Raises :class:`ConfigError`."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, value = (s.strip() for s in item.split("=", 1))
        section, _, leaf = dotted.partition(".")
        if not leaf or "." in leaf:
            raise ConfigError(f"override {item!r}: name one key as section.key, e.g. train.epochs=2")
        if section not in SECTIONS and section not in out:
            raise ConfigError(f"override {item!r}: no section {section!r} in the stage config")
        node = out.setdefault(section, {})
        known_here = set(node) | {f for f in getattr(SECTIONS.get(section), "__dataclass_fields__", {})}
        if leaf not in known_here:
            known = ", ".join(sorted(known_here)) or "(none)"
            raise ConfigError(f"override {item!r}: unknown key {leaf!r}; known keys here: {known}")
        node[leaf] = check_value(dotted, _parse_value(value), source="--set")
    return out


def resolve(stage: str | Path, overrides: Iterable[str] = (), flags: Mapping[str, Any] | None = None) -> Config:
    """The resolved :class:`Config` of ``stage`` (a name in ``stages/`` or a TOML path): defaults <
    the stage file (after what it extends) < ``overrides`` (``section.key=value``) < ``flags``
    (``{"cache.backend": "zarr"}``; None values are not given). Raises :class:`ConfigError`."""
    cfg = apply_overrides(read_stage(stage), list(overrides))
    for dotted, value in (flags or {}).items():
        if value is not None:
            section, _, key = dotted.partition(".")
            cfg.setdefault(section, {})[key] = check_value(dotted, value, source="argument")
    return Config.from_dict(cfg, source=str(_stage_path(stage)))


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able object (sorted keys), used to key caches and runs."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def cache_root(explicit: str | Path | None = None) -> Path:
    """Cache root: the explicit argument, else ``$UDAQA_CACHE``, else ``<repo>/cache``."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("UDAQA_CACHE")
    return Path(env) if env else REPO_ROOT / "cache"


def runs_root(explicit: str | Path | None = None) -> Path:
    """Run directory root: the explicit argument, else ``$UDAQA_RUNS``, else ``<repo>/runs``."""
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("UDAQA_RUNS")
    return Path(env) if env else REPO_ROOT / "runs"

