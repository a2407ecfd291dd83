"""A trained run, ready to use: :func:`load_run` rebuilds it from its checkpoint (the model from
the checkpoint's own model config, the config read back as a typed :class:`~udaqa_pipeline.config.Config`),
and :meth:`Run.score` scores a video with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..model import UDAQA, ModelConfig
from ..runs.checkpoint import CheckpointError, heads_state, load_checkpoint
from ..runs.layout import CHECKPOINT


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
        FineDiving). Raises :class:`~udaqa_pipeline.inference.score.ScoreError` (bad arguments) or the
        decoder's error for an unreadable video; see :func:`udaqa_pipeline.inference.score.score_video`."""
        from ..inference.score import _cached_scorer, score_video

        if self.run_dir is None:
            raise CheckpointError("this Run was not loaded from a run directory; use load_run(path)")
        scorer = _cached_scorer(self.run_dir, device=device)  # I3D loaded once for many videos
        return score_video(scorer, video, judges=judges, difficulty=difficulty, samples=samples, group=group,
                           rule=rule, seed=seed)


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
