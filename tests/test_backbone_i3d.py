"""I3D model: SAME-padding arithmetic, shapes, the input contract, the fused fast path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from udaqa_pipeline.backbone.i3d import I3D, check_input_shape, mixed5c_size, same_padding


@pytest.mark.parametrize(
    "n,k,s,expected",
    [
        (224, 7, 2, (2, 3)),  # Conv3d_1a spatial: TF puts the odd pixel at the back
        (16, 7, 2, (2, 3)),  # Conv3d_1a temporal
        (9, 7, 2, (3, 3)),  # n % s != 0: total = k - n % s
        (112, 3, 2, (0, 1)),  # MaxPool3d_2a: asymmetric, back only
        (9, 3, 2, (1, 1)),
        (8, 2, 2, (0, 0)),  # MaxPool3d_5a on even sizes: no padding
        (7, 2, 2, (0, 1)),
        (28, 3, 1, (1, 1)),  # stride 1: symmetric k // 2
        (5, 1, 1, (0, 0)),
        (1, 7, 2, (3, 3)),
    ],
)
def test_same_padding_known_values(n: int, k: int, s: int, expected: tuple[int, int]) -> None:
    assert same_padding(n, k, s) == expected


def test_same_padding_gives_ceil_output_and_back_heavy_split() -> None:
    for n in range(1, 40):
        for k in range(1, 8):
            for s in range(1, 4):
                front, back = same_padding(n, k, s)
                assert 0 <= back - front <= 1
                out = (n + front + back - k) // s + 1
                assert out == math.ceil(n / s), (n, k, s)
    with pytest.raises(ValueError):
        same_padding(0, 3, 1)


def test_same_conv_matches_explicit_tf_padding() -> None:
    """A stride-2 SAME conv equals a VALID conv on the input padded by TF's rule (by hand)."""
    from udaqa_pipeline.backbone.i3d import Unit3D

    torch.manual_seed(0)
    unit = Unit3D(2, 3, (3, 3, 3), (2, 2, 2), use_batch_norm=False).eval()
    x = torch.randn(1, 2, 6, 7, 8)
    # T=6: total 1 -> (0, 1); H=7: total 2 -> (1, 1); W=8: total 1 -> (0, 1).
    ref = F.conv3d(F.pad(x, (0, 1, 1, 1, 0, 1)), unit.conv3d.weight, unit.conv3d.bias, stride=2)
    torch.testing.assert_close(unit(x), ref)
    assert ref.shape[2:] == (3, 4, 4)


def test_mixed5c_size_and_input_limits() -> None:
    assert mixed5c_size(16, 224, 224) == (2, 7, 7)
    assert mixed5c_size(9, 193, 193) == (2, 7, 7)
    assert mixed5c_size(32, 224, 224) == (4, 7, 7)
    assert mixed5c_size(8, 224, 224)[0] == 1
    check_input_shape((2, 3, 9, 193, 200))
    with pytest.raises(ValueError, match="at least 9 frames"):
        check_input_shape((1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match="193x193"):
        check_input_shape((1, 3, 16, 192, 224))
    with pytest.raises(ValueError, match="batch, 3, frames"):
        check_input_shape((3, 16, 224, 224))


def test_state_dict_layout() -> None:
    sd = I3D().state_dict()
    tensors = [k for k in sd if not k.endswith("num_batches_tracked")]
    assert len(tensors) == 230  # 57 conv units x (weight, beta, mean, var) + logits weight, bias
    assert "Mixed_4f.b1b.conv3d.weight" in sd and sd["Mixed_4f.b1b.conv3d.weight"].shape == (320, 160, 3, 3, 3)
    assert not any(k.endswith("bn.weight") for k in sd)  # no BN scale, as in DeepMind's model
    assert sd["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)


@pytest.fixture(scope="module")
def model() -> I3D:
    """A random I3D with non-trivial BatchNorm statistics (so folding them is actually tested)."""
    torch.manual_seed(0)
    m = I3D()
    with torch.no_grad():
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in m.named_parameters():
            if name.endswith("bn.bias"):
                p.normal_(0, 0.1)
    return m.eval()


def test_forward_shapes_16_and_9_frames(model: I3D) -> None:
    with torch.inference_mode():
        f16 = model.forward_features(torch.rand(1, 3, 16, 224, 224) * 2 - 1)
        f9 = model.forward_features(torch.rand(1, 3, 9, 193, 193) * 2 - 1)
    assert f16.shape == (1, 1024) and f16.dtype == torch.float32
    assert f9.shape == (1, 1024)
    assert torch.isfinite(f16).all() and (f16 >= 0).all()  # average of post-ReLU activations
    with pytest.raises(ValueError, match="at least 9 frames"):
        model.forward_features(torch.zeros(1, 3, 8, 224, 224))


def test_logits_head_fast_path_agree(model: I3D) -> None:
    x = torch.rand(1, 3, 9, 193, 193) * 2 - 1
    with torch.inference_mode():
        feats = model.forward_features(x)
        logits = model.forward_logits(x)
        torch.testing.assert_close(model.forward_head(feats), logits, atol=1e-5, rtol=1e-5)
        model.prepare_for_inference()
        try:
            fast = model.forward_logits(x)
        finally:
            model.train().eval()  # drop the folded copies for the other tests
    assert logits.shape == (1, 400)
    torch.testing.assert_close(fast, logits, atol=1e-4, rtol=1e-4)


def test_load_state_dict_drops_folded_copies(model: I3D) -> None:
    m = I3D().prepare_for_inference()
    assert m.Conv3d_1a_7x7._fused is not None
    m.load_state_dict(model.state_dict())
    assert m.Conv3d_1a_7x7._fused is None


def test_max_pool_same_equals_explicit_tf_padding() -> None:
    """Ceil-mode pooling reproduces TF SAME (-inf padding, extra element at the back) on odd and even sizes."""
    from udaqa_pipeline.backbone.i3d import MaxPoolSame

    torch.manual_seed(1)
    for kernel, stride in [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2)), ((2, 2, 2), (2, 2, 2)), ((3, 3, 3), (1, 1, 1))]:
        for shape in [(4, 8, 8), (5, 7, 9), (3, 13, 6), (1, 2, 3)]:
            x = torch.randn(1, 2, *shape)  # negative values too: padding must act as -inf
            pads = [v for n, k, s in zip(reversed(shape), reversed(kernel), reversed(stride)) for v in same_padding(n, k, s)]
            ref = F.max_pool3d(F.pad(x, pads, value=float("-inf")), kernel, stride)
            out = MaxPoolSame(kernel, stride)(x)
            assert torch.equal(out, ref), (kernel, stride, shape)
            assert out.shape[2:] == tuple(math.ceil(n / s) for n, s in zip(shape, stride))


def test_blocks_are_named_in_order_and_bad_cuts_are_refused() -> None:
    from udaqa_pipeline.backbone.i3d import BLOCKS

    model = I3D()
    assert BLOCKS[-1] == "Mixed_5c" and all(hasattr(model, b) for b in BLOCKS)
    with pytest.raises(ValueError, match="no block 'Mixed_9z'"):
        model.features(torch.zeros(1, 3, 9, 193, 193), stop="Mixed_9z")
    with pytest.raises(ValueError, match="not before"):
        model.features(torch.zeros(1, 832, 2, 7, 7), start="Mixed_5b", stop="Mixed_4f")
