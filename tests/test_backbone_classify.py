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

from fixtures.videos import encode_video, stored_for_display
from udaqa_pipeline.backbone import classify as classify_mod
from udaqa_pipeline.backbone.classify import READ_CHUNK, WINDOW, classify_frames, classify_video
from udaqa_pipeline.backbone.i3d import I3D, MIN_FRAMES
from udaqa_pipeline.backbone.labels import KINETICS400
from udaqa_pipeline.backbone.weights import load_i3d, save_weights, weights_path
from udaqa_pipeline.cli import main
from udaqa_pipeline.video import decode
from udaqa_pipeline.video.decode import VideoError, iter_frames, read_frames


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
    assert set(out) == {"frames", "windows", "logits", "top"}
    assert out["frames"] == 10 and out["windows"] == 1 and len(out["logits"]) == 400
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


def _moving_video(path: Path, n: int, h: int = 36, w: int = 48) -> Path:
    """A lossless video whose content changes every frame, so windows see different logits."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.stack([
        np.stack([(xx * 5 + 7 * t) % 256, (yy * 7 + 3 * t) % 256, ((xx + yy) * 3 + 11 * t) % 256], -1)
        for t in range(n)
    ]).astype(np.uint8)
    return encode_video(path, frames)


@pytest.fixture(scope="module")
def real_model() -> I3D:
    """The real Kinetics-400 weights: with random ones every window gets nearly the same logits (they
    differ in the 7th digit), so a wrong window weighting would pass unnoticed."""
    if not weights_path().is_file():
        pytest.skip(f"I3D weights not fetched ({weights_path()} missing): run `make weights`")
    return load_i3d().prepare_for_inference()


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """Records what the reader hands out and what each I3D pass receives, in order."""
    log: dict[str, list] = {"chunks": [], "passes": [], "read_before_pass": []}
    real_iter, real_forward = decode.iter_frames, I3D.forward_logits

    def iter_spy(*args, **kwargs):
        for part in real_iter(*args, **kwargs):
            log["chunks"].append(part.shape[0])
            yield part

    def forward_spy(self, x):
        log["passes"].append(x.shape[2])
        log["read_before_pass"].append(sum(log["chunks"]))
        return real_forward(self, x)

    monkeypatch.setattr(decode, "iter_frames", iter_spy)
    monkeypatch.setattr(I3D, "forward_logits", forward_spy)
    return log


def test_iter_frames_chunks_concatenate_to_read_frames(tmp_path: Path) -> None:
    video = _moving_video(tmp_path / "v.mkv", 37)
    folder = _frame_folder(tmp_path / "f", 21, 20, 24)
    for src, n in ((video, 37), (folder, 21)):
        for chunk, stop in ((8, None), (16, 19), (64, None), (5, 0)):
            parts = list(iter_frames(src, chunk=chunk, stop=stop))
            want = read_frames(src, stop=stop)
            m = n if stop is None else min(n, stop)
            assert [p.shape[0] for p in parts] == [chunk] * (m // chunk) + ([m % chunk] if m % chunk else [])
            if m:
                np.testing.assert_array_equal(np.concatenate(parts), want)
    # A phone video stored on its side streams upright, as read_frames gives it.
    upright = read_frames(video)
    for rotation in (90, -90):
        turned = encode_video(tmp_path / f"r{rotation}.mkv", stored_for_display(upright, rotation), rotation=rotation)
        np.testing.assert_array_equal(np.concatenate(list(iter_frames(turned, chunk=16))), upright)
    # A frame of another size in a later chunk is refused naming that frame, not a numpy error.
    Image.fromarray(np.zeros((30, 24, 3), np.uint8)).save(folder / "img_17.png")
    with pytest.raises(VideoError, match="img_17.png.*the frame size changes") as err:
        list(iter_frames(folder, chunk=16))
    assert err.value.kind == "unsupported"


def test_streamed_clip_within_one_window_equals_one_pass(real_model: I3D, tmp_path: Path, spy: dict) -> None:
    # 40 frames decode as 16 + 16 + 8 and still make a single pass: the whole-clip result, unchanged.
    video = _moving_video(tmp_path / "short.mkv", 40)
    whole = classify_frames(real_model, read_frames(video), top=400)
    spy["passes"].clear()
    streamed = classify_video(video, top=400)
    assert spy["chunks"] == [16, 16, 8] and spy["passes"] == [40]
    assert streamed["frames"] == 40 and streamed["windows"] == 1
    np.testing.assert_allclose(streamed["logits"], whole["logits"], rtol=0, atol=1e-5)
    assert [t["label"] for t in streamed["top"][:5]] == [t["label"] for t in whole["top"][:5]]


def test_streamed_windows_are_weighted_by_logit_positions(real_model: I3D, tmp_path: Path, spy: dict) -> None:
    # window 16 over 50 frames: passes of 16, 16 and 18 (the 2-frame tail joins the last window).
    video = _moving_video(tmp_path / "long.mkv", 50)
    streamed = classify_video(video, window=16)
    assert spy["passes"] == [16, 16, 18] and streamed["windows"] == 3
    model = real_model
    frames = read_frames(video)
    parts = [frames[:16], frames[16:32], frames[32:]]
    # I3D averages its logits over ceil(T / 8) - 1 temporal positions (3 stride-2 stages, a VALID pool of 2).
    weights = np.array([math.ceil(len(p) / 8) - 1 for p in parts], dtype=float)
    assert weights.tolist() == [1, 1, 2]
    per_window = np.array([classify_frames(model, p)["logits"] for p in parts])
    expected = (weights[:, None] * per_window).sum(0) / weights.sum()
    np.testing.assert_allclose(streamed["logits"], expected, rtol=0, atol=1e-5)
    assert np.abs(expected - per_window.mean(0)).max() > 1e-3  # the weighting matters on this clip


class _CheapI3D(torch.nn.Module):
    """Stands in for I3D where only the window mechanics are under test (a real pass per window would
    cost minutes on a long clip); checks its input the way I3D does."""

    def prepare_for_inference(self) -> "_CheapI3D":
        return self

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[0] == 1 and x.shape[1] == 3 and x.shape[2] >= MIN_FRAMES and x.shape[3:] == (224, 224)
        return torch.full((1, len(KINETICS400)), float(x.shape[2]))


def test_long_clip_holds_a_bounded_number_of_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n = 500
    video = _moving_video(tmp_path / "long.mkv", n, 12, 16)
    passes: list[int] = []
    chunks: list[int] = []
    read_before_pass: list[int] = []
    real_iter = decode.iter_frames

    def iter_spy(*args, **kwargs):
        for part in real_iter(*args, **kwargs):
            chunks.append(part.shape[0])
            yield part

    class Recording(_CheapI3D):
        def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
            passes.append(x.shape[2])
            read_before_pass.append(sum(chunks))
            return super().forward_logits(x)

    monkeypatch.setattr(decode, "iter_frames", iter_spy)
    monkeypatch.setattr(classify_mod, "load_i3d", lambda cache_root=None: Recording())
    out = classify_video(video, top=1)
    assert out["frames"] == n and sum(chunks) == n and sum(passes) == n
    assert max(chunks) == READ_CHUNK  # full-resolution frames held at once
    assert passes[:-1] == [WINDOW] * (len(passes) - 1) and out["windows"] == len(passes)
    assert MIN_FRAMES <= passes[-1] <= WINDOW + MIN_FRAMES - 1
    # Reading never runs ahead of the passes by more than one window plus a chunk: frames read but not
    # yet through I3D are all the classifier holds, and that stays bounded over 500 frames.
    done = np.cumsum([0] + passes[:-1])
    assert max(np.array(read_before_pass) - done) <= WINDOW + MIN_FRAMES - 1 + READ_CHUNK
    # Each pass's logits equal its length here, so the result is the position-weighted mean length.
    w = np.array([math.ceil(p / 8) - 1 for p in passes], dtype=float)
    assert out["logits"][0] == pytest.approx((w * passes).sum() / w.sum(), rel=1e-12)
    assert out["logits"][0] != pytest.approx(np.mean(passes), rel=1e-6)  # a plain mean would differ


def test_classify_window_option(cache: Path, tmp_path: Path) -> None:
    help_text = " ".join(CliRunner().invoke(main, ["classify", "--help"]).output.split())  # unwrap
    assert "--window" in help_text and f"[default: {WINDOW}]" in help_text and "bounded" in help_text
    folder = _frame_folder(tmp_path / "clip", 12)
    res = CliRunner().invoke(main, ["classify", str(folder), "--window", "5", "--cache-root", str(cache)])
    assert res.exit_code == 1 and "--window 5" in res.output and "at least 9" in res.output
