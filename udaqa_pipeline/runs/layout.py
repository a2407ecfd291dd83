"""What a run is and where it lives: :class:`RunSpec` and the file names inside a run directory.

No torch here, so naming or finding a run (``udaqa_pipeline.resolve``) stays cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
PROTOCOLS = ("honest", "paper")
#: Run directory names under ``<runs>/<stage>/`` by kind (see :meth:`RunSpec.leaf`).
RUN_KINDS = ("train", "finetune", "ablate", "cv")


def safe_name(name: str) -> str:
    """A group's name as a directory name (``<run>/<group>/``)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "all"


def stage_name(stage: str | Path) -> str:
    """A stage name, or a stage TOML path's stem."""
    p = Path(str(stage))
    return p.stem if p.suffix == ".toml" else str(stage)


@dataclass(frozen=True)
class RunSpec:
    """What one training run is, apart from its config: the ``stage`` (name), the test ``fold``,
    ``cv`` (K of a seeded K-fold split instead of the stage's folds, or None), the ``split``
    ("official", "louo", "dev"), the ``protocol`` ("honest", "paper") and, with
    ``train.per_group``, the ``group`` one model is trained on (None: every group).

    It names the run directory (:meth:`leaf`), is stored in the checkpoint (``"spec"``, beside the
    separate keys older checkpoints carry) and, with the config, is what a resume compares."""

    stage: str
    fold: int = 0
    cv: int | None = None
    split: str = "official"
    protocol: str = "honest"
    group: str | None = None

    def for_group(self, group: str) -> "RunSpec":
        return replace(self, group=group)

    def leaf(self, kind: str = "train") -> str:
        """The run directory's name under ``<runs>/<stage>/``: ``fold<k>`` (``cv<K>-fold<k>`` with
        ``cv``, ``<split>-fold<k>`` for another split), ``finetune-fold<k>``, ``ablate-fold<k>`` or
        ``cv-<split>``. Raises ValueError for an unknown ``kind``."""
        if kind not in RUN_KINDS:
            raise ValueError(f"run kind must be one of {RUN_KINDS}, not {kind!r}")
        folds = f"fold{self.fold}" if self.cv is None else f"cv{self.cv}-fold{self.fold}"
        return {"train": folds if self.split == "official" else f"{self.split}-{folds}",
                "finetune": f"finetune-{folds}", "ablate": f"ablate-fold{self.fold}", "cv": f"cv-{self.split}"}[kind]

    def to_dict(self) -> dict:
        return asdict(self)

    def checkpoint_keys(self) -> dict:
        """The separate keys every checkpoint has carried (older ones carry only these)."""
        return {"protocol": self.protocol, "fold": self.fold, "cv": self.cv, "split_name": self.split,
                "group": self.group}

    @classmethod
    def from_checkpoint(cls, ck: dict) -> "RunSpec":
        """The spec a checkpoint was trained with: its ``"spec"``, else read from the separate keys
        of a checkpoint written before the spec was stored."""
        if ck.get("spec") is not None:
            return cls(**ck["spec"])
        return cls(stage=str(ck.get("stage") or ""), fold=ck.get("fold"), cv=ck.get("cv"),
                   split=ck.get("split_name"), protocol=ck.get("protocol"), group=ck.get("group"))
