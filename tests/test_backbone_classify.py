"""`udaqa-pipeline classify` and `weights` commands end to end on generated inputs (random weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from udaqa_pipeline.backbone.i3d import I3D
from udaqa_pipeline.backbone.labels import KINETICS400
from udaqa_pipeline.backbone.weights import save_weights, weights_path
from udaqa_pipeline.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cache")
    torch.manual_seed(0)
    save_weights(I3D().state_dict(), weights_path(root))
    return root


def _frame_folder(path: Path, n: int, h: int = 180, w: int = 240) -> Path:
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path / f"img_{i}.png")
    return path


def test_classify_json_schema(cache: Path, tmp_path: Path) -> None:
    folder = _frame_folder(tmp_path / "clip", 12)
    res = CliRunner().invoke(main, ["classify", str(folder), "--frames", "10", "--top", "3", "--json", "--cache-root", str(cache)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) == {"frames", "logits", "top"}
    assert out["frames"] == 10 and len(out["logits"]) == 400
    logits = np.array(out["logits"])
    assert [t["label"] for t in out["top"]] == [KINETICS400[i] for i in np.argsort(-logits)[:3]]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    for row in out["top"]:
        i = KINETICS400.index(row["label"])
        assert row["logit"] == logits[i] and math.isclose(row["prob"], probs[i], rel_tol=1e-9)
    text = CliRunner().invoke(main, ["classify", str(folder), "--top", "2", "--cache-root", str(cache)])
    assert text.exit_code == 0 and "12 frames" in text.output and out["top"][0]["label"] in text.output


def test_classify_errors_are_one_line(cache: Path, tmp_path: Path) -> None:
    short = _frame_folder(tmp_path / "short", 8)
    res = CliRunner().invoke(main, ["classify", str(short), "--cache-root", str(cache)])
    assert res.exit_code == 1 and "at least 9" in res.output and "Traceback" not in res.output
    ok = _frame_folder(tmp_path / "ok", 9, 64, 64)
    res = CliRunner().invoke(main, ["classify", str(ok), "--cache-root", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "udaqa-pipeline weights fetch" in res.output
    res = CliRunner().invoke(main, ["classify", str(tmp_path / "nope.mp4"), "--cache-root", str(cache)])
    assert res.exit_code == 1 and "nope.mp4" in res.output


def test_weights_commands(cache: Path, tmp_path: Path) -> None:
    src = tmp_path / "rgb_imagenet.pt"
    sd = {k: v for k, v in torch.load(weights_path(cache), weights_only=True).items()}
    torch.save(sd, src)
    dest = tmp_path / "c2"
    res = CliRunner().invoke(main, ["weights", "fetch", "--from", str(src), "--cache-root", str(dest)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["weights", "verify", "--cache-root", str(dest)])
    assert res.exit_code == 0 and res.output.startswith("ok")
    weights_path(dest).write_bytes(b"garbage")
    res = CliRunner().invoke(main, ["weights", "verify", "--cache-root", str(dest)])
    assert res.exit_code == 1 and "damaged" in res.output
