"""`train`, `evaluate`, `ablate`: stage two from the cache (options = library kwargs)."""

from __future__ import annotations

import functools
import json

import click


def _clean_errors(fn):
    """Known user-facing errors (missing cache, bad fold or override, unusable checkpoint) print
    their message, which names the file and the fix, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..cache import CacheError
        from ..config import ConfigError
        from ..finetune import FinetuneError
        from ..train import CheckpointError, TrainingError

        try:
            return fn(*args, **kwargs)
        except (CacheError, ConfigError, CheckpointError, FinetuneError, TrainingError) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def register(main: click.Group) -> None:
    """Add this module's commands to ``main``."""
    main.add_command(train_cmd)
    main.add_command(evaluate_cmd)
    main.add_command(ablate_cmd)
    main.add_command(cv_cmd)


_SET = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                    help="override a stage config value, e.g. --set train.epochs=20 (repeatable)")


@click.command("train")
@click.argument("dataset")
@click.option("--fold", type=int, default=0, show_default=True, help="test fold (trains on the others)")
@click.option("--cv", type=int, default=None, help="K-fold cross-validation over the whole dataset")
@click.option("--cache", type=click.Path(), default=None, help="cache directory (default: the dataset's)")
@click.option("--cache-root", type=click.Path(), default=None)
@click.option("--run", "--run-dir", "run_dir", type=click.Path(), default=None,
              help="run directory (default: runs/<dataset>/fold<k>); under torchrun spell it --run-dir")
@click.option("--protocol", type=click.Choice(["honest", "paper"]), default="honest", show_default=True,
              help="honest: model chosen without the test fold (train.select); paper: best epoch on test")
@click.option("--split", type=click.Choice(["official", "louo", "dev"]), default="official", show_default=True,
              help="official: the annotation files' folds; louo: leave one surgeon out (JIGSAWS); dev: inner "
                   "folds of the official training sets (see cv --split dev)")
@_SET
@click.option("--resume/--no-resume", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
@click.option("--finetune-backbone", is_flag=True,
              help="unfreeze I3D: train from the dataset's frames, not the cache (udaqa_pipeline.finetune)")
@click.option("--root", type=click.Path(), default=None, help="dataset folder (--finetune-backbone)")
@click.option("--force", is_flag=True, help="--finetune-backbone even where an epoch is estimated too long")
@_clean_errors
def train_cmd(dataset, fold, cv, cache, cache_root, run_dir, protocol, split, overrides, resume, progress, device,
              finetune_backbone, root, force):
    """Train UD-AQA on DATASET's feature cache (no I3D forward), or end to end with --finetune-backbone."""
    from ..train import train

    if finetune_backbone:
        from ..finetune import finetune

        click.echo(str(finetune(dataset, root, fold=fold, cv=cv, run_dir=run_dir, overrides=overrides,
                                protocol=protocol, resume=resume, progress=progress, force=force, device=device)))
        return

    out = train(dataset, fold=fold, cv=cv, cache=cache, cache_root=cache_root, run_dir=run_dir,
                overrides=overrides, protocol=protocol, split=split, resume=resume, progress=progress,
                device=device)
    click.echo(str(out))


@click.command("evaluate")
@click.argument("dataset")
@click.option("--fold", type=int, default=0, show_default=True)
@click.option("--cv", type=int, default=None)
@click.option("--run", "run_dir", type=click.Path(), default=None)
@click.option("--cache", type=click.Path(), default=None)
@click.option("--cache-root", type=click.Path(), default=None)
@click.option("--judges", type=int, default=None, help="judges T per sampled panel (default: the rule's)")
@click.option("--samples", type=int, default=50, show_default=True,
              help="panels S drawn per sample (final-score intervals need 50 or more)")
@click.option("--sampler", type=click.Choice(["calibrated", "paper", "residual"]), default="calibrated",
              show_default=True, help="calibrated: the run's fitted judge noise; paper: prior draws only; "
                                      "residual: baseline (predicted mean + training residuals)")
@click.option("--json", "as_json", is_flag=True, help="print the metrics as JSON")
@_clean_errors
def evaluate_cmd(dataset, fold, cv, run_dir, cache, cache_root, judges, samples, sampler, as_json):
    """Score a trained run on its test fold; writes <run>/eval/{metrics.json,predictions.parquet,*.png}."""
    from ..evaluate import evaluate, format_metrics

    m = evaluate(run_dir, dataset=dataset, fold=fold, cv=cv, cache=cache, cache_root=cache_root,
                 judges=judges, samples=samples, sampler=sampler)
    click.echo(json.dumps(m, indent=1, default=float) if as_json else format_metrics(m))


@click.command("ablate")
@click.option("--dataset", required=True)
@click.option("--fold", type=int, default=0, show_default=True)
@click.option("--cache", type=click.Path(), default=None)
@click.option("--cache-root", type=click.Path(), default=None)
@click.option("--run", "run_dir", type=click.Path(), default=None,
              help="parent directory of the ablation runs (default: runs/<dataset>/ablate-fold<k>)")
@click.option("--jobs", type=int, default=None, help="parallel trainings (default: CPU cores)")
@click.option("--protocol", type=click.Choice(["honest", "paper"]), default="honest", show_default=True)
@click.option("--rows", default=None, help="comma-separated subset of rows to run")
@_SET
@_clean_errors
def ablate_cmd(dataset, fold, cache, cache_root, run_dir, jobs, protocol, rows, overrides):
    """Train the paper's ablation rows and design variants from one cache; print the table."""
    from ..ablate import ablate, format_table

    res = ablate(dataset, fold=fold, cache=cache, cache_root=cache_root, run_dir=run_dir, jobs=jobs,
                 protocol=protocol, overrides=overrides, rows=rows.split(",") if rows else None)
    click.echo(format_table(res))


@click.command("cv")
@click.argument("dataset")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="dataset folder for stage one (run only when its cache is missing)")
@click.option("--cache", type=click.Path(), default=None, help="use this cache (skips stage one)")
@click.option("--cache-root", type=click.Path(), default=None)
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True, help="seeds 0..N-1 per fold")
@click.option("--protocol", type=click.Choice(["honest", "paper", "both"]), default="honest", show_default=True,
              help="both: the honest number and the published-style one (best epoch on test) side by side")
@click.option("--split", type=click.Choice(["official", "louo", "dev"]), default="official", show_default=True,
              help="official: the annotation files' folds; louo: leave one surgeon out (JIGSAWS); dev: 3 inner "
                   "folds inside each official training set, test folds never read (to compare recipes)")
@click.option("--methods", default="udaqa,i3d+mlp,ridge", show_default=True,
              help="comma-separated: udaqa (the stage's recipe), i3d+mlp (ablation baseline), ridge")
@click.option("--jobs", type=int, default=None, help="runs in parallel (default: CPU cores)")
@click.option("--samples", type=click.IntRange(min=1), default=50, show_default=True,
              help="prior draws per test sample")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="output folder (default: runs/<dataset>/cv-<split>)")
@_SET
@click.option("--progress/--no-progress", default=True)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON (keys: see udaqa_pipeline.cv)")
@_clean_errors
def cv_cmd(dataset, root, cache, cache_root, seeds, protocol, split, methods, jobs, samples, out, overrides,
           progress, as_json):
    """Cross-validate DATASET: every fold x seed trained and evaluated, baselines on the same cache and
    folds, one table (mean +- sd over seeds, tagged with the protocol); writes cv.json and
    predictions.parquet."""
    from ..cv import cross_validate, format_table

    res = cross_validate(dataset, root=root, cache=cache, cache_root=cache_root, overrides=overrides, seeds=seeds,
                         protocol=protocol, split=split, methods=[m.strip() for m in methods.split(",") if m.strip()],
                         jobs=jobs, out=out, samples=samples, progress=progress)
    click.echo(json.dumps(res, indent=1, default=float) if as_json else format_table(res))
