"""Score a user's own video with a trained run: sampled judge panels, final score, uncertainty.

``score(path, run_dir)`` decodes ``path`` (a video file, a folder of frame images, or a folder of
videos), samples the L-frame window and K clips exactly as the run's stage config says, computes
the clip features and the downsampled video with stage one's own :func:`~udaqa_pipeline.features.
featurize` (so a scored video sees the same numbers training saw), then draws S panels of T
judges from the run's heads and applies the dataset's scoring rule.

Design choices:

- **Backbone**: the run's fine-tuned I3D when its checkpoint holds one (``finetune``), else the
  cached Kinetics weights (``udaqa-pipeline weights fetch``), in inference mode; the GPU when
  present. Fine-tuned runs trained under bf16 autocast are scored in bf16 on a GPU, fp32 on CPU.
- **Stage config**: the checkpoint's resolved config, with the frames/clips/preprocess/cache
  sections the features were extracted with: the checkpoint's ``feature_config`` (stored by
  training, so no cache is needed; :func:`stage_config`). The K clips go through I3D as one batch of K (stage one pads
  its batches to a fixed size for bit-identical caches; here that would cost up to 16x for a short
  video), so features equal the cached ones to float rounding (~1e-6).
- **Rule and T**: ``rule`` if given; FineDiving: the panel size picks the rule (T = 7 by default);
  else the run's most common rule and its panel size: the checkpoint's ``scoring_rules`` (first
  entry); else the dataset's published rule (MTL-AQA ``mtl_middle3`` x 7, JIGSAWS ``sum`` x 6, AQA-7 ``identity`` x 1; a folder dataset's
  ``dataset.rule``). A rule that multiplies by the difficulty needs ``difficulty`` (clear error
  otherwise). ``judges`` other than the rule's fixed panel size is refused (the rule could not be
  applied); rules taking any count (sum, mean) accept any T.
- **Output**: S = ``samples`` (default 50) seeded draws (``seed``) of T judges from the run's
  calibrated sampler (:mod:`udaqa_pipeline.model.calibration`; the paper's prior draws for runs without a
  fitted calibration, ``calibrated`` False); ``final_score`` is the mean over S of the rule applied
  to each panel (the mean of the sampled final scores, so it sits inside their interval; ``evaluate``'s
  point prediction is the rule on the panels' locations before the judge noise and awards, free of
  Monte-Carlo noise for its Spearman, so the two differ by a little),
  ``final_lo``/``final_hi`` the central 80% interval of those S final scores,
  ``final_std`` their spread, ``uncertainty`` the model's mean predicted log-uncertainty u (the
  quantity ``evaluate`` reports).
- **Batches**: a folder of videos gives one row per video; a video that cannot be read gets
  ``status`` (missing / corrupt / too_short / error) and the message in its row, and the batch goes
  on. Rows are written to a Parquet table.
- **Names that are not UTF-8** (a Linux file name is bytes; Python holds the undecodable ones as
  surrogate escapes): the file is scored as it is, and its row (path, error) names it with each
  such byte written ``\\xNN`` (:func:`display_text`; a warning says so), since neither Parquet nor a
  UTF-8 terminal can hold the raw bytes. Rename the file to keep its name exact.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import resolve
from ..config import Config
from ..errors import UdaqaError

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".gif", ".ts", ".3gp"})

#: Published rule and panel size per dataset adapter, when the run's cache is not there to say.
DATASET_RULES: dict[str, tuple[str, int]] = {"mtl": ("mtl_middle3", 7), "jigsaws": ("sum", 6), "aqa7": ("identity", 1)}


log = logging.getLogger(__name__)


class ScoreError(UdaqaError, RuntimeError):
    """Scoring cannot run as asked; the message names what to pass or fix."""


@dataclass
class Scorer:
    """A loaded run ready to score videos (see :func:`load_scorer`)."""

    run_dir: Path
    model: Any
    config: Config
    i3d: torch.nn.Module
    scaling: dict
    dataset: str
    finetuned: bool
    rules: dict[str, int] = field(default_factory=dict)  #: the checkpoint's {rule: T}, most common first


def stage_config(run: Any) -> Config:
    """The run's config with the frames/clips/preprocess/cache sections its features were made with
    (the checkpoint's ``feature_config``, recorded from the cache it trained on; a cache written
    without a stage config, e.g. by a tool, leaves the run's own stage sections in place)."""
    import copy

    saved = run.config.to_dict()
    saved.update((getattr(run, "checkpoint", None) or {}).get("feature_config") or {})
    return Config.from_dict(saved)


def load_scorer(run_dir: str | Path, *, device: str | None = None,
                dataset: str | None = None) -> Scorer:
    """Load ``<run_dir>/checkpoint.pt`` (verified, ``weights_only=True``) and its backbone.

    ``dataset``: refuse a run trained on another dataset (adapter name or stage name)."""
    from ..runs.checkpoint import CHECKPOINT, CheckpointError
    from .run import load_run

    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file() and (run_dir / "groups.json").is_file():
        groups = json.loads((run_dir / "groups.json").read_text())["groups"]
        raise ScoreError(f"{run_dir} holds one model per group ({', '.join(groups)}): pass --run {run_dir}/<group>")
    run = load_run(run_dir)
    names = {str(run.checkpoint.get("dataset", "")), run.config.dataset.name}
    if dataset is not None and dataset not in names:
        raise CheckpointError(f"{run_dir / CHECKPOINT} was trained on dataset {sorted(names - {''})[0]!r}, not "
                              f"{dataset!r}; pass the run of that dataset")
    cfg = stage_config(run)
    stored_rules = {str(r): int(n) for r, n in (run.checkpoint.get("scoring_rules") or {}).items()}
    dev = torch.device(resolve.device(device))
    state = run.source_state  # the fine-tuned backbone of the heads' epoch, or None
    finetuned = state is not None
    if finetuned:
        from ..backbone.weights import WeightsError, i3d_with

        try:
            i3d = i3d_with(state, dev)  # every block fine-tuned, or the Kinetics bottom + the run's top
        except WeightsError as e:
            raise CheckpointError(f"{run_dir}: {e}") from e
        amp = str(cfg.finetune.amp).lower()
        cfg = cfg.replace({"cache.dtype": "bf16" if dev.type == "cuda" and amp in ("auto", "on", "true") else "fp32"})
    else:
        from ..backbone.weights import load_i3d

        i3d = load_i3d(device=dev)
    i3d.prepare_for_inference()
    dataset = cfg.dataset.name
    return Scorer(run_dir, run.model, cfg, i3d, run.scaling, dataset, finetuned, stored_rules)


_SCORERS: dict[tuple, Scorer] = {}


def _cached_scorer(run_dir: str | Path, **kw: Any) -> Scorer:
    """:func:`load_scorer`, reusing the last two loaded runs while their checkpoint file is unchanged
    (scoring many files in one process should not reload I3D each time)."""
    from ..runs.checkpoint import CHECKPOINT

    ck = Path(run_dir) / CHECKPOINT
    st = ck.stat() if ck.is_file() else None
    key = (str(ck.resolve()), st and (st.st_mtime_ns, st.st_size, st.st_ino), repr(sorted(kw.items())))
    if st is None or key not in _SCORERS:
        sc = load_scorer(run_dir, **kw)
        if st is None:
            return sc
        while len(_SCORERS) >= 2:
            _SCORERS.pop(next(iter(_SCORERS)))
        _SCORERS[key] = sc
    return _SCORERS[key]


def resolve_rule(scorer: Scorer, judges: int | None = None, rule: str | None = None) -> tuple[str, int]:
    """The rule and panel size T to score with (see the module docstring)."""
    from ..datasets.rules import RULE_JUDGES, check_rule, finediving_rule, judges_needed

    observed: int | None = None
    try:
        if rule is not None:
            r = check_rule(rule)
        elif scorer.dataset == "finediving":
            r = finediving_rule(judges or 7)
        elif scorer.rules:
            r, observed = next(iter(scorer.rules.items()))
        elif scorer.dataset in DATASET_RULES:
            r, observed = DATASET_RULES[scorer.dataset]
        else:
            r = str(scorer.config.dataset.get("rule", "auto"))
            if r == "auto":
                raise ScoreError(f"the run's dataset {scorer.dataset!r} does not fix a scoring rule and its feature "
                                 f"cache is not here to say; pass --rule (one of {', '.join(RULE_JUDGES)})")
            check_rule(r)
    except ValueError as e:
        raise ScoreError(str(e)) from e
    need = RULE_JUDGES[r]
    if judges is not None:
        if judges < 1:
            raise ScoreError(f"--judges must be at least 1, got {judges}")
        if need is not None and judges != need:
            raise ScoreError(f"rule {r!r} takes exactly {need} judge scores, so --judges {judges} cannot give a final "
                             f"score; leave --judges out (or pass --rule sum/mean to pool more judges)")
        return r, int(judges)
    try:
        return r, judges_needed(r, observed)
    except ValueError as e:
        raise ScoreError(f"{e}; pass --judges T") from e


def _group_index(scorer: Scorer, group: str | None) -> torch.Tensor:
    sc = scorer.scaling
    if sc.get("mode", "global") == "global":
        return torch.zeros(1, dtype=torch.long)
    if group not in sc["groups"]:
        raise ScoreError(f"the run scales scores per group; pass --group, one of: {', '.join(sc['groups'])}")
    return torch.tensor([sc["groups"].index(group)], dtype=torch.long)


def score_video(scorer: Scorer, path: str | Path, *, judges: int | None = None, difficulty: float | None = None,
                samples: int = 50, group: str | None = None, rule: str | None = None, seed: int = 0) -> dict:
    """Score one video file or frame folder; raises on an unreadable video (see :func:`score`)."""
    from ..features import featurize, layout_of
    from ..datasets.base import Sample
    from ..datasets.frames import sample_frames
    from ..datasets.rules import DIFFICULTY_RULES, apply_rule

    r, t = resolve_rule(scorer, judges, rule)
    if r in DIFFICULTY_RULES and difficulty is None:
        raise ScoreError(f"the run's rule {r!r} multiplies the judges by the degree of difficulty: pass "
                         f"--difficulty D (e.g. --difficulty 3.0)")
    if samples < 1:
        raise ScoreError(f"--samples must be at least 1, got {samples}")
    gi = _group_index(scorer, group)
    path = Path(path)
    sf = sample_frames(Sample(id=path.name, dataset="user", source=path, final_score=math.nan), scorer.config.frames)
    k = len(layout_of(scorer.config).starts)
    feats, video = featurize(sf.frames, scorer.i3d, scorer.config, None, batch_size=k)
    gen = torch.Generator().manual_seed(int(seed))
    dev = scorer.model.scale_lo.device
    panels, u = scorer.model.predict_judges(torch.from_numpy(feats)[None].to(dev), torch.from_numpy(video)[None].to(dev),
                                            t, samples, gi.to(dev), generator=gen)
    panels = panels[0].cpu().numpy().astype(np.float64)  # (S, T)
    finals = apply_rule(r, panels, difficulty if r in DIFFICULTY_RULES else None)
    lo, hi = final_interval(finals, INTERVAL)
    return {
        "path": str(path), "status": "ok", "error": "", "rule": r, "judges": t, "samples": samples,
        "difficulty": difficulty, "group": group, "judge_scores": panels[0].tolist(), "panels": panels.tolist(),
        "final_score": float(finals.mean()), "final_scores": finals.tolist(),
        "final_std": float(finals.std()), "uncertainty": float(u[0]),
        "interval_level": INTERVAL, "final_lo": lo, "final_hi": hi,
        "calibrated": bool(scorer.model.calib.abs().sum() > 0),
        "n_source_frames": int(sf.n_source_frames), "short": bool(sf.short),
        "backbone": "finetuned" if scorer.finetuned else "kinetics-i3d", "run": str(scorer.run_dir),
    }


#: Central interval of the sampled final scores that ``score`` reports, and the fewest draws for one.
INTERVAL = 0.8
INTERVAL_MIN_DRAWS = 10


def final_interval(finals: np.ndarray, level: float = INTERVAL) -> tuple[float | None, float | None]:
    """Central ``level`` interval of S sampled final scores (type-6 quantiles, as
    :func:`udaqa_pipeline.metrics.interval_coverage`); (None, None) below ``INTERVAL_MIN_DRAWS`` draws, too few for one."""
    finals = np.asarray(finals, float)
    if finals.size < INTERVAL_MIN_DRAWS:
        return None, None
    lo, hi = np.quantile(finals, [(1 - level) / 2, (1 + level) / 2], method="weibull")
    return float(lo), float(hi)


def list_inputs(path: str | Path) -> tuple[bool, list[Path]]:
    """(is a batch, inputs): a video file or frame folder is one input; a folder without images
    directly inside is a batch of its video files and frame-folder subfolders (sorted by name)."""
    from ..video.decode import IMAGE_EXTENSIONS

    p = Path(path)
    if not p.exists():
        raise ScoreError(f"{p}: no such video file or folder")
    if not p.is_dir():
        return False, [p]
    entries = sorted(p.iterdir(), key=lambda e: e.name)
    if any(e.is_file() and e.suffix.lower() in IMAGE_EXTENSIONS for e in entries):
        return False, [p]
    items = [e for e in entries if not e.name.startswith(".") and
             ((e.is_file() and e.suffix.lower() in VIDEO_EXTENSIONS) or
              (e.is_dir() and any(f.suffix.lower() in IMAGE_EXTENSIONS for f in e.iterdir() if f.is_file())))]
    if not items:
        raise ScoreError(f"{p} holds no images, videos ({'/'.join(sorted(VIDEO_EXTENSIONS))}) or frame folders")
    return True, items


def display_text(text: str) -> str:
    """``text`` unchanged when it is valid UTF-8, else with each undecodable byte (a surrogate escape
    of an OS name) written ``\\xNN``, so Parquet and a UTF-8 terminal can hold it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no OS name made
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _display_row(row: dict) -> dict:
    return {k: display_text(v) if isinstance(v, str) else v for k, v in row.items()}


ROW_FIELDS = ("path", "status", "error", "rule", "judges", "samples", "difficulty", "group", "judge_scores", "panels",
              "final_score", "final_scores", "final_std", "interval_level", "final_lo", "final_hi", "calibrated",
              "uncertainty", "n_source_frames", "short", "backbone", "run")


def write_rows(rows: list[dict], out: str | Path) -> Path:
    """Write score rows (one per video) as a Parquet table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("status", pa.string()), ("error", pa.string()),
                        ("rule", pa.string()), ("judges", pa.int64()), ("samples", pa.int64()),
                        ("difficulty", pa.float64()), ("group", pa.string()),
                        ("judge_scores", pa.list_(pa.float64())), ("panels", pa.list_(pa.list_(pa.float64()))),
                        ("final_score", pa.float64()), ("final_scores", pa.list_(pa.float64())),
                        ("final_std", pa.float64()), ("interval_level", pa.float64()), ("final_lo", pa.float64()),
                        ("final_hi", pa.float64()), ("calibrated", pa.bool_()), ("uncertainty", pa.float64()),
                        ("n_source_frames", pa.int64()), ("short", pa.bool_()), ("backbone", pa.string()),
                        ("run", pa.string())])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [_display_row(r) for r in rows]
    pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in ROW_FIELDS}, schema=schema), out)
    return out


def score(path: str | Path, run_dir: str | Path, *, judges: int | None = None, difficulty: float | None = None,
          samples: int = 50, group: str | None = None, rule: str | None = None, seed: int = 0,
          device: str | None = None, out: str | Path | None = None,
          expect_stage: str | None = None) -> dict:
    """Score ``path`` with the run in ``run_dir``.

    Returns ``{"batch": False, "rows": [row]}`` for one video or frame folder, ``{"batch": True,
    "rows": [...], "out": parquet path}`` for a folder of videos (``out`` default
    ``./scores.parquet``); with ``out`` a single video's row is written too. Argument errors
    (missing difficulty, wrong T, bad checkpoint, a run of another ``dataset`` than asked) raise
    before any decoding; in a batch a video that cannot be read is reported in its row.
    """
    from ..features import failure_status
    from ..datasets.rules import DIFFICULTY_RULES

    batch, inputs = list_inputs(path)
    scorer = _cached_scorer(run_dir, device=device, dataset=expect_stage)
    r, t = resolve_rule(scorer, judges, rule)
    if r in DIFFICULTY_RULES and difficulty is None:
        raise ScoreError(f"the run's rule {r!r} multiplies the judges by the degree of difficulty: pass "
                         f"--difficulty D (e.g. --difficulty 3.0)")
    _group_index(scorer, group)
    rows = []
    for p in inputs:
        try:
            rows.append(score_video(scorer, p, judges=t, difficulty=difficulty, samples=samples, group=group,
                                    rule=r, seed=seed))
        except Exception as e:  # noqa: BLE001 - one bad video never kills a batch
            if not batch:
                raise
            rows.append({"path": str(p), "status": failure_status(e), "error": f"{type(e).__name__}: {e}",
                         "rule": r, "judges": t, "samples": samples, "difficulty": difficulty, "group": group,
                         "run": str(scorer.run_dir), "backbone": "finetuned" if scorer.finetuned else "kinetics-i3d"})
        shown = display_text(str(p))
        if shown != str(p):
            log.warning(f"{shown}: the file name is not valid UTF-8; its row names it with \\xNN escapes for the "
                        f"odd bytes (rename the file to keep its name exact)")
    rows = [_display_row(r) for r in rows]
    res: dict[str, Any] = {"batch": batch, "rows": rows}
    if batch or out is not None:
        res["out"] = str(write_rows(rows, out if out is not None else Path(os.getcwd()) / "scores.parquet"))
    return res


def format_row(row: dict) -> str:
    """Human-readable lines for one scored video."""
    if row["status"] != "ok":
        return f"{row['path']}: {row['status']}: {row['error']}"
    d = f", difficulty {row['difficulty']:g}" if row.get("difficulty") is not None else ""
    s = row["samples"]
    lines = [f"{row['path']}",
             f"  judges (T={row['judges']}, draw 1 of {s}): " + " ".join(f"{j:.2f}" for j in row["judge_scores"]),
             f"  final score ({row['rule']}{d}): {row['final_score']:.2f}"
             + (f", {round(100 * row['interval_level'])}% interval {row['final_lo']:.2f}-{row['final_hi']:.2f}"
                f" ({'calibrated' if row.get('calibrated') else 'paper sampler, not calibrated'}, {s} draws)"
                if row.get("final_lo") is not None else
                (f" +- {row['final_std']:.2f} over {s} draws" if s > 1 else "")
                + f" (an interval needs --samples >= {INTERVAL_MIN_DRAWS})"),
             f"  uncertainty (predicted log-uncertainty u): {row['uncertainty']:.3f}"]
    if row.get("short"):
        lines.append(f"  note: the video has {row['n_source_frames']} frames, fewer than the window: padded with its "
                     f"last frame (frames.short_policy)")
    return "\n".join(lines)
