"""Stage configs: one TOML per dataset in ``stages/``, overridable as ``section.key=value``.

Plain nested dicts (nanoGPT style): what is in the TOML is what the code reads, the resolved dict is
saved with every cache manifest, run and checkpoint, and unknown override keys are rejected so a
typo never silently does nothing.

The sections stage one and stage two fill in (``[cache]``, ``[train]``, ``[finetune]``) have their
defaults and types in one place, :data:`DEFAULTS`. Every value of those sections, from a stage file
or from ``--set``, is checked against its key's type once, when it is read (:func:`check_value`):

- booleans are TOML's ``true``/``false``; the Python spellings ``True``/``False`` given on the
  command line are read as the booleans they spell (``train.use_wa=False`` is false), any other
  value is refused;
- integers must be whole numbers written as such (``train.epochs=2.5`` and ``train.epochs=two`` are
  refused, as is ``2.0``);
- floats take integers too (``train.lr=1`` is 1.0 to the code, stored as written);
- lists must be lists (``train.label_range=[0, 10]``), strings strings.

A ``--set`` key of one of these sections is accepted when the stage file leaves it out (it is then
the default's to replace, e.g. ``--set cache.view_shift=2`` on the demo stage).
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


#: Defaults of the sections the code fills in when a stage file leaves a key out; each default's
#: type is its key's type (:data:`TYPES` lists the keys that take more than one).
DEFAULTS: dict[str, dict[str, Any]] = {
    "cache": {"backend": "hdf5", "views": 1, "dtype": "fp32", "view_shift": 3, "video_size": [64, 64]},
    "train": {
        "lr": 1e-4, "weight_decay": 1e-5, "epochs": 200, "batch_size": 32, "alpha": 1.0, "beta": 10.0,
        "latent_dim": 6, "curriculum_start": 0.4, "curriculum_step": 0.2, "curriculum_patience": 3,
        "val_fraction": 0.1, "seed": 0, "per_group": False, "label_scale": "global", "label_range": [],
        "use_wa": True, "use_cvae": True, "use_uncertainty": True, "use_curriculum": True,
        "latent_input": "video", "regressors": 1, "wa_hidden": 256, "dropout": 0.3,
        "video_channels": [16, 32, 64, 128], "eval_samples": 8,
        "select": "val", "select_metric": "spearman", "inner_folds": 3, "inner_smooth": 5, "average_last": 0,
        "optimizer": "adam", "lr_schedule": "constant", "feature_norm": False, "feature_dropout": 0.0,
        "regressor_hidden": [256, 64], "checkpoint_every": 1, "clip_l2": False, "pool_std": False,
        "calibrate": "heldout", "award_step": 0.0,
    },
    "finetune": {
        "lr_scale": 0.1, "freeze_backbone": False, "freeze_bn": False, "amp": "auto", "checkpointing": "auto",
        "max_shift": 3, "flip": True, "random_crop": True,
    },
}

#: Keys whose values may be of several types: ``auto``/``on``/``off`` or a boolean.
TYPES: dict[str, tuple[type, ...]] = {"finetune.amp": (str, bool), "finetune.checkpointing": (str, bool)}

_TYPE_NAMES = {bool: "a boolean (true or false)", int: "a whole number", float: "a number",
               str: "a string", list: "a list, e.g. [1, 2]"}


def _types(dotted: str, default: Any) -> tuple[type, ...]:
    if dotted in TYPES:
        return TYPES[dotted]
    return (float,) if isinstance(default, float) else (type(default),)


def check_value(dotted: str, value: Any, *, source: str = "") -> Any:
    """``value`` of key ``dotted`` (``section.key``) checked against its type in :data:`DEFAULTS`;
    returns it (a command-line ``True``/``False`` string as the boolean). Keys without a default
    (e.g. ``[dataset]``'s, which each adapter checks) pass as they are. Raises :class:`ConfigError`
    naming the key, the value, the type it needs and ``source`` (where the value came from)."""
    section, _, key = dotted.partition(".")
    if key not in DEFAULTS.get(section, {}):
        return value
    types = _types(dotted, DEFAULTS[section][key])
    if bool in types and isinstance(value, str) and value in ("True", "False"):
        return value == "True"
    ok = any(isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)) for t in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        need = " or ".join(_TYPE_NAMES[t] for t in types)
        where = f" ({source})" if source else ""
        raise ConfigError(f"{dotted} = {_toml_spelling(value)}{where}: {dotted} takes {need}; e.g. "
                          f"{dotted}={_toml_spelling(DEFAULTS[section][key])}")
    return value


def _toml_spelling(v: Any) -> str:
    return json.dumps(v, default=str)


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
        cfg = tomllib.load(f)
    for section, body in cfg.items():
        if isinstance(body, dict) and section in DEFAULTS:
            for k, v in body.items():
                check_value(f"{section}.{k}", v, source=str(p))
    return cfg


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
            if part not in node and len(parents) == 1 and part in DEFAULTS:
                node[part] = {}  # a defaulted section the stage file leaves out, e.g. [finetune]
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {item!r}: no section {part!r} in the stage config")
            node = node[part]
        known_here = set(node) | (set(DEFAULTS.get(parents[0], {})) if len(parents) == 1 else set())
        if leaf not in known_here:
            known = ", ".join(sorted(known_here)) or "(none)"
            raise ConfigError(f"override {item!r}: unknown key {leaf!r}; known keys here: {known}")
        node[leaf] = check_value(dotted.strip(), _parse_value(value.strip()), source="--set")
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
