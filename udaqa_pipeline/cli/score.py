"""`score` (a user's own video with a trained run) and `finetune` (I3D unfrozen, issue 6)."""

from __future__ import annotations

import json
from contextlib import contextmanager

import click


@contextmanager
def _clear_errors():
    """Errors that name their own fix are printed as such, without a traceback."""
    from ..backbone.weights import WeightsError
    from ..config import ConfigError
    from ..finetune import FinetuneError
    from ..score import ScoreError
    from ..train import CheckpointError

    try:
        yield
    except (ScoreError, FinetuneError, CheckpointError, ConfigError, WeightsError) as e:
        raise click.ClickException(str(e)) from e


def register(main: click.Group) -> None:
    """Add this module's commands to ``main``."""
    main.add_command(score_cmd)
    main.add_command(finetune_cmd)
    main.add_command(evaluate_finetuned_cmd)


@click.command("score")
@click.argument("path", type=click.Path())
@click.option("--run", "run_dir", type=click.Path(), required=True, help="run directory (holds checkpoint.pt)")
@click.option("--judges", type=int, default=None, help="judges T per panel (default: the run's rule needs)")
@click.option("--difficulty", type=float, default=None, help="degree of difficulty, for rules that multiply by it")
@click.option("--samples", type=int, default=1, show_default=True, help="panels S drawn per video")
@click.option("--group", default=None, help="scaling group (action/task) for runs scaled per group")
@click.option("--rule", default=None, help="scoring rule (default: the run's dataset rule)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="I3D device (default: cuda when available)")
@click.option("--cache-root", type=click.Path(), default=None)
@click.option("--dataset", default=None, help="refuse a run trained on another dataset")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
@click.option("--out", type=click.Path(), default=None,
              help="Parquet table of the rows (default for a folder of videos: ./scores.parquet)")
def score_cmd(path, run_dir, judges, difficulty, samples, group, rule, seed, device, cache_root, dataset, as_json,
              out):
    """Score PATH (a video, a frame folder, or a folder of videos) with a trained run."""
    from ..score import format_row, score

    with _clear_errors():
        res = score(path, run_dir, judges=judges, difficulty=difficulty, samples=samples, group=group, rule=rule,
                    seed=seed, device=device, cache_root=cache_root, out=out, dataset=dataset)
    if as_json:
        obj = res if res["batch"] else {**res["rows"][0], **({"out": res["out"]} if "out" in res else {})}
        click.echo(json.dumps(obj, default=float))
        return
    for row in res["rows"]:
        click.echo(format_row(row))
    if "out" in res:
        bad = sum(r["status"] != "ok" for r in res["rows"])
        click.echo(f"wrote {len(res['rows'])} rows ({bad} unreadable) to {res['out']}")


@click.command("finetune")
@click.argument("dataset")
@click.option("--root", type=click.Path(), default=None, help="dataset folder (default: the stage's dataset.root)")
@click.option("--fold", type=int, default=0, show_default=True, help="test fold (trains on the others)")
@click.option("--cv", type=int, default=None, help="K-fold cross-validation over the whole dataset")
@click.option("--run", "--run-dir", "run_dir", type=click.Path(), default=None,
              help="run directory (default: runs/<dataset>/finetune-fold<k>)")
@click.option("--protocol", type=click.Choice(["honest", "paper"]), default="honest", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="override a config value, e.g. --set finetune.lr_scale=0.05 --set finetune.freeze_bn=true")
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--force", is_flag=True, help="run even where an epoch is estimated to take too long")
@click.option("--max-epoch-minutes", type=float, default=30.0, show_default=True)
@click.option("--workers", type=int, default=None, help="decoding worker processes (default: 8 on GPU, 0 on CPU)")
@click.option("--device", default=None)
@click.option("--limit", type=int, default=None, help="first N samples only")
@click.option("--progress/--no-progress", default=True)
def finetune_cmd(dataset, root, fold, cv, run_dir, protocol, overrides, resume, force, max_epoch_minutes, workers,
                 device, limit, progress):
    """Train UD-AQA with the I3D backbone unfrozen, from DATASET's frames (not the cache)."""
    from ..finetune import finetune

    with _clear_errors():
        out = finetune(dataset, root, fold=fold, cv=cv, run_dir=run_dir, overrides=overrides, protocol=protocol,
                       resume=resume, progress=progress, force=force, workers=workers, device=device,
                       max_epoch_minutes=max_epoch_minutes, limit=limit)
    click.echo(str(out))


@click.command("evaluate-finetuned")
@click.argument("run_dir", type=click.Path())
@click.option("--root", type=click.Path(), default=None, help="dataset folder (default: the stage's dataset.root)")
@click.option("--judges", type=int, default=None, help="judges T per sampled panel (default: the rule's)")
@click.option("--samples", type=int, default=10, show_default=True, help="panels S drawn per sample")
@click.option("--device", default=None)
@click.option("--workers", type=int, default=None)
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
def evaluate_finetuned_cmd(run_dir, root, judges, samples, device, workers, as_json):
    """Evaluate a fine-tuned run on its test fold, features from its own backbone (writes <run>/eval/)."""
    from ..evaluate import format_metrics
    from ..finetune import evaluate_finetuned

    with _clear_errors():
        m = evaluate_finetuned(run_dir, root, judges=judges, samples=samples, device=device, workers=workers)
    click.echo(json.dumps(m, indent=1, default=float) if as_json else format_metrics(m))
