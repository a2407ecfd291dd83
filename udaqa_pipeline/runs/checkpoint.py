"""A run's checkpoint: one file, digest-checked, loaded with ``weights_only=True``.

``<run>/checkpoint.pt`` holds an outer dict {format, version, sha256, payload} whose payload is the
torch-serialised inner dict (model, optimiser, best, calibration, config, model config, label
scaling, curriculum, RNG states, split ids, provenance), so any flipped byte fails the digest
check. :func:`udaqa_pipeline.inference.run.load_run` rebuilds the model from the checkpoint's own model
config, never from flags.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch

from ..errors import UdaqaError
from ..fileutil import atomic_write_bytes
from ..model import UDAQA
from .layout import CHECKPOINT

CHECKPOINT_FORMAT = "udaqa-pipeline/run"
CHECKPOINT_VERSION = 1


class CheckpointError(UdaqaError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def state_to_cpu(sd: dict) -> dict:
    return {k: v.detach().cpu().clone() for k, v in sd.items()}


def save_checkpoint(path: Path, ckpt: dict) -> None:
    """Write ``ckpt`` as one file: an outer dict {format, version, sha256, payload} whose payload is
    the torch-serialised inner dict as a uint8 tensor, so any flipped byte fails the digest check.
    Written to a temporary name and renamed, so a kill leaves the old or the new file."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    raw = buf.getvalue()
    outer = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
             "sha256": hashlib.sha256(raw).hexdigest(),
             "payload": torch.frombuffer(bytearray(raw), dtype=torch.uint8)}
    buf = io.BytesIO()
    torch.save(outer, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """Load and verify a run checkpoint (``torch.load(weights_only=True)`` twice, digest checked)."""
    path = Path(path)
    fix = f"delete {path} (or train again with --no-resume / another --run directory)"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: train first (`udaqa-pipeline train ...`)")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise CheckpointError(f"{path} is not a readable udaqa-pipeline checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}); {fix}") from e
    if not isinstance(outer, dict) or outer.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a udaqa-pipeline run checkpoint; {fix}")
    if outer.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {outer.get('version')}, this udaqa-pipeline "
                              f"reads version {CHECKPOINT_VERSION}; retrain, or use the release that wrote it")
    raw = outer["payload"].numpy().tobytes()
    if hashlib.sha256(raw).hexdigest() != outer.get("sha256"):
        raise CheckpointError(f"{path} fails its SHA-256 check (modified or damaged); {fix}")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: payload unreadable ({e}); {fix}") from e


def heads_state(state: dict, model: UDAQA) -> dict:
    """A saved heads state dict made loadable into ``model`` (a UDAQA) of this version: a ``calib``
    buffer saved before the calibrated sampler, its award step or its shift gets the missing terms
    as 0 (their "off" value). Returns a new dict."""
    state = dict(state)
    calib = state.get("calib", torch.zeros(0))
    state["calib"] = torch.cat([calib.float(), torch.zeros(len(model.calib) - len(calib))])
    return state
