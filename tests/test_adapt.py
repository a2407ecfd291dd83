"""The cut store and training the top of I3D from it: the stored cut reproduces the cached features,
a cut is added to an existing cache without touching its features, it is resumed and verified;
the top trained from the cut is the top trained end to end with the bottom frozen (outputs and
gradients); a ``train.adapt = "top"`` run trains, evaluates and scores with its own top.

Real Kinetics weights at the smallest input I3D accepts (9 frames, 193 px, one clip per video)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from test_score import TINY, TRAIN, make_synth
from udaqa_pipeline.cache import open_cache
from udaqa_pipeline.cache.cut import below, decode, read_cut, staging_dir, write_staged_cut
from udaqa_pipeline.cache.extract import extract_features
from udaqa_pipeline.config import resolve

CUT = ("cache.cut=Mixed_5b", "cache.cut_dtype=fp32", "cache.views=2")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("adapt") / "data")


def _extract(synth, cache_root, extra=(), stats=None):
    cfg = resolve("mtl", TINY + tuple(extra))
    return extract_features("mtl", cfg, synth, cache_root=cache_root, progress=False, stats=stats)


@pytest.fixture(scope="module")
def cut_cache(synth, tmp_path_factory):
    return _extract(synth, tmp_path_factory.mktemp("cutcache"), CUT)


def test_unit_pieces():
    assert below("Mixed_5b") == "MaxPool3d_5a_2x2" and below("Mixed_4f") == "Mixed_4e"
    a = np.asarray([[1.0, -2.5, 3.14159, 1e-3]], np.float32)
    from udaqa_pipeline.cache.cut import encode

    assert encode(a, "fp32").dtype == np.float32 and np.array_equal(decode(encode(a, "fp32"), "fp32").numpy(), a)
    bits = encode(a, "bf16")
    assert bits.dtype == np.uint16
    back = decode(bits, "bf16").numpy()
    assert np.allclose(back, a, rtol=2 ** -8) and back[0, 0] == 1.0 and back[0, 1] == -2.5  # exact where bf16 is


def test_frozen_top_on_the_stored_cut_reproduces_the_cached_features(synth, cut_cache, tmp_path):
    from udaqa_pipeline.backbone.weights import load_i3d
    from udaqa_pipeline.features import features_from

    c = open_cache(cut_cache)
    stored, have, dtype = read_cut(c, "Mixed_5b")
    assert have.all() and stored.shape == (len(c), 2, 1, 832, 2, 7, 7) and dtype == "fp32"
    m = load_i3d().prepare_for_inference()
    x = decode(stored, dtype).reshape(-1, 832, 2, 7, 7)
    f = features_from(m, x, below("Mixed_5b"), 16)
    assert f.tobytes() == c.features.reshape(-1, 1024).tobytes()  # fp32 cut: bit for bit
    # the cut does not change the cache: same directory, same features as a cache made without it
    plain = _extract(synth, tmp_path / "plain", CUT[2:])
    assert plain.name == cut_cache.name
    assert open_cache(plain).features.tobytes() == c.features.tobytes()
    from udaqa_pipeline.cache.verify import cache_info

    info = cache_info(cut_cache)
    assert info["cuts"]["Mixed_5b/fp32"]["bytes_per_clip"] == 832 * 2 * 7 * 7 * 4
    # a bf16 cut beside it: half the bytes, features within 1e-2 relative
    _extract(synth, cut_cache.parent, CUT[:1] + CUT[2:])
    b, _, bd = read_cut(open_cache(cut_cache), "Mixed_5b", "bf16")
    fb = features_from(m, decode(b, bd).reshape(-1, 832, 2, 7, 7), below("Mixed_5b"), 16)
    ref = c.features.reshape(-1, 1024)
    assert np.linalg.norm(fb - ref) / np.linalg.norm(ref) < 1e-2


def test_a_cut_is_added_to_an_existing_cache_resumed_and_verified(synth, tmp_path):
    from udaqa_pipeline.cache.verify import verify_cache

    p = _extract(synth, tmp_path / "c", CUT[2:])
    before = (p / "features.h5").read_bytes()
    st: dict = {}
    assert _extract(synth, tmp_path / "c", CUT, stats=st) == p
    assert st["processed"] == 0 and st["cut_processed"] == len(open_cache(p))  # no feature row extracted
    assert (p / "features.h5").read_bytes() == before  # the features are not rewritten
    assert verify_cache(p)["ok"]
    # a killed cut pass keeps its staged rows: drop the store, stage one row by hand, rerun
    m = json.loads((p / "manifest.json").read_text())
    e = m["cuts"]["Mixed_5b/fp32"]
    stored, _, _ = read_cut(open_cache(p), "Mixed_5b")
    names = e["rows"]
    (p / e["store"]).unlink()
    write_staged_cut(staging_dir(p, "Mixed_5b", "fp32"), names[0], stored[0])
    st = {}
    _extract(synth, tmp_path / "c", CUT, stats=st)
    assert st["cut_processed"] == len(names) - 1
    again, _, _ = read_cut(open_cache(p), "Mixed_5b")
    assert again.tobytes() == stored.tobytes()
    # a smaller label table (--limit, another task subset) keeps every row's cut, as it keeps features
    cfg = resolve("mtl", TINY + CUT)
    extract_features("mtl", cfg, synth, cache_root=tmp_path / "c", progress=False, limit=2)
    assert json.loads((p / "manifest.json").read_text())["cuts"]["Mixed_5b/fp32"]["rows"] == names
    # a flipped byte in the cut store is found by cache verify, and named
    data = bytearray((p / e["store"]).read_bytes())
    at = data.rfind(stored[-1].tobytes()[:64])
    data[at + 10] ^= 0xFF
    (p / e["store"]).write_bytes(bytes(data))
    problems = verify_cache(p)["problems"]
    assert any(e["store"] in s and "checksum" in s for s in problems), problems


@pytest.mark.parametrize("freeze_bn", [True, False])
def test_top_from_the_cut_equals_end_to_end_with_the_bottom_frozen(synth, cut_cache, freeze_bn):
    """Same input, same weights: the blocks from Mixed_5b trained from the stored fp32 cut give the
    outputs and gradients of fine-tuning with finetune.train_from = Mixed_5b on the frames."""
    from udaqa_pipeline.backbone.weights import load_i3d
    from udaqa_pipeline.datasets import load_dataset
    from udaqa_pipeline.datasets.frames import sample_frames
    from udaqa_pipeline.engine.adapt import CutSource
    from udaqa_pipeline.engine.finetune import Backbone
    from udaqa_pipeline.features import layout_of, view_input

    cfg = resolve("mtl", TINY + CUT + (f"finetune.freeze_bn={str(freeze_bn).lower()}",))
    c = open_cache(cut_cache)
    rows = np.arange(4)
    views = np.asarray([0, 1, 0, 1])
    src = CutSource(c, cfg, "cpu")
    src.module.train()
    f_cut, _ = src.batch(rows, views)
    # end to end: the frames of the same samples and views through a Backbone frozen below Mixed_5b
    e2e = Backbone(load_i3d(), lr=1e-3, train_from="Mixed_5b", checkpointing=False, freeze_bn=cfg.finetune.freeze_bn)
    e2e.train()
    samples = {s.id: s for s in load_dataset("mtl", synth, cfg)}
    lay = layout_of(cfg)
    clips = []
    for r, v in zip(rows, views):
        frames = sample_frames(samples[c.samples.column("id")[int(r)].as_py()], cfg.frames).frames
        x = view_input(frames, cfg, c.views[int(v)])
        clips += [x[:, s:s + lay.clip_len] for s in lay.starts]
    f_e2e = e2e.features(torch.stack(clips)).view(len(rows), len(lay.starts), -1)
    torch.testing.assert_close(f_cut, f_e2e, rtol=1e-4, atol=1e-5)
    # gradients of the same loss through the top, before either in-backward Adam step moves a weight
    grads = {}
    for name, mod, f in (("cut", src.module, f_cut), ("e2e", e2e, f_e2e)):
        got = {}
        for pname, p in mod.i3d.named_parameters():
            if p.requires_grad:
                p.register_hook(lambda g, pname=pname, got=got: got.__setitem__(pname, g.detach().clone()))
        (f * torch.linspace(-1, 1, 1024)).sum().backward()
        grads[name] = got
    assert set(grads["cut"]) == set(grads["e2e"]) and all(k.startswith("Mixed_5") for k in grads["cut"])
    assert len(grads["cut"]) > 20
    # the stored cut comes from stage one's folded-BatchNorm bottom, the end-to-end path's from the
    # unfolded one: inputs agree to ~2e-6 relative, and so do the gradients, each tensor to 1e-4
    # relative (L2) but those of one branch: a pre-activation that close to 0 can fall on the other
    # side of a ReLU in the two paths, which moves the gradients of the layers around it (with
    # Kinetics BatchNorm statistics: Mixed_5b.b1a and b1b, up to 5.6e-4), still well inside 1e-3
    rel = {k: float((grads["cut"][k] - grads["e2e"][k]).norm() / grads["e2e"][k].norm().clamp_min(1e-12))
           for k in grads["cut"]}
    assert max(rel.values()) < 1e-3, rel
    off = {k: v for k, v in rel.items() if v >= 1e-4}
    assert len({k[:len("Mixed_5b.b1")] for k in off}) <= 1, off
    # the frozen bottom got no gradient and kept its weights
    assert all(not p.requires_grad for n, p in e2e.i3d.named_parameters() if not n.startswith(("Mixed_5", "logits")))


def test_an_adapted_run_trains_evaluates_and_scores_with_its_own_top(synth, cut_cache, tmp_path):
    from udaqa_pipeline.engine.run import train
    from udaqa_pipeline.evaluation.evaluate import evaluate
    from udaqa_pipeline.experiments.ablate import count_backbone_forwards
    from udaqa_pipeline.inference.run import load_run

    over = TINY + CUT + TRAIN + ("train.adapt=top",)
    counter, handle = count_backbone_forwards()
    try:
        rd = train("mtl", cache=cut_cache, run_dir=tmp_path / "run", overrides=over, progress=False)
        ev = evaluate(rd, cache=cut_cache)
    finally:
        handle.remove()
    assert counter["i3d_forwards"] == 0  # nothing below the cut ran
    run = load_run(rd)
    state = run.source_state
    assert state is not None and any(k.startswith("i3d.Mixed_5b") for k in state)
    assert not any(k.startswith(("i3d.Conv3d", "i3d.Mixed_4")) for k in state)  # the frozen bottom is not saved
    from udaqa_pipeline.backbone.weights import load_i3d

    kinetics = load_i3d().state_dict()
    moved = [k for k in state if k.startswith("i3d.Mixed_5") and k.endswith("conv3d.weight")
             and not torch.equal(state[k], kinetics[k[4:]])]
    assert moved  # the top trained
    assert np.isfinite(ev.metrics["overall"]["rl2x100"])
    # scoring runs the Kinetics bottom and the run's top
    from udaqa_pipeline.inference.score import load_scorer

    i3d = load_scorer(rd).i3d
    scored = load_i3d().state_dict()
    scored.update({k[4:]: v for k, v in state.items() if k.startswith("i3d.")})
    mine = I3D_unfolded(scored)
    probe = torch.rand(1, 3, 9, 193, 193) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(i3d.forward_features(probe), mine.forward_features(probe), rtol=1e-4, atol=1e-5)
    shutil.rmtree(tmp_path / "run")


def I3D_unfolded(state):
    from udaqa_pipeline.backbone.i3d import I3D

    m = I3D()
    m.load_state_dict(state)
    return m.eval()


def test_weight_averaging_averages_the_top_with_the_heads(cut_cache, tmp_path):
    """select=last with average_last=2: the kept top is the mean of the tops at the end of the last
    two epochs (so the kept heads read the features of the kept top), as the kept heads are."""
    from udaqa_pipeline.engine.run import train
    from udaqa_pipeline.runs.checkpoint import CHECKPOINT, load_checkpoint

    over = TINY + CUT + TRAIN + ("train.adapt=top", "train.select=last", "train.average_last=2", "train.epochs=3",
                                 "train.calibrate=none")
    ck = load_checkpoint(train("mtl", cache=cut_cache, run_dir=tmp_path / "r", overrides=over, progress=False)
                         / CHECKPOINT)
    step = tmp_path / "s"
    train("mtl", cache=cut_cache, run_dir=step, overrides=over, progress=False, stop_after=2)
    top2 = load_checkpoint(step / CHECKPOINT)["source"]
    train("mtl", cache=cut_cache, run_dir=step, overrides=over, progress=False)
    top3 = load_checkpoint(step / CHECKPOINT)["source"]
    k = "i3d.Mixed_5c.b3b.conv3d.weight"
    assert ck["best"]["averaged"] == 2 and not torch.equal(top2[k], top3[k])
    torch.testing.assert_close(ck["best"]["source"][k], (top2[k] + top3[k]) / 2, rtol=0, atol=1e-7)


def test_heads_first_the_top_trains_in_the_last_epochs_only(cut_cache, tmp_path):
    """train.adapt_epochs = 1 of 3: the first two epochs train the heads on the cached features (the
    top keeps the Kinetics weights), the last one trains the top too."""
    from udaqa_pipeline.backbone.weights import load_i3d
    from udaqa_pipeline.config import ConfigError
    from udaqa_pipeline.engine.run import train
    from udaqa_pipeline.runs.checkpoint import CHECKPOINT, load_checkpoint

    over = TINY + CUT + TRAIN + ("train.adapt=top", "train.adapt_epochs=1", "train.select=last", "train.epochs=3",
                                 "train.calibrate=none")
    step = tmp_path / "s"
    k = "Mixed_5c.b3b.conv3d.weight"
    kinetics = load_i3d().state_dict()[k]
    train("mtl", cache=cut_cache, run_dir=step, overrides=over, progress=False, stop_after=2)
    ck2 = load_checkpoint(step / CHECKPOINT)
    assert torch.equal(ck2["source"]["i3d." + k], kinetics) and ck2["epoch"] == 1
    train("mtl", cache=cut_cache, run_dir=step, overrides=over, progress=False)
    assert not torch.equal(load_checkpoint(step / CHECKPOINT)["source"]["i3d." + k], kinetics)
    with pytest.raises(ConfigError, match="needs train.adapt = 'top'"):
        resolve("mtl", TINY + ("train.adapt_epochs=2",))
    for n in (-1, 4):
        with pytest.raises(ConfigError, match=r"from 0 \(every epoch\) to train.epochs \(3\)"):
            resolve("mtl", TINY + ("train.adapt=top", "train.epochs=3", f"train.adapt_epochs={n}"))


def test_the_top_follows_the_heads_learning_rate_schedule(cut_cache):
    """The top's in-backward Adam steps at finetune.lr_scale x the heads' learning rate of the epoch
    (a cosine schedule takes both towards 0), so the heads' last epochs do not chase a top still
    moving at 0.1 x train.lr."""
    from udaqa_pipeline.data.trainset import from_cache
    from udaqa_pipeline.engine.adapt import adapted
    from udaqa_pipeline.engine.fit import build_fit, run_epoch
    from udaqa_pipeline.engine.recipe import learning_rate

    cfg = resolve("mtl", TINY + CUT + TRAIN + ("train.adapt=top", "train.lr_schedule=cosine", "train.epochs=4"))
    data = adapted(from_cache(open_cache(cut_cache), "mtl"), cfg, "cpu")
    fit = build_fit(cfg, data, np.arange(len(data.labels.ids)), device="cpu")
    top = data.source.module
    for epoch in (0, 3):
        run_epoch(fit, epoch)
        assert top.lr == pytest.approx(0.1 * learning_rate(epoch, cfg.train))
    assert learning_rate(3, cfg.train) < 0.2 * cfg.train.lr
