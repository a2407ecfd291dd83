"""Kinetics-400 class names in the order of the I3D logits (DeepMind's ``label_map.txt``)."""

from __future__ import annotations

from pathlib import Path

LABELS_FILE = Path(__file__).with_name("kinetics400_labels.txt")


def _read_labels(path: Path = LABELS_FILE) -> list[str]:
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(labels) != 400:
        raise RuntimeError(f"{path} should list 400 Kinetics classes, found {len(labels)}; reinstall the package")
    return labels


KINETICS400: list[str] = _read_labels()
