"""The typed configuration: one frozen dataclass per stage-config section, every default, type and
check written once, here.

A stage TOML (``stages/<name>.toml``) has the sections below; what a section leaves out takes the
default written on its field. Values are checked against the field's annotation when the
:class:`Config` is built (:func:`check_value`):

- booleans are TOML's ``true``/``false``; the Python spellings ``True``/``False`` given on the
  command line are read as the booleans they spell (``train.use_wa=False`` is false), any other
  value is refused;
- integers must be whole numbers written as such (``train.epochs=2.5`` and ``train.epochs=two`` are
  refused, as is ``2.0``);
- floats take integers too (``train.lr=1`` is 1.0);
- lists must be lists (``train.label_range=[0, 10]``) and are held as tuples; strings strings;
- a field with ``choices`` in its metadata takes one of them.

``[dataset]`` is the adapter's section (each adapter reads and checks its own keys, see
``datasets/``): it is held as a read-only mapping, :class:`DatasetConfig`, whose ``name`` is the only
key every stage has.

:meth:`Config.to_dict` is the JSON form saved with every cache manifest, run and checkpoint; a
saved dict (also one written before every section had its defaults here) is read back with
:meth:`Config.from_dict`, so two configs compare equal exactly when they resolve to the same values.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, UnionType
from typing import Any, Iterator

from ..errors import UdaqaError


class ConfigError(UdaqaError, ValueError):
    """A stage config or override that cannot be used; the message says what to change."""


def _choice(default: Any, choices: tuple) -> Any:
    return field(default=default, metadata={"choices": choices})


#: Cache backends (``cache.backend``) and stage-one compute dtypes (``cache.dtype``).
BACKENDS = ("hdf5", "zarr")
DTYPES = ("fp32", "bf16")
#: Checkpoint selection protocols (``train.select``) and the validation metric they rank by.
SELECTIONS = ("val", "inner_cv", "last")
SELECT_METRICS = ("spearman", "crps")
#: Where stage one may cut I3D (``cache.cut``): the block whose *input* it stores, one of I3D's
#: Inception blocks (``backbone.i3d.BLOCKS``), or "none".
CUTS = ("none", "Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c")
#: What stage two trains besides the heads (``train.adapt``): nothing, or the I3D blocks above the cut.
ADAPTS = ("none", "top")


@dataclass(frozen=True)
class Frames:
    """Which frames of a video make the L-frame window (``datasets/frames.py``, ``video/clips.py``)."""

    n_frames: int = 103             # L (MTL-AQA, REFERENCE section 3)
    short_policy: str = "pad_last"  # videos with fewer than L frames
    gap_policy: str = "error"       # numbered frame folders with a missing number
    mode: str = "auto"              # where the window sits: auto / first / last / uniform
    damaged: str = _choice("fail", ("fail", "keep"))  # window frames FFmpeg decodes from damaged data


@dataclass(frozen=True)
class Clips:
    """The clip layout over the L frames (``video/clips.py``): N clips of ``clip_len`` frames."""

    n_clips: int = 10
    clip_len: int = 16
    layout: str = "overlapping"


@dataclass(frozen=True)
class Preprocess:
    """Frame preprocessing before I3D: resize the short side, centre crop, normalise."""

    resize: int = 256
    crop: int = 224
    norm: str = "i3d"  # [-1, 1] as the Kinetics weights expect; "imagenet" for public AQA code


@dataclass(frozen=True)
class Cache:
    """Stage one's store: backend, feature views per video, compute dtype, the downsampled video."""

    backend: str = _choice("hdf5", BACKENDS)
    views: int = 1
    dtype: str = _choice("fp32", DTYPES)
    view_shift: int = 3                      # frames a shifted view moves the window (CoRe: +-3)
    video_size: tuple[int, ...] = (64, 64)   # (h, w) of the latent branch's video tensor
    cut: str = _choice("none", CUTS)         # also store the input of this I3D block (cache/cut.py)
    cut_dtype: str = _choice("bf16", DTYPES)  # how the cut is stored: bf16 halves the bytes


@dataclass(frozen=True)
class Train:
    """Stage two's recipe (``engine/``): optimiser, losses, curriculum, heads, checkpoint selection
    and the judge sampler's calibration. REFERENCE section 2 gives the paper's values."""

    lr: float = 1e-4
    weight_decay: float = 1e-5
    epochs: int = 200
    batch_size: int = 32
    alpha: float = 1.0
    beta: float = 10.0
    latent_dim: int = 6
    curriculum_start: float = 0.4
    curriculum_step: float = 0.2
    curriculum_patience: int = 3
    val_fraction: float = 0.1
    seed: int = 0
    per_group: bool = False
    label_scale: str = "global"
    label_range: tuple[float, ...] = ()
    use_wa: bool = True
    use_cvae: bool = True
    use_uncertainty: bool = True
    use_curriculum: bool = True
    latent_input: str = "video"
    regressors: int = _choice(1, (1, 2))
    wa_hidden: int = 256
    dropout: float = 0.3
    video_channels: tuple[int, ...] = (16, 32, 64, 128)
    eval_samples: int = 8
    select: str = _choice("val", SELECTIONS)
    select_metric: str = _choice("spearman", SELECT_METRICS)
    inner_folds: int = 3
    inner_smooth: int = 5
    average_last: int = 0
    optimizer: str = _choice("adam", ("adam", "adamw"))
    lr_schedule: str = _choice("constant", ("constant", "cosine"))
    feature_norm: bool = False
    feature_dropout: float = 0.0
    regressor_hidden: tuple[int, ...] = (256, 64)
    checkpoint_every: int = 1
    clip_l2: bool = False
    pool_std: bool = False
    calibrate: str = _choice("heldout", ("heldout", "oof", "none"))
    award_step: float = 0.0
    adapt: str = _choice("none", ADAPTS)    # "top": train the I3D blocks above cache.cut with the heads
    adapt_epochs: int = 0                   # with adapt = "top": the top trains in the last N epochs only (0: all)

    def __post_init__(self) -> None:
        if not 0 <= self.adapt_epochs <= self.epochs:
            raise ConfigError(f"train.adapt_epochs = {self.adapt_epochs}: the number of last epochs in which the top "
                              f"of I3D trains is a whole number from 0 (every epoch) to train.epochs ({self.epochs})")
        if self.adapt_epochs and self.adapt != "top":
            raise ConfigError(f"train.adapt_epochs = {self.adapt_epochs} needs train.adapt = 'top' (the top of I3D "
                              f"trained from the cache's cut); add --set train.adapt=top, or leave adapt_epochs at 0")
        if self.inner_folds < 2:
            raise ConfigError(f"train.inner_folds must be a whole number of folds, at least 2, not {self.inner_folds!r}")
        step = float(self.award_step)
        if step < 0:
            raise ConfigError(f"train.award_step must be 0 (continuous draws) or a positive award step, not {step}")
        if step > 0 and self.label_range and self.label_scale == "global":
            lo, hi = (float(x) for x in self.label_range)
            if any(abs(x / step - round(x / step)) > 1e-6 for x in (lo, hi)):
                raise ConfigError(f"train.award_step={step}: awards are multiples of the step, and the ends of "
                                  f"train.label_range [{lo:g}, {hi:g}] are not, so they would not be awards; use "
                                  f"the judge scale's step (diving: 0.5)")
        if step > 0 and (not self.label_range or self.label_scale != "global"):
            raise ConfigError(f"train.award_step={self.award_step} rounds sampled judges to awards clipped to the "
                              f"judge scale, so it needs train.label_range = [lo, hi] with train.label_scale = "
                              f"'global' (set them, or award_step = 0 for continuous draws)")


@dataclass(frozen=True)
class Finetune:
    """End-to-end training with I3D unfrozen (``engine/finetune.py``)."""

    lr_scale: float = 0.1                 # the backbone's learning rate, as a share of train.lr
    freeze_backbone: bool = False
    freeze_bn: bool = True                # BatchNorm keeps Kinetics' statistics (see engine/finetune.py)
    amp: str | bool = "auto"              # bf16 autocast: auto (on for CUDA) / on / off / a boolean
    checkpointing: str | bool = "auto"    # activation checkpointing of every I3D block, as amp
    max_shift: int = 3
    flip: bool = True
    random_crop: bool = True
    train_from: str = _choice("none", CUTS)  # freeze the blocks below this one (eval mode, no gradient)

    def __post_init__(self) -> None:
        for key in ("amp", "checkpointing"):
            value = getattr(self, key)
            if isinstance(value, str) and value.lower() not in ("auto", "on", "off", "true", "false"):
                raise ConfigError(f"finetune.{key} must be auto, on or off (or a boolean), not {value!r}")


class DatasetConfig(Mapping):
    """The ``[dataset]`` section: the adapter's own keys, read-only (``cfg.dataset["root"]``,
    ``cfg.dataset.get("rule_atol", 1e-6)``); ``name`` is the adapter's name unless ``adapter``
    names another (the demo stage is read by the ``mtl`` adapter)."""

    def __init__(self, body: Mapping[str, Any] | None = None) -> None:
        self._body = MappingProxyType(json.loads(json.dumps(dict(body or {}))))

    @property
    def name(self) -> str:
        return str(self._body.get("name", ""))

    def __getitem__(self, key: str) -> Any:
        return self._body[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._body)

    def __len__(self) -> int:
        return len(self._body)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __hash__(self) -> int:
        return hash(json.dumps(dict(self), sort_keys=True))

    def __repr__(self) -> str:
        return f"DatasetConfig({dict(self)!r})"


#: The typed sections, by their TOML name.
SECTIONS: dict[str, type] = {"frames": Frames, "clips": Clips, "preprocess": Preprocess, "cache": Cache,
                             "train": Train, "finetune": Finetune}


@dataclass(frozen=True)
class Config:
    """A resolved stage config (``config.resolve``): what every stage of the pipeline reads."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    frames: Frames = field(default_factory=Frames)
    clips: Clips = field(default_factory=Clips)
    preprocess: Preprocess = field(default_factory=Preprocess)
    cache: Cache = field(default_factory=Cache)
    train: Train = field(default_factory=Train)
    finetune: Finetune = field(default_factory=Finetune)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (nested dicts, lists for tuples) saved with caches, runs and checkpoints."""
        out: dict[str, Any] = {"dataset": dict(self.dataset)}
        for name in SECTIONS:
            out[name] = {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(getattr(self, name)).items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "") -> "Config":
        """The config of a nested dict (a parsed stage TOML or a saved :meth:`to_dict`): every value
        checked (:func:`check_value`), what it leaves out defaulted. Raises :class:`ConfigError`
        naming ``source`` for an unknown section or key or a value of the wrong type."""
        where = f" ({source})" if source else ""
        unknown = sorted(set(d) - set(SECTIONS) - {"dataset"})
        if unknown:
            raise ConfigError(f"unknown section [{unknown[0]}]{where}; sections are dataset, {', '.join(SECTIONS)}")
        parts: dict[str, Any] = {"dataset": DatasetConfig(d.get("dataset"))}
        for name, section in SECTIONS.items():
            body = d.get(name) or {}
            if not isinstance(body, Mapping):
                raise ConfigError(f"[{name}]{where} must be a table of key = value")
            known = {f.name for f in dataclasses.fields(section)}
            bad = sorted(set(body) - known)
            if bad:
                raise ConfigError(f"unknown key {name}.{bad[0]}{where}; known keys of [{name}]: {', '.join(sorted(known))}")
            kw = {k: _typed(f"{name}.{k}", check_value(f"{name}.{k}", v, source=source)) for k, v in body.items()}
            parts[name] = section(**kw)
        return cls(**parts)

    def replace(self, settings: Mapping[str, Any]) -> "Config":
        """A copy with ``{"section.key": value}`` replaced, checked as a stage file's values are
        (``cfg.replace({"cache.dtype": "bf16"})``)."""
        d = self.to_dict()
        for dotted, v in settings.items():
            section, _, key = dotted.partition(".")
            d.setdefault(section, {})[key] = v
        return Config.from_dict(d)


_TYPE_NAMES = {bool: "a boolean (true or false)", int: "a whole number", float: "a number",
               str: "a string", tuple: "a list, e.g. [1, 2]"}


def _field(dotted: str) -> dataclasses.Field | None:
    section, _, key = dotted.partition(".")
    cls = SECTIONS.get(section)
    if cls is None:
        return None
    return next((f for f in dataclasses.fields(cls) if f.name == key), None)


def _types(dotted: str) -> tuple[type, ...]:
    section = dotted.partition(".")[0]
    hint = typing.get_type_hints(SECTIONS[section])[dotted.partition(".")[2]]
    args = typing.get_args(hint) if isinstance(hint, UnionType) else (hint,)
    return tuple(typing.get_origin(a) or a for a in args)


def _typed(dotted: str, value: Any) -> Any:
    """A checked value as its field holds it: a list as a tuple, an integer of a float field as a float."""
    if isinstance(value, list):
        return tuple(value)
    if _types(dotted) == (float,) and isinstance(value, int):
        return float(value)
    return value


def default_of(dotted: str) -> Any:
    """The default of key ``section.key`` (lists as lists, as a TOML file writes them)."""
    f = _field(dotted)
    if f is None:
        raise KeyError(dotted)
    return list(f.default) if isinstance(f.default, tuple) else f.default


def check_value(dotted: str, value: Any, *, source: str = "") -> Any:
    """``value`` of key ``dotted`` (``section.key``) checked against its field's type and choices;
    returns it (a command-line ``True``/``False`` string as the boolean). ``[dataset]`` keys, which
    each adapter checks, pass as they are. Raises :class:`ConfigError` naming the key, the value,
    what it needs and ``source`` (where the value came from)."""
    f = _field(dotted)
    if f is None:
        return value
    types = _types(dotted)
    if bool in types and isinstance(value, str) and value in ("True", "False"):
        return value == "True"
    ok = any(isinstance(value, (list, tuple) if t is tuple else t) and not (t in (int, float) and isinstance(value, bool))
             for t in types)
    if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    where = f" ({source})" if source else ""
    example = f"{dotted}={_toml_spelling(default_of(dotted))}"
    if not ok:
        need = " or ".join(_TYPE_NAMES[t] for t in types)
        raise ConfigError(f"{dotted} = {_toml_spelling(value)}{where}: {dotted} takes {need}; e.g. {example}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{dotted} must be one of {', '.join(map(str, choices))}, not {value!r}{where}")
    return value


def _toml_spelling(v: Any) -> str:
    return json.dumps(v, default=str)
