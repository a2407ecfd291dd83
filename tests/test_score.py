"""Scoring a user's video with a trained run: real synth dives, real I3D weights, a real
stage-one cache and a real stage-two run, all at the smallest input I3D accepts (one 9-frame clip
at 193 px) so the module stays a few seconds on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fixtures.videos import encode_video
from udaqa_pipeline.datasets.rules import apply_rule
from udaqa_pipeline.runs.checkpoint import CheckpointError

#: mtl stage at the smallest I3D input: L = 9 frames, one 9-frame clip, 193 px, 8x8 video.
TINY = ("frames.n_frames=9", "clips.n_clips=1", "clips.clip_len=9", "preprocess.resize=193",
        "preprocess.crop=193", "cache.video_size=[8, 8]")
TRAIN = ("train.epochs=2", "train.batch_size=2", "train.val_fraction=0.34", "train.eval_samples=2",
         "train.lr=1e-3")


def make_synth(out: Path) -> Path:
    """8 synthetic dives (7 judges, MTL-AQA layout), 16 frames of 96x72: 6 train / 2 test."""
    from udaqa_pipeline.synth import SynthConfig, generate

    generate(out, SynthConfig(n_dives=8, n_frames=16, width=96, height=72, dives_per_video=4, test_fraction=0.25),
             workers=1)
    return out


def write_mp4(frames_dir: Path, path: Path) -> Path:
    """A video file made from a frame folder (lossless FFV1 in Matroska)."""
    from PIL import Image

    imgs = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(frames_dir.iterdir())])
    return encode_video(path, imgs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data root, cache root, stage-two run dir) for the tiny synthetic set."""
    from udaqa_pipeline.cache.extract import extract_features
    from udaqa_pipeline.config import resolve
    from udaqa_pipeline.engine.run import train

    base = tmp_path_factory.mktemp("score")
    root = make_synth(base / "data")
    cache_root = base / "cache"
    cache = extract_features("mtl", resolve("mtl", TINY), root, cache_root=cache_root, progress=False, threads=1)
    run = train("mtl", cache=cache, run_dir=base / "run", overrides=TINY + TRAIN, progress=False)
    return root, cache_root, run


def test_score_frame_folder_and_video_file(trained, tmp_path):
    from udaqa_pipeline.inference.score import score

    root, cache_root, run = trained
    folder = root / "frames" / "01_01"
    video = write_mp4(folder, tmp_path / "dive.mkv")
    res = score(folder, run, difficulty=3.2, samples=3)
    assert res["batch"] is False and "out" not in res
    row = res["rows"][0]
    assert row["status"] == "ok" and row["rule"] == "mtl_middle3" and row["judges"] == 7
    panels = np.asarray(row["panels"])
    assert panels.shape == (3, 7) and row["judge_scores"] == panels[0].tolist()
    finals = apply_rule("mtl_middle3", panels, 3.2)
    assert np.allclose(row["final_scores"], finals)
    assert row["final_score"] == pytest.approx(float(finals.mean()))
    assert row["final_std"] == pytest.approx(float(finals.std()))
    assert np.isfinite(row["uncertainty"]) and row["backbone"] == "kinetics-i3d"
    assert len(set(map(tuple, panels.tolist()))) == 3  # three independent prior draws
    # a lossless video of the same frames scores identically (same seed)
    row2 = score(video, run, difficulty=3.2, samples=3)["rows"][0]
    assert np.allclose(row2["panels"], row["panels"], atol=1e-5)


def test_score_features_match_the_cache(trained):
    """The scored video goes through stage one's own featurize with the cache's settings (one batch
    of K clips instead of the cache's padded batch: equal to float rounding)."""
    from udaqa_pipeline.cache import open_cache
    from udaqa_pipeline.features import featurize
    from udaqa_pipeline.datasets.base import Sample
    from udaqa_pipeline.datasets.frames import sample_frames
    from udaqa_pipeline.inference.score import load_scorer
    from udaqa_pipeline.inference.run import load_run

    root, cache_root, run = trained
    sc = load_scorer(run)
    cache = open_cache(next(cache_root.glob(f"*-{load_run(run).cache_hash}")))
    frames = sample_frames(Sample(id="x", dataset="user", source=root / "frames" / "01_02", final_score=0.0),
                           sc.config.frames).frames
    feats, video = featurize(frames, sc.i3d, sc.config, None, batch_size=1)
    assert feats.shape == cache.features.shape[2:] and video.shape == cache.video.shape[1:]
    dist = [float(np.abs(cache.features[k, 0] - feats).max()) for k in range(cache.features.shape[0])]
    k = int(np.argmin(dist))
    assert dist[k] < 1e-4 * max(1.0, float(np.abs(feats).max())) and np.array_equal(cache.video[k], video)


def test_score_argument_errors(trained):
    from udaqa_pipeline.inference.score import ScoreError, score

    root, cache_root, run = trained
    folder = root / "frames" / "01_01"
    with pytest.raises(ScoreError, match="--difficulty"):
        score(folder, run)
    with pytest.raises(ScoreError, match="exactly 7"):
        score(folder, run, judges=5, difficulty=2.0)
    with pytest.raises(ScoreError, match="no such"):
        score(root / "nope.mp4", run, difficulty=2.0)
    with pytest.raises(CheckpointError, match="trained on dataset 'mtl', not 'jigsaws'"):
        score(folder, run, difficulty=2.0, expect_stage="jigsaws")
    # a rule that takes any panel size accepts --judges
    row = score(folder, run, judges=4, rule="mean")["rows"][0]
    assert len(row["judge_scores"]) == 4 and row["final_scores"][0] == pytest.approx(np.mean(row["judge_scores"]))
    assert row["samples"] == 50 and row["final_score"] == pytest.approx(np.mean(row["final_scores"]))
    lo, hi = np.quantile(row["final_scores"], [0.1, 0.9], method="weibull")
    assert (row["final_lo"], row["final_hi"]) == pytest.approx((lo, hi)) and row["interval_level"] == 0.8


def test_score_folder_of_videos_survives_a_bad_file(trained, tmp_path):
    from udaqa_pipeline.inference.score import score

    root, cache_root, run = trained
    vids = tmp_path / "videos"
    vids.mkdir()
    write_mp4(root / "frames" / "01_01", vids / "a.mkv")
    write_mp4(root / "frames" / "02_03", vids / "b.mkv")
    (vids / "c.mp4").write_bytes(b"\x00not a video" * 100)
    (vids / "notes.txt").write_text("ignored")
    out = tmp_path / "scores.parquet"
    res = score(vids, run, difficulty=2.5, out=out)
    assert res["batch"] and res["out"] == str(out)
    t = pq.read_table(out).to_pydict()
    assert [Path(p).name for p in t["path"]] == ["a.mkv", "b.mkv", "c.mp4"]
    assert t["status"][:2] == ["ok", "ok"] and t["status"][2] != "ok" and "c.mp4" in t["error"][2]
    assert t["final_score"][2] is None and all(len(j) == 7 for j in t["judge_scores"][:2])


def test_score_folder_with_names_that_are_not_utf8(trained, tmp_path, caplog):
    """Linux names are bytes: a video, a frame folder and an unreadable file whose names are not UTF-8
    are scored (or reported) like any other, each row naming its file with \\xNN escapes; every good
    row is written."""
    import logging
    import os

    from udaqa_pipeline.inference.score import display_text, score, write_rows

    root, cache_root, run = trained
    vids = tmp_path / "videos"
    vids.mkdir()
    raw = os.fsencode(vids)
    write_mp4(root / "frames" / "01_01", vids / "a.mkv")
    write_mp4(root / "frames" / "01_01", Path(os.fsdecode(raw + b"/bad\xff.mkv")))
    shutil.copytree(root / "frames" / "02_03", os.fsdecode(raw + b"/frames\xe9\xfd"))
    Path(os.fsdecode(raw + b"/worse\xfe.mp4")).write_bytes(b"\x00not a video" * 100)
    caplog.set_level(logging.WARNING, logger="udaqa_pipeline")
    res = score(vids, run, difficulty=2.5, out=tmp_path / "scores.parquet")
    t = pq.read_table(res["out"]).to_pydict()
    assert [Path(p).name for p in t["path"]] == ["a.mkv", "bad\\xff.mkv", "frames\\xe9\\xfd", "worse\\xfe.mp4"]
    assert t["status"][:3] == ["ok", "ok", "ok"] and t["status"][3] != "ok" and "worse\\xfe.mp4" in t["error"][3]
    assert t["judge_scores"][1] == t["judge_scores"][0]  # the same frames under an odd name: the same row
    assert res["rows"][1]["path"] == t["path"][1]  # what the command prints is the escaped name too
    warned = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert len(warned) == 3 and all("rename" in w for w in warned)
    # written directly, any text column is made safe the same way; valid UTF-8 is left as it is
    out = write_rows([{"path": "caf\u00e9.mkv", "status": "error", "error": "x: \udcff", "group": "g\udc80"}],
                     tmp_path / "direct.parquet")
    d = pq.read_table(out).to_pydict()
    assert d["path"] == ["caf\u00e9.mkv"] and d["error"] == ["x: \\xff"] and d["group"] == ["g\\x80"]
    assert display_text("x\ud800") == "x\\ud800"


def test_tampered_and_foreign_checkpoints_are_refused(trained, tmp_path):
    from udaqa_pipeline.inference.score import score
    from udaqa_pipeline.runs.checkpoint import CHECKPOINT_FORMAT

    root, cache_root, run = trained
    folder = root / "frames" / "01_01"
    bad = tmp_path / "tampered"
    shutil.copytree(run, bad)
    ck = bad / "checkpoint.pt"
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    ck.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"checkpoint|SHA-256") as e:
        score(folder, bad, difficulty=2.0)
    assert str(ck) in str(e.value)
    # another version of the file format
    other = tmp_path / "version"
    shutil.copytree(run, other)
    outer = torch.load(other / "checkpoint.pt", weights_only=True)
    assert outer["format"] == CHECKPOINT_FORMAT
    outer["version"] = 999
    torch.save(outer, other / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="version 999"):
        score(folder, other, difficulty=2.0)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        score(folder, tmp_path, difficulty=2.0)


def test_cli_score_json(trained):
    from click.testing import CliRunner

    from udaqa_pipeline.cli import main

    root, cache_root, run = trained
    folder = root / "frames" / "01_01"
    r = CliRunner().invoke(main, ["score", str(folder), "--run", str(run), "--difficulty", "3.0", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.output)
    assert len(obj["judge_scores"]) == 7 and len(obj["final_scores"]) == 50
    assert obj["final_scores"][0] == pytest.approx(float(apply_rule("mtl_middle3", obj["judge_scores"], 3.0)))
    assert obj["final_lo"] <= obj["final_score"] <= obj["final_hi"]
    r = CliRunner().invoke(main, ["score", str(folder), "--run", str(run)])
    assert r.exit_code != 0 and "--difficulty" in r.output
    r = CliRunner().invoke(main, ["score", str(folder), "--run", str(run), "--difficulty", "2"])
    assert r.exit_code == 0 and "final score (mtl_middle3, difficulty 2)" in r.output
    assert "80% interval" in r.output


def _rewrite_checkpoint(src_run: Path, dst_run: Path, edit) -> Path:
    """A copy of a run whose checkpoint payload ``edit(ck)`` changed (re-sealed, so it stays valid)."""
    from udaqa_pipeline.runs.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint

    shutil.copytree(src_run, dst_run)
    ck = load_checkpoint(dst_run / CHECKPOINT)
    edit(ck)
    save_checkpoint(dst_run / CHECKPOINT, ck)
    return dst_run


def test_checkpoint_carries_what_scoring_needs(trained, tmp_path):
    """The checkpoint's feature_config / scoring_rules come first (no cache needed); an older
    checkpoint without them still scores through the cache manifest."""
    from udaqa_pipeline.cache.manifest import read_manifest
    from udaqa_pipeline.inference.score import score
    from udaqa_pipeline.inference.run import load_run

    root, cache_root, run = trained
    folder = root / "frames" / "01_01"
    ck = load_run(run).checkpoint
    manifest = read_manifest(next(cache_root.glob(f"*-{ck['cache_hash']}")))
    assert ck["feature_config"] == {k: manifest["config"][k] for k in ("frames", "clips", "preprocess", "cache")}
    assert ck["scoring_rules"] == {"mtl_middle3": 7}
    ref = score(folder, run, difficulty=3.0, samples=2)["rows"][0]

    def stale_config(c):  # the run's own config no longer says what the features were extracted with
        c["config"]["frames"]["n_frames"] = 40
        c["config"]["clips"]["n_clips"] = 3

    new = _rewrite_checkpoint(run, tmp_path / "new", stale_config)
    row = score(folder, new, difficulty=3.0, samples=2)["rows"][0]  # no cache is read: the checkpoint says it all
    assert row["rule"] == "mtl_middle3" and np.allclose(row["panels"], ref["panels"], atol=1e-5)

    def other_rule(c):
        c["scoring_rules"] = {"mean": 5, "mtl_middle3": 7}

    row = score(folder, _rewrite_checkpoint(run, tmp_path / "rule", other_rule), samples=1)["rows"][0]
    assert row["rule"] == "mean" and row["judges"] == 5  # the checkpoint's rule wins over the cache's


def test_library_api_scores_like_the_command(trained):
    """``udaqa_pipeline.load_run(run).score(video)``: the five-line script of the README."""
    import udaqa_pipeline as u
    from udaqa_pipeline.inference.score import score

    root, _, run = trained
    folder = root / "frames" / "01_01"
    got = u.load_run(run).score(folder, difficulty=3.2, samples=12)
    want = score(folder, run, difficulty=3.2, samples=12)["rows"][0]
    assert got["panels"] == want["panels"] and got["final_score"] == want["final_score"]
    assert got["final_lo"] is not None and got["final_lo"] <= got["final_score"] <= got["final_hi"]
    assert np.isfinite(got["uncertainty"])
    assert {"load_stage", "extract_features", "open_cache", "train", "evaluate", "cross_validate",
            "load_run"} <= set(u.__all__)
