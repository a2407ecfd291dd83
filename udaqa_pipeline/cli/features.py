"""``features DATASET`` (stage one) and the ``cache`` group (info, verify, merge): thin shells over
:mod:`udaqa_pipeline.cache`; options are the library's keyword arguments."""

from __future__ import annotations

import json
import sys

import click


@click.command("features")
@click.argument("dataset")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Dataset folder (default: dataset.root of the stage TOML).")
@click.option("--backend", type=click.Choice(["hdf5", "zarr"]), default=None, help="Store format (default: cache.backend).")
@click.option("--views", type=click.IntRange(min=1), default=None,
              help="Feature views per video: 1 = plain centre view; more add flip and +-shift views. "
                   "Costs V times the I3D work and V times the feature bytes (default: cache.views).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Clips per I3D forward, across videos (default: the cache's recorded one, else 16 CPU / 64 GPU).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Decoding threads (default: half the cores, 2 to 8).")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default=None,
              help="fp32 (default) or bf16 autocast (a different cache: changes the numbers).")
@click.option("--shard", default=None, metavar="i/n",
              help="Extract only samples i, i+n, ... (0-based i); merge with `cache merge`. Under torchrun "
                   "RANK/WORLD_SIZE are used instead and rank 0 merges.")
@click.option("--strict", is_flag=True, help="Exit non-zero if any video failed (default: only if none succeeded).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N samples (a separate cache).")
@click.option("--cache-root", type=click.Path(file_okay=False), default=None, help="Default <repo>/cache or $UDAQA_CACHE.")
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a stage config value, e.g. --set clips.n_clips=5 (repeatable).")
@click.option("--retry-failed", is_flag=True,
              help="Extract again the videos recorded as failed (after fixing them); the others are kept.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def features_cmd(dataset, root, backend, views, batch_size, workers, dtype, shard, strict, limit, cache_root, device,
                 overrides, retry_failed, no_progress) -> None:
    """Stage one: decode DATASET's videos, run frozen I3D over K clips each, and write the feature cache
    <cache_root>/<DATASET>-<hash>/ (resumable: rerun the same command to continue a killed run).

    Videos that cannot be read are recorded (status, error) and skipped; the exit status is non-zero only
    with --strict or when no video succeeded.
    """
    from ..cache import CacheError
    from ..cache.extract import ExtractionError, extract_features

    try:
        path = extract_features(
            dataset, root, overrides=overrides, cache_root=cache_root, backend=backend, views=views,
            batch_size=batch_size, workers=workers, dtype=dtype, shard=shard, strict=strict, limit=limit,
            device=device, progress=not no_progress, retry_failed=retry_failed,
        )
    except ExtractionError as e:
        click.echo(f"error: {e}", err=True)
        click.echo(e.path)
        sys.exit(1)
    except (CacheError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(path)


@click.group("cache")
def cache_group() -> None:
    """Inspect, check and merge feature caches."""


@cache_group.command("info")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def info_cmd(path, as_json) -> None:
    """Describe the cache directory PATH (shapes, settings, counts, sizes)."""
    from ..cache import CacheError
    from ..cache.verify import cache_info

    try:
        info = cache_info(path)
    except CacheError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        click.echo(f"{k:>16}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


@cache_group.command("verify")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def verify_cmd(path, as_json) -> None:
    """Re-read every chunk of the cache PATH against its checksums; exit 1 on any problem."""
    from ..cache.verify import verify_cache

    report = verify_cache(path)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for p in report["problems"]:
            click.echo(f"problem: {p}", err=True)
        n = len(report["problems"])
        click.echo(f"{path}: " + ("ok" if report["ok"] else f"{n} problem(s)"))
    if not report["ok"]:
        sys.exit(1)


@cache_group.command("merge")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.argument("others", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--backend", type=click.Choice(["hdf5", "zarr"]), default=None, help="Default: the cache's backend.")
def merge_cmd(path, others, backend) -> None:
    """Merge the shards staged in PATH (plus those of OTHERS: copies of the same cache from other hosts)
    into its final store."""
    from ..cache import CacheError
    from ..cache.extract import _finish
    from ..cache.merge import merge_cache

    try:
        out = merge_cache(path, others, backend=backend)
        _finish(out, strict=False)
    except CacheError as e:
        raise click.ClickException(str(e)) from e
    click.echo(out)


def register(main: click.Group) -> None:
    """Add ``features`` and the ``cache`` group to ``main``."""
    main.add_command(features_cmd)
    main.add_command(cache_group)
