"""``features STAGE`` (stage one) and the ``cache`` group (info, verify, merge): thin shells over
:mod:`udaqa_pipeline.cache`; options are the library's keyword arguments."""

from __future__ import annotations

import json
import sys

import click

from .options import (Group, cache_root_option, command, device_option, json_option, progress_option,
                      root_option, set_option, stage_argument, threads_option)


def _shard(ctx: click.Context, param: click.Parameter, value: str | None):
    """``--shard i/n`` parsed by the cache's own parser; a malformed one is a usage error."""
    if value is None:
        return None
    from ..cache.shard import parse_shard

    try:
        return parse_shard(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None


@command("features")
@stage_argument(required=True)
@root_option
@click.option("--backend", type=click.Choice(["hdf5", "zarr"]), default=None, help="Store format (default: cache.backend).")
@click.option("--views", type=click.IntRange(min=1), default=None,
              help="Feature views per video: 1 = plain centre view; more add flip and +-shift views. "
                   "Costs V times the I3D work and V times the feature bytes (default: cache.views).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Clips per I3D forward, across videos (default: the cache's recorded one, else 16 CPU / 64 GPU).")
@threads_option("Decoding threads (default: half the cores, 2 to 8).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default=None,
              help="fp32 (default) or bf16 autocast (a different cache: changes the numbers).")
@click.option("--shard", default=None, metavar="i/n", callback=_shard,
              help="Extract only samples i, i+n, ... (0-based i); merge with `cache merge`. Under torchrun "
                   "RANK/WORLD_SIZE are used instead and rank 0 merges.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any video failed (default: only if none succeeded).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples: the label table holds them and only their features are extracted "
                   "(the same cache; a run without --limit adds the rest).")
@cache_root_option
@device_option
@set_option
@click.option("--retry-failed", is_flag=True,
              help="Extract again the videos recorded as failed (after fixing them); the others are kept.")
@progress_option
def features_cmd(stage, root, backend, views, batch_size, threads, dtype, shard, strict, limit, cache_root, device,
                 overrides, retry_failed, progress) -> None:
    """Stage one: decode STAGE's videos, run frozen I3D over K clips each, and write the feature cache
    <cache-root>/<STAGE>-<hash>/ (resumable: rerun the same command to continue a killed run); prints
    its path.

    Videos that cannot be read are recorded (status, error) and skipped; the exit status is non-zero only
    with --strict or when no video succeeded (the cache path is printed then too).
    """
    from .. import config, resolve
    from ..cache.extract import ExtractionError, extract_features

    cfg = config.resolve(stage, overrides, {"cache.backend": backend, "cache.views": views, "cache.dtype": dtype})
    try:
        path = extract_features(
            stage, cfg, root, cache_root=cache_root, limit=limit, shard=shard, device=resolve.device(device),
            batch_size=batch_size, threads=threads, strict=strict, retry_failed=retry_failed, progress=progress,
        )
    except ExtractionError as e:
        click.echo(e.path)  # the cache holds what did succeed; the error line follows on stderr
        raise
    click.echo(path)


@click.group("cache", cls=Group)
def cache_group() -> None:
    """Inspect, check and merge feature caches."""


_CACHE_ARG = click.argument("cache", type=click.Path(exists=True, file_okay=False), metavar="CACHE")


@cache_group.command("info")
@_CACHE_ARG
@json_option
def info_cmd(cache, as_json) -> None:
    """Describe the cache directory CACHE (shapes, settings, counts, sizes)."""
    from ..cache.verify import cache_info

    info = cache_info(cache)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        click.echo(f"{k:>16}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


@cache_group.command("verify")
@_CACHE_ARG
@json_option
def verify_cmd(cache, as_json) -> None:
    """Re-read every chunk of the cache CACHE against its checksums; exit 1 on any problem."""
    from ..cache.verify import verify_cache

    report = verify_cache(cache)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for p in report["problems"]:
            click.echo(f"problem: {p}", err=True)
        n = len(report["problems"])
        click.echo(f"{cache}: " + ("ok" if report["ok"] else f"{n} problem(s)"))
    if not report["ok"]:
        sys.exit(1)


@cache_group.command("merge")
@_CACHE_ARG
@click.argument("others", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--backend", type=click.Choice(["hdf5", "zarr"]), default=None, help="Default: the cache's backend.")
def merge_cmd(cache, others, backend) -> None:
    """Merge the shards staged in CACHE (plus those of OTHERS: copies of the same cache from other hosts)
    into its final store."""
    from ..cache.extract import finish_cache
    from ..cache.merge import merge_cache

    out = merge_cache(cache, others, backend=backend)
    finish_cache(out, strict=False)
    click.echo(out)


def register(main: click.Group) -> None:
    """Add ``features`` and the ``cache`` group to ``main``."""
    main.add_command(features_cmd)
    main.add_command(cache_group)
