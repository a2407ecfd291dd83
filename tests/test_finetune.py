"""Fine-tuning I3D end to end: the in-backward Adam, augmentation, the frame source, the
stage-two loop on frames, refusals. Real Kinetics weights at the smallest input I3D accepts
(9 frames, 193 px, one clip per video) so each test stays a few seconds on CPU."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from test_score import TINY, make_synth
from udaqa_pipeline.datasets.rules import apply_rule
from udaqa_pipeline.engine.finetune import (
    Backbone,
    FinetuneError,
    adam_update,
    augmentation,
    estimate_epoch_seconds,
)
from udaqa_pipeline.runs.checkpoint import CheckpointError

FT_TRAIN = ("train.epochs=1", "train.batch_size=2", "train.val_fraction=0.34", "train.eval_samples=2",
            "train.lr=1e-3")


@pytest.fixture(scope="module")
def i3d_state():
    from udaqa_pipeline.backbone.weights import load_i3d

    return copy.deepcopy(load_i3d().state_dict())


def _i3d(state):
    from udaqa_pipeline.backbone.i3d import I3D

    m = I3D()
    m.load_state_dict(state)
    return m


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("ft") / "data")


def test_adam_update_matches_torch_adam():
    torch.manual_seed(0)
    p = torch.randn(5, 3)
    q = p.clone().requires_grad_(True)
    opt = torch.optim.Adam([q], lr=1e-2, weight_decay=1e-3)
    m, v, step = torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), dtype=torch.float64)
    for _ in range(4):
        g = torch.randn(5, 3)
        q.grad = g.clone()
        opt.step()
        adam_update(p, g, m, v, step, lr=1e-2, weight_decay=1e-3)
    assert int(step) == 4
    assert torch.allclose(p, q.detach(), atol=1e-7, rtol=1e-6)


def test_augmentation_and_estimate_are_pure():
    a, b = augmentation(7, 3, True), augmentation(7, 3, True)
    assert a[:2] == b[:2] and -3 <= a[0] <= 3
    assert {augmentation(s, 3, True)[1] for s in range(20)} == {False, True}
    assert augmentation(5, 0, False)[:2] == (0, False)
    # 10 fit videos at batch 4 = 2.5 steps' worth; selection 2 + curriculum pass 10 = 12 inference videos
    e = estimate_epoch_seconds(2.0, 0.5, 0.1, n_fit=10, n_select=2, batch_size=4, workers=0, curriculum=True)
    assert e == pytest.approx(2.5 * 2.0 + 12 * 0.5 + 0.1 * 22)
    e = estimate_epoch_seconds(2.0, 0.5, 0.1, n_fit=10, n_select=2, batch_size=4, workers=4, curriculum=False)
    assert e == pytest.approx(2.5 * 2.0 + 2 * 0.5)  # decoding hidden behind compute


def test_step_updates_backbone_and_frozen_does_not(i3d_state):
    x = torch.rand(1, 3, 9, 193, 193, generator=torch.Generator().manual_seed(0)) * 2 - 1
    conv = "Mixed_4c.b1b.conv3d.weight"
    bias = "Mixed_4c.b1b.bn.bias"
    mean = "Mixed_4c.b1b.bn.running_mean"

    def step(**kw):
        bb = Backbone(_i3d(i3d_state), lr=1e-3, weight_decay=1e-5, **kw).train()
        f = bb.features(x)
        # the loop's heads optimizer also holds the backbone parameters: it must not step them
        heads_opt = torch.optim.Adam(list(bb.parameters()), lr=1.0)
        if f.requires_grad:
            f.square().mean().backward()
        heads_opt.step()
        return bb, {k: v.detach().clone() for k, v in bb.i3d.state_dict().items()}

    bb, a = step(checkpointing=True)
    assert not torch.equal(a[conv], i3d_state[conv]) and not torch.equal(a[bias], i3d_state[bias])
    # an Adam step of lr 1e-3 moves every weight by about lr at most (never by the heads' lr 1.0)
    assert (a[conv] - i3d_state[conv]).abs().max() < 2e-3
    assert not torch.equal(a[mean], i3d_state[mean])  # batch statistics were used and tracked
    assert all(p.grad is None for p in bb.i3d.parameters())
    assert float(getattr(bb, "adam_step__Mixed_4c__b1b__conv3d__weight")) == 1.0
    assert torch.equal(a["logits.conv3d.weight"], i3d_state["logits.conv3d.weight"])  # not on the feature path
    # frozen backbone: nothing changes, no gradient reaches it
    bb, d = step(freeze=True)
    assert all(torch.equal(d[k], i3d_state[k]) for k in i3d_state)
    assert not any(p.requires_grad for p in bb.i3d.parameters())


def test_frame_source_augments_training_steps_only(synth, tmp_path, i3d_state):
    from udaqa_pipeline.features import featurize
    from udaqa_pipeline.engine.finetune import prepare

    ov = TINY + FT_TRAIN + ("finetune.freeze_backbone=true",)  # frozen: no backward needed here
    run, cfg, data, src = prepare("mtl", synth, run_dir=tmp_path / "run", overrides=ov, i3d=_i3d(i3d_state),
                                  device="cpu", jobs=0)
    assert cfg.finetune.lr_scale == 0.1
    assert src.module.lr == pytest.approx(1e-4)  # 0.1 x the heads' lr
    rows = np.array([1])
    torch.manual_seed(0)
    f1, v1 = src.batch(rows, np.zeros(1, int))
    f2, v2 = src.batch(rows, np.zeros(1, int))
    assert f1.shape == (1, 1, 1024) and v1.shape == (1, 9, 3, 8, 8) and v1.dtype == torch.uint8
    assert not torch.equal(f1, f2)  # a fresh augmentation per step
    with torch.no_grad():
        e1, w1 = src.batch(rows, np.zeros(1, int))
        e2, _ = src.batch(rows, np.zeros(1, int))
    assert torch.equal(e1, e2)
    # evaluation features are stage one's centre view through the same weights
    from udaqa_pipeline.datasets.frames import sample_frames

    ref_model = _i3d(i3d_state).eval()
    feats, video = featurize(sample_frames(data.sample_list[1], cfg.frames).frames, ref_model, cfg, None, batch_size=1)
    assert np.abs(e1[0].numpy() - feats).max() < 1e-4 * max(1.0, float(np.abs(feats).max()))
    assert np.array_equal(w1[0].numpy(), video)


def test_finetune_run_scores_and_refuses_mismatches(synth, tmp_path, i3d_state):
    from udaqa_pipeline.engine.finetune import finetune
    from udaqa_pipeline.evaluation.finetuned import evaluate_finetuned
    from udaqa_pipeline.inference.score import score
    from udaqa_pipeline.runs.checkpoint import load_checkpoint

    ov = TINY + FT_TRAIN + ("finetune.freeze_backbone=true", "train.use_curriculum=false")
    run = finetune("mtl", synth, run_dir=tmp_path / "run", overrides=ov, force=True, progress=False, jobs=1,
                   device="cpu", i3d=_i3d(i3d_state))
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["cache_hash"].startswith("ft-") and ck["dataset"] == "mtl"
    assert ck["config"]["finetune"]["freeze_backbone"] is True
    assert torch.equal(ck["source"]["i3d.Mixed_5c.b0.conv3d.weight"], i3d_state["Mixed_5c.b0.conv3d.weight"])
    assert ck["scaling"]["lo"] == [0.0] and ck["scaling"]["hi"] == [10.0]
    # scoring uses the run's own backbone
    row = score(synth / "frames" / "01_01", run, difficulty=2.0, samples=2)["rows"][0]
    assert row["backbone"] == "finetuned" and np.asarray(row["panels"]).shape == (2, 7)
    assert row["final_score"] == pytest.approx(float(apply_rule("mtl_middle3", row["panels"], 2.0).mean()))
    # stage two's evaluate would use frozen cached features: it refuses; evaluate_finetuned works
    from udaqa_pipeline.evaluation.evaluate import evaluate

    with pytest.raises(Exception, match="cache"):
        evaluate(run, cache_root=tmp_path / "nocache")
    m = evaluate_finetuned(run, synth, samples=2, make_plots=False)
    assert m["overall"]["n"] == 2 and math.isfinite(m["overall"]["rl2x100"])
    # resuming with other settings, or on other samples, is refused with the reason
    with pytest.raises(CheckpointError, match="finetune.lr_scale"):
        finetune("mtl", synth, run_dir=run, overrides=ov + ("finetune.lr_scale=0.5",), force=True,
                 progress=False, device="cpu", i3d=_i3d(i3d_state))
    with pytest.raises(CheckpointError, match="cache"):
        finetune("mtl", synth, run_dir=run, overrides=ov, force=True, progress=False, device="cpu", limit=7,
                 i3d=_i3d(i3d_state))


def test_refuses_when_an_epoch_would_take_too_long(synth, tmp_path):
    """Through the CLI: the estimate is printed and the run refused (no checkpoint written)."""
    from click.testing import CliRunner

    from udaqa_pipeline.cli import main

    args = ["finetune", "mtl", "--root", str(synth), "--run", str(tmp_path / "run"), "--device", "cpu",
            "--max-epoch-minutes", "1e-6", "--no-progress"]
    # a frozen backbone keeps the timing step cheap here; the estimate is computed the same way
    for o in TINY + FT_TRAIN + ("finetune.freeze_backbone=true",):
        args += ["--set", o]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    assert "s per step of 2 videos" in r.output and "min per epoch" in r.output and "--force" in r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_checkpointing_and_frozen_bn(i3d_state):
    """Activation checkpointing: the same step, and BatchNorm statistics updated once, not twice;
    ``freeze_bn`` keeps the running statistics while the offsets learn."""
    x = torch.rand(1, 3, 9, 193, 193, generator=torch.Generator().manual_seed(0)) * 2 - 1
    out = []
    for ck in (True, False):
        bb = Backbone(_i3d(i3d_state), lr=1e-3, checkpointing=ck).train()
        bb.features(x).square().mean().backward()
        out.append(bb.i3d.state_dict())
    for k in out[0]:
        assert torch.allclose(out[0][k], out[1][k], atol=1e-6, rtol=1e-5), k
    # frozen BatchNorm statistics: offsets still learn, running statistics stay
    bb = Backbone(_i3d(i3d_state), lr=1e-3, freeze_bn=True).train()
    bb.features(x).square().mean().backward()
    c = bb.i3d.state_dict()
    mean, bias = "Mixed_4c.b1b.bn.running_mean", "Mixed_4c.b1b.bn.bias"
    assert torch.equal(c[mean], i3d_state[mean]) and not torch.equal(c[bias], i3d_state[bias])


@pytest.mark.slow
def test_unfrozen_resume_equals_uninterrupted(synth, tmp_path, i3d_state):
    from udaqa_pipeline.engine.finetune import finetune
    from udaqa_pipeline.runs.checkpoint import load_checkpoint

    ov = TINY + FT_TRAIN + ("train.epochs=2",)
    kw = dict(force=True, progress=False, device="cpu", jobs=0)
    a = finetune("mtl", synth, run_dir=tmp_path / "a", overrides=ov, i3d=_i3d(i3d_state), **kw)
    finetune("mtl", synth, run_dir=tmp_path / "b", overrides=ov, i3d=_i3d(i3d_state), stop_after=1, **kw)
    b = finetune("mtl", synth, run_dir=tmp_path / "b", overrides=ov, i3d=_i3d(i3d_state), **kw)
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    k = "i3d.Mixed_4c.b1b.conv3d.weight"
    assert not torch.equal(ca["source"][k], i3d_state[k[4:]])
    for part in ("model", "source"):
        assert all(torch.equal(ca[part][n], cb[part][n]) for n in ca[part]), part


def test_feature_standardisation_with_a_trainable_backbone(synth, tmp_path, i3d_state):
    """train.feature_norm with I3D unfrozen (the jigsaws recipe): the statistics are read once from
    the starting backbone without a graph, so two training steps do not backward through them twice."""
    from udaqa_pipeline.engine.finetune import finetune
    from udaqa_pipeline.runs.checkpoint import load_checkpoint

    ov = TINY + FT_TRAIN + ("train.feature_norm=true",)
    run = finetune("mtl", synth, run_dir=tmp_path / "run", overrides=ov, i3d=_i3d(i3d_state), force=True,
                   progress=False, device="cpu", jobs=0)
    ck = load_checkpoint(run / "checkpoint.pt")
    std = ck["model"]["feat_std"]
    assert torch.isfinite(std).all() and (std > 0).all() and not std.requires_grad


def test_per_group_stages_fine_tune_one_group_after_another(synth, tmp_path, i3d_state):
    """train.per_group with I3D unfrozen: one model and one backbone per group, each from the starting
    weights (group B trained after A equals B trained alone), in <run>/<group>/."""
    import dataclasses

    from udaqa_pipeline.config import resolve
    from udaqa_pipeline.datasets import load_stage_samples
    from udaqa_pipeline.engine.finetune import finetune
    from udaqa_pipeline.runs.checkpoint import load_checkpoint

    samples, _ = load_stage_samples(resolve("mtl", TINY), "mtl", synth)
    grouped = [dataclasses.replace(s, group="AB"[i % 2]) for i, s in enumerate(samples)]
    ov = TINY + FT_TRAIN + ("train.per_group=true", "train.calibrate=none")
    kw = dict(force=True, progress=False, device="cpu", jobs=0)
    both = finetune("mtl", synth, run_dir=tmp_path / "both", overrides=ov, samples=grouped, i3d=_i3d(i3d_state), **kw)
    alone = finetune("mtl", synth, run_dir=tmp_path / "alone", overrides=ov, samples=[s for s in grouped if s.group == "B"],
                     i3d=_i3d(i3d_state), **kw)
    a, b = (load_checkpoint(both / g / "checkpoint.pt")["source"] for g in "AB")
    b_alone = load_checkpoint(alone / "B" / "checkpoint.pt")["source"]
    k = "i3d.Mixed_4c.b1b.conv3d.weight"
    assert not torch.equal(a[k], b[k]) and not torch.equal(b[k], i3d_state[k[4:]])
    assert all(torch.equal(b[n], b_alone[n]) for n in b)


def test_memory_is_estimated_before_fine_tuning(synth, monkeypatch, i3d_state):
    """The saved-tensor count of the probe step scales with the clips; a step that does not fit turns
    checkpointing on (auto) or is refused naming the batch size that fits."""
    import udaqa_pipeline.engine.finetune as ft
    from udaqa_pipeline.config import resolve

    assert ft.step_memory(100.0, 4, 10, 2) == 100 * 4 + 10 + 6
    cfg = resolve("mtl", TINY + FT_TRAIN)
    bb = Backbone(_i3d(i3d_state), lr=1e-3, checkpointing=False)
    t1 = ft.time_step(bb, cfg, 2, n_videos=1)
    t2 = ft.time_step(bb, cfg, 2, n_videos=2)
    assert t1["saved_bytes_per_video"] > 1e6
    assert t2["saved_bytes_per_video"] == pytest.approx(t1["saved_bytes_per_video"], rel=0.05)
    ck = Backbone(_i3d(i3d_state), lr=1e-3, checkpointing=True)
    assert ft.time_step(ck, cfg, 2, n_videos=1)["saved_bytes_per_video"] < 0.5 * t1["saved_bytes_per_video"]

    class Src:
        module = bb
    need = ft.step_memory(t1["saved_bytes_per_video"], 2, t1["param_bytes"], t1["trained_param_bytes"])
    # free memory for the weights and 1.5 videos without checkpointing: auto turns it on, and it fits
    room = (t1["param_bytes"] + 3 * t1["trained_param_bytes"] + 1.5 * t1["saved_bytes_per_video"]) / 0.8
    monkeypatch.setattr(ft, "memory_available", lambda dev: room)
    got = ft._check_memory(Src, cfg, t1)
    assert bb.checkpointing and got["step_bytes"] < need
    # settings that forbid it: refused, naming what fits
    bb.checkpointing = False
    off = resolve("mtl", TINY + FT_TRAIN + ("finetune.checkpointing=off", "train.batch_size=8"))
    monkeypatch.setattr(ft, "memory_available",
                        lambda dev: (t1["param_bytes"] + 3 * t1["trained_param_bytes"] + 3.5 * t1["saved_bytes_per_video"]) / 0.8)
    with pytest.raises(FinetuneError, match=r"step of 8 videos.*--set train.batch_size=3 fits"):
        ft._check_memory(Src, off, ft.time_step(bb, off, 8, n_videos=1))


def test_inner_folds_fine_tune_their_own_backbone(synth, tmp_path, i3d_state):
    """select=inner_cv with I3D unfrozen: each inner fold trains its own backbone from the starting
    weights, so the kept run starts from them too: its backbone equals that of select=last run for
    the chosen epoch count (an inner fold's training never carries into it)."""
    from udaqa_pipeline.engine.finetune import finetune
    from udaqa_pipeline.runs.checkpoint import load_checkpoint

    ov = TINY + FT_TRAIN + ("train.calibrate=none", "train.use_curriculum=false")
    kw = dict(force=True, progress=False, device="cpu", jobs=0)
    inner = finetune("mtl", synth, run_dir=tmp_path / "inner", i3d=_i3d(i3d_state), **kw,
                     overrides=ov + ("train.select=inner_cv", "train.inner_folds=2"))
    last = finetune("mtl", synth, run_dir=tmp_path / "last", i3d=_i3d(i3d_state), **kw,
                    overrides=ov + ("train.select=last",))
    a, b = (load_checkpoint(r / "checkpoint.pt") for r in (inner, last))
    assert a["inner_cv"]["epochs"] == 1
    k = "i3d.Mixed_4c.b1b.conv3d.weight"
    assert not torch.equal(a["source"][k], i3d_state[k[4:]])
    assert all(torch.equal(a["source"][n], b["source"][n]) for n in b["source"])
