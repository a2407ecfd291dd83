"""The one record every dataset adapter produces, whatever its annotation format."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: ``Sample.fold`` value of a sample that is never in a test fold (the train split of a
#: single-split dataset).
TRAIN_ONLY = -1


@dataclass(frozen=True)
class Sample:
    """One scored performance.

    ``source`` is a video file or a folder of frame images. For a dive inside an untrimmed frame
    folder, ``frame_start``/``frame_end`` (0-based, end exclusive, in sorted-frame order; in a folder
    whose names carry frame numbers, counted from its first number, so a missing file is a gap and
    not a shift) select its frames; ``None`` means the whole source.

    ``judge_scores`` are the raw panel (may hold one value when a dataset has a single label);
    ``rule`` names the pure scoring function in :mod:`udaqa_pipeline.datasets.rules` that maps the
    panel (and ``difficulty``) to ``final_score``.

    ``fold`` is the test fold that holds this sample, or ``TRAIN_ONLY``. ``group`` is the unit that
    gets its own model and its own metrics row (JIGSAWS task, AQA-7 action); ``action`` is the
    finer action label (dive number, class name).
    """

    id: str
    dataset: str
    source: Path
    final_score: float
    judge_scores: tuple[float, ...] = ()
    difficulty: float | None = None
    rule: str = "identity"
    action: str = ""
    group: str = ""
    fold: int = TRAIN_ONLY
    frame_start: int | None = None
    frame_end: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)
