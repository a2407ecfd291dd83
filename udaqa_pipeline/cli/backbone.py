"""Backbone commands: ``weights fetch``, ``weights verify``, ``classify``."""

from __future__ import annotations

import json

import click

from .options import Group, cache_root_option, command, json_option


@click.group("weights", cls=Group)
def weights_group() -> None:
    """Fetch, convert and verify the Kinetics-400 I3D weights."""


@weights_group.command("fetch")
@click.option("--from", "from_path", type=click.Path(), default=None,
              help="Convert this checkpoint (piergiaj rgb_imagenet.pt, hassony2 model_rgb.pth, "
                   "video_features i3d_rgb.pt or DeepMind i3d-kinetics-400.ckpt) instead of downloading.")
@cache_root_option
def fetch_cmd(from_path: str | None, cache_root: str | None) -> None:
    """Make sure converted I3D weights are cached under <cache-root>/weights/ (reuses them when present)."""
    from ..backbone.weights import fetch_weights, weights_sha256

    path = fetch_weights(cache_root=cache_root, from_path=from_path)
    click.echo(f"{path}  sha256 {weights_sha256(cache_root)}")


@weights_group.command("verify")
@cache_root_option
def verify_cmd(cache_root: str | None) -> None:
    """Re-hash the cached weights against their recorded sha256."""
    from ..backbone.weights import verify_weights, weights_path

    digest = verify_weights(cache_root)
    click.echo(f"ok  {weights_path(cache_root)}  sha256 {digest}")


@command("classify")
@click.argument("video", type=click.Path())
@click.option("--frames", type=int, default=None, help="Use only the first N frames (default: the whole clip).")
@click.option("--top", type=int, default=5, show_default=True, help="How many labels to show.")
# 64 = backbone.classify.WINDOW, written out so `--help` does not import torch (a test keeps them equal).
@click.option("--window", type=int, default=64, show_default=True,
              help="Frames per I3D pass; bounds memory whatever the video's length (a shorter tail joins "
                   "the last window).")
@json_option
@cache_root_option
def classify_cmd(
    video: str, frames: int | None, top: int, window: int, as_json: bool, cache_root: str | None
) -> None:
    """Classify VIDEO (file or frame folder) with I3D into Kinetics-400 classes.

    The video is streamed: decoded a few frames at a time and run through I3D in windows of
    --window frames, so peak memory stays bounded however long it is. The logits are the average
    over every temporal position of every window (each window weighted by its positions). A video
    that fits one window gets exactly the one-pass result; a longer one is classified as
    consecutive clips, which can differ from one pass over the whole video (each I3D position sees
    ~100 frames): a larger --window is closer to it and costs more memory.

    --json prints {"frames", "windows", "logits" (400), "top"}.
    """
    from ..backbone.classify import classify_video

    result = classify_video(video, frames=frames, top=top, window=window, cache_root=cache_root)
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
