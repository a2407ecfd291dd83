"""A run's checkpoint: one file, digest-checked, loaded with ``weights_only=True``; and a loaded run.

``<run>/checkpoint.pt`` holds an outer dict {format, version, sha256, payload} whose payload is the
torch-serialised inner dict (model, optimiser, best, calibration, config, model config, label
scaling, curriculum, RNG states, split ids, provenance), so any flipped byte fails the digest
check. :func:`load_run` rebuilds the model from the checkpoint's own model config, never from flags.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..errors import UdaqaError
from ..fileutil import atomic_write_bytes
from ..model import UDAQA, ModelConfig
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


@dataclass
class Run:
    """A trained run as :func:`load_run` returns it; :meth:`score` scores a video with it."""

    model: UDAQA
    config: Config
    cache_hash: str
    scaling: dict
    checkpoint: dict
    source_state: dict | None
    run_dir: Path | None = None

    def score(self, video: str | Path, *, difficulty: float | None = None, judges: int | None = None,
              samples: int = 50, group: str | None = None, rule: str | None = None, seed: int = 0,
              device: str | None = None) -> dict:
        """Score one video file or frame folder with this run (its I3D: the Kinetics weights, or
        the run's fine-tuned backbone): a dict with ``panels`` (S sampled judge panels, S x T, in
        the judges' units), ``final_score`` (mean of the S final scores under the run's rule),
        ``final_scores`` (S,), ``final_lo``/``final_hi`` (the central 80% interval; None below 10
        draws), ``uncertainty`` (the predicted u) and what was used (rule, judges, backbone).
        ``difficulty`` is needed by rules that multiply by the degree of difficulty (MTL-AQA,
        FineDiving). Raises :class:`~udaqa_pipeline.score.ScoreError` (bad arguments) or the
        decoder's error for an unreadable video; see :func:`udaqa_pipeline.score.score_video`."""
        from ..score import _cached_scorer, score_video

        if self.run_dir is None:
            raise CheckpointError("this Run was not loaded from a run directory; use load_run(path)")
        scorer = _cached_scorer(self.run_dir, device=device)  # I3D loaded once for many videos
        return score_video(scorer, video, judges=judges, difficulty=difficulty, samples=samples, group=group,
                           rule=rule, seed=seed)


def heads_state(state: dict, model: UDAQA) -> dict:
    """A saved heads state dict made loadable into ``model`` (a UDAQA) of this version: a ``calib``
    buffer saved before the calibrated sampler, its award step or its shift gets the missing terms
    as 0 (their "off" value). Returns a new dict."""
    state = dict(state)
    calib = state.get("calib", torch.zeros(0))
    state["calib"] = torch.cat([calib.float(), torch.zeros(len(model.calib) - len(calib))])
    return state


def load_run(run_dir: str | Path, *, which: str = "best") -> Run:
    """Load ``<run_dir>/checkpoint.pt`` -> Run(model, config, cache_hash, scaling, checkpoint, ...).

    ``which="best"`` gives the selected model (the protocol's best epoch), ``"last"`` the latest;
    when no epoch was ever selected (every selection score NaN) "best" falls back to the latest.
    ``source_state`` (the trainable feature source's state, e.g. a fine-tuned I3D, or None) is
    always the one of the same epoch as the heads.
    The architecture is rebuilt from the checkpoint's model config, never from flags. The model is
    in eval mode; ``model.predict_judges(features, video, T, S)`` samples judge panels.
    """
    path = Path(run_dir) / CHECKPOINT
    ck = load_checkpoint(path)
    try:
        model = UDAQA(ModelConfig.from_dict(ck["model_config"]))
        best = which == "best" and ck["best"]["model"] is not None
        model.load_state_dict(heads_state(ck["best"]["model"] if best else ck["model"], model))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not match this version's model ({e}); retrain the run") from e
    model.eval()
    # The source (e.g. a fine-tuned backbone) always comes from the same epoch as the heads.
    src_state = ck["best"].get("source") if best else ck.get("source")
    return Run(model, Config.from_dict(ck["config"], source=str(path)), ck["cache_hash"], ck["scaling"], ck, src_state, Path(run_dir))
