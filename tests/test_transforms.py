"""I3D input contract: resize/crop geometry, the 224 px pass-through, normalisation, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from udaqa_pipeline.video.transforms import downsample_video, i3d_input, resized_size


def _frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_resized_size_keeps_aspect() -> None:
    assert resized_size(240, 320, 256) == (256, 341)
    assert resized_size(480, 270, 256) == (455, 256)
    assert resized_size(100, 100, 256) == (256, 256)


def test_output_shape_dtype_and_range() -> None:
    x = i3d_input(_frames(5, 240, 320))
    assert x.shape == (3, 5, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0


def test_constant_colour_maps_exactly() -> None:
    frames = np.zeros((2, 180, 320, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 0, 255, 51
    x = i3d_input(frames)
    torch.testing.assert_close(x[0], torch.full((2, 224, 224), -1.0))
    torch.testing.assert_close(x[1], torch.full((2, 224, 224), 1.0))
    torch.testing.assert_close(x[2], torch.full((2, 224, 224), 51 / 127.5 - 1))


def test_short_side_224_is_only_center_cropped() -> None:
    frames = _frames(3, 224, 300)
    x = i3d_input(frames)
    left = (300 - 224) // 2
    expected = torch.from_numpy(frames[:, :, left : left + 224].astype(np.float32)).permute(3, 0, 1, 2) / 127.5 - 1
    assert torch.equal(x, expected)  # bit-exact: no resampling happened


def test_center_crop_position_after_resize() -> None:
    frames = _frames(2, 256, 300)  # short side already 256: the resize is the identity
    x = i3d_input(frames)
    top, left = (256 - 224) // 2, (300 - 224) // 2
    expected = frames[:, top : top + 224, left : left + 224].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(x.permute(1, 2, 3, 0).numpy(), expected, atol=1e-6)


def test_random_crop_is_seeded_and_flip_mirrors() -> None:
    frames = _frames(4, 240, 320, seed=1)
    a = i3d_input(frames, crop_mode="random", generator=torch.Generator().manual_seed(3))
    b = i3d_input(frames, crop_mode="random", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    crops = {i3d_input(frames, crop_mode="random", generator=torch.Generator().manual_seed(s))[0, 0, 0, 0].item()
             for s in range(6)}  # fmt: skip
    assert len(crops) > 1  # different seeds give different positions
    centre = i3d_input(frames)
    assert torch.equal(i3d_input(frames, flip=True), centre.flip(-1))


def test_imagenet_norm_option() -> None:
    frames = np.full((1, 224, 224, 3), 128, np.uint8)
    x = i3d_input(frames, norm="imagenet")
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 0, 0, 0].numpy(), expected, rtol=1e-5)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="uint8"):
        i3d_input(np.zeros((2, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        i3d_input(np.zeros((224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match="crop_mode"):
        i3d_input(_frames(1, 224, 224), crop_mode="corner")  # type: ignore[arg-type]


def test_downsample_video() -> None:
    frames = np.full((3, 240, 426, 3), 200, np.uint8)
    frames[:, :, :, 1] = 10
    small = downsample_video(frames, size=(112, 112))
    assert small.shape == (3, 3, 112, 112) and small.dtype == np.uint8
    assert (small[:, 0] == 200).all() and (small[:, 1] == 10).all()
    assert downsample_video(_frames(2, 100, 50), size=(64, 48)).shape == (2, 3, 64, 48)
