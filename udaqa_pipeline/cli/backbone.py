"""Backbone commands: ``weights fetch``, ``weights verify``, ``classify``."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


@click.group("weights")
def weights_group() -> None:
    """Fetch, convert and verify the Kinetics-400 I3D weights."""


@weights_group.command("fetch")
@click.option("--from", "from_path", type=click.Path(path_type=Path), default=None,
              help="Convert this checkpoint (piergiaj rgb_imagenet.pt, hassony2 model_rgb.pth, "
                   "video_features i3d_rgb.pt or DeepMind i3d-kinetics-400.ckpt) instead of downloading.")
@click.option("--cache-root", type=click.Path(path_type=Path), default=None,
              help="Cache root (default $UDAQA_CACHE or <repo>/cache); weights go to <root>/weights/.")
def fetch_cmd(from_path: Path | None, cache_root: Path | None) -> None:
    """Make sure converted I3D weights are cached (reuses them when present)."""
    from ..backbone.weights import WeightsError, fetch_weights, weights_sha256

    try:
        path = fetch_weights(cache_root=cache_root, from_path=from_path)
        click.echo(f"{path}  sha256 {weights_sha256(cache_root)}")
    except WeightsError as e:
        raise _fail(e) from None


@weights_group.command("verify")
@click.option("--cache-root", type=click.Path(path_type=Path), default=None, help="Cache root (see fetch).")
def verify_cmd(cache_root: Path | None) -> None:
    """Re-hash the cached weights against their recorded sha256."""
    from ..backbone.weights import WeightsError, verify_weights, weights_path

    try:
        digest = verify_weights(cache_root)
    except WeightsError as e:
        raise _fail(e) from None
    click.echo(f"ok  {weights_path(cache_root)}  sha256 {digest}")


@click.command("classify")
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--frames", type=int, default=None, help="Use only the first N frames (default: the whole clip).")
@click.option("--top", type=int, default=5, show_default=True, help="How many labels to show.")
# 64 = backbone.classify.WINDOW, written out so `--help` does not import torch (a test keeps them equal).
@click.option("--window", type=int, default=64, show_default=True,
              help="Frames per I3D pass; bounds memory whatever the video's length (a shorter tail joins "
                   "the last window).")
@click.option("--json", "as_json", is_flag=True,
              help='Print {"frames", "windows", "logits" (400), "top"} as one JSON object.')
@click.option("--cache-root", type=click.Path(path_type=Path), default=None, help="Cache root holding the weights.")
def classify_cmd(
    video: Path, frames: int | None, top: int, window: int, as_json: bool, cache_root: Path | None
) -> None:
    """Classify VIDEO (file or frame folder) with I3D into Kinetics-400 classes.

    The video is streamed: decoded a few frames at a time and run through I3D in windows of
    --window frames, so peak memory stays bounded however long it is. The logits are the average
    over every temporal position of every window (each window weighted by its positions). A video
    that fits one window gets exactly the one-pass result; a longer one is classified as
    consecutive clips, which can differ from one pass over the whole video (each I3D position sees
    ~100 frames): a larger --window is closer to it and costs more memory.
    """
    from ..backbone.classify import classify_video
    from ..backbone.weights import WeightsError
    from ..video.decode import VideoError

    try:
        result = classify_video(video, frames=frames, top=top, window=window, cache_root=cache_root)
    except (WeightsError, VideoError, ValueError) as e:
        raise _fail(e) from None
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{video}: {result['frames']} frames in {result['windows']} I3D pass(es)")
    for row in result["top"]:
        click.echo(f"{row['prob']:8.4f}  {row['logit']:8.3f}  {row['label']}")


def register(main: click.Group) -> None:
    """Add ``weights`` and ``classify`` to ``main``."""
    main.add_command(weights_group)
    main.add_command(classify_cmd)
