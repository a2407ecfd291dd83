"""Stage configs: one TOML per dataset in ``stages/``, overridable as ``section.key=value``.

Plain nested dicts on purpose (nanoGPT style): what is in the TOML is what the code reads, the
resolved dict is saved with every cache manifest, run and checkpoint, and unknown override keys are
rejected so a typo never silently does nothing.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Iterable

from .errors import UdaqaError

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES_DIR = Path(os.environ.get("UDAQA_STAGES", REPO_ROOT / "stages"))


class ConfigError(UdaqaError, ValueError):
    """A stage config or override that cannot be used; the message says what to change."""


def available_stages() -> list[str]:
    return sorted(p.stem for p in STAGES_DIR.glob("*.toml"))


def load_stage(name_or_path: str | Path) -> dict[str, Any]:
    """Load ``stages/<name>.toml`` (or a TOML file path) as a nested dict."""
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = STAGES_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise ConfigError(
            f"no stage config {p}: use one of {', '.join(available_stages())} or a path to a .toml file"
        )
    with p.open("rb") as f:
        return tomllib.load(f)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare strings need no quotes on the command line


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``cfg`` with ``section.key=value`` overrides applied (values parsed as TOML)."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        dotted, value = item.split("=", 1)
        *parents, leaf = dotted.strip().split(".")
        node = out
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: no section {part!r} in the stage config")
            node = node[part]
        if leaf not in node:
            known = ", ".join(sorted(node)) or "(none)"
            raise ConfigError(f"override {item!r}: unknown key {leaf!r}; known keys here: {known}")
        node[leaf] = _parse_value(value.strip())
    return out


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
