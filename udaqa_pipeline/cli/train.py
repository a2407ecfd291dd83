"""`train`, `evaluate`, `ablate`, `cv`: stage two from the cache (options = library kwargs).

STAGE is optional here: omitted, the stage of the most recent run under the runs root is used
(:func:`udaqa_pipeline.resolve.stage_from_runs`, said on stderr).
"""

from __future__ import annotations


import click

from ..fileutil import strict_json
from .options import (cache_option, cache_root_option, command, device_option, force_option, jobs_option,
                      json_option, max_epoch_minutes_option, progress_option, root_option, run_option,
                      runs_root_option, set_option, stage_argument, stage_or_latest, threads_option)


def register(main: click.Group) -> None:
    """Add this module's commands to ``main``."""
    main.add_command(train_cmd)
    main.add_command(evaluate_cmd)
    main.add_command(ablate_cmd)
    main.add_command(cv_cmd)


_PROTOCOL = click.option("--protocol", type=click.Choice(["honest", "paper"]), default="honest", show_default=True,
                         help="honest: model chosen without the test fold (train.select); paper: best epoch on test")
_SPLIT = click.option("--split", type=click.Choice(["official", "louo", "dev"]), default="official",
                      show_default=True,
                      help="official: the annotation files' folds; louo: leave one surgeon out (JIGSAWS); dev: inner "
                           "folds of the official training sets (see cv --split dev)")
_FOLD = click.option("--fold", type=int, default=0, show_default=True, help="test fold (trains on the others)")
_CV = click.option("--cv", type=int, default=None, help="K-fold cross-validation over the whole dataset")


@command("train")
@stage_argument(required=False)
@_FOLD
@_CV
@cache_option
@cache_root_option
@run_option("run directory (default: runs/<stage>/fold<k>); under torchrun spell it --run-dir", "--run-dir")
@runs_root_option
@_PROTOCOL
@_SPLIT
@set_option
@click.option("--resume/--no-resume", default=True, show_default=True)
@progress_option
@device_option
@click.option("--finetune-backbone", is_flag=True,
              help="unfreeze I3D: train from the dataset's frames, not the cache (the same as `finetune`)")
@root_option
@force_option
@max_epoch_minutes_option
def train_cmd(stage, fold, cv, cache, cache_root, run_dir, runs_root, protocol, split, overrides, resume, progress,
              device, finetune_backbone, root, force, max_epoch_minutes):
    """Train UD-AQA on STAGE's feature cache (no I3D forward), or end to end with --finetune-backbone.

    Prints a summary per model (per group with train.per_group) and, last, the run directory."""
    from .. import resolve
    from ..runs.layout import RunSpec, stage_name

    stage = stage_or_latest(stage, runs_root)
    spec = RunSpec(stage_name(stage), fold=fold, cv=cv, split=split, protocol=protocol)
    if finetune_backbone:
        from ..engine.finetune import finetune

        if run_dir is None and runs_root is not None:
            run_dir = resolve.run_dir(stage, "finetune", fold=fold, cv=cv, runs_root=runs_root)
        out = finetune(stage, root, spec=spec, run_dir=run_dir, overrides=overrides, resume=resume,
                       progress=progress, force=force, device=device, max_epoch_minutes=max_epoch_minutes)
    else:
        from ..engine.run import train

        if run_dir is None and runs_root is not None:
            run_dir = resolve.run_dir(stage, fold=fold, cv=cv, split=split, runs_root=runs_root)
        out = train(stage, cache=cache, cache_root=cache_root, spec=spec, run_dir=run_dir, overrides=overrides,
                    resume=resume, progress=progress, device=device)
    echo_runs(out)


def echo_runs(run_dir) -> None:
    """One line per trained model of ``run_dir`` (each group's under train.per_group): epochs, the
    kept epoch and how it was chosen, the calibration; then the directory to pass to evaluate/score."""
    import math
    from pathlib import Path

    from ..evaluation.evaluate import run_dirs
    from ..inference.run import load_run
    from ..runs.layout import CHECKPOINT

    dirs = [rd for rd in run_dirs(Path(run_dir)) if (rd / CHECKPOINT).is_file()]
    for rd in dirs:
        run = load_run(rd)
        ck = run.checkpoint
        best = ck["best"]
        score = best.get("score")
        how = {"last": "the last epoch", "inner_cv": "the inner-CV epoch count"}.get(
            ck.get("select"), f"best {ck.get('select')} score {score:.3f}" if isinstance(score, float)
            and math.isfinite(score) else f"{ck.get('select')} (no defined score: the last epoch)")
        kept = ck["epoch"] if best.get("model") is None else best["epoch"]  # load_run's fallback
        t = run.config.train
        top = ""
        if t.adapt == "top":
            top = f"; top of I3D trained{f' in the last {t.adapt_epochs} epochs' if t.adapt_epochs else ''}"
        avg = f", weights averaged over {best['averaged']} epochs" if best.get("averaged") else ""
        cal = ck.get("calibration")
        cal = f"; sampler calibrated on {cal['fitted_on']}" if cal else "; sampler not calibrated (train.calibrate)"
        click.echo(f"{rd}: {ck['epoch'] + 1} epochs, kept epoch {kept + 1} ({how}{avg}){top}{cal}")
    if len(dirs) > 1:
        click.echo(f"{run_dir}: one model per group above; `evaluate --run {run_dir}` scores them all, "
                   f"`score --run {dirs[0]}` scores with one")
    else:
        click.echo(str(run_dir))


@command("evaluate")
@stage_argument(required=False)
@click.option("--fold", type=int, default=0, show_default=True, help="test fold of the run")
@_CV
@_SPLIT
@run_option("run directory (default: runs/<stage>/fold<k>)")
@runs_root_option
@cache_option
@cache_root_option
@click.option("--judges", type=click.IntRange(min=1), default=None, help="judges T per sampled panel (default: the rule's)")
@click.option("--samples", type=click.IntRange(min=1), default=50, show_default=True,
              help="panels S drawn per sample (the final-score interval coverage needs 50 or more)")
@click.option("--sampler", type=click.Choice(["calibrated", "paper", "residual"]), default="calibrated",
              show_default=True, help="calibrated: the run's fitted judge noise; paper: prior draws only; "
                                      "residual: baseline (predicted mean + training residuals)")
@json_option
def evaluate_cmd(stage, fold, cv, split, run_dir, runs_root, cache, cache_root, judges, samples, sampler, as_json):
    """Score a trained run on its test fold; writes <run>/eval/{metrics.json,predictions.parquet,*.png}.

    The run is --run, else runs/<STAGE>/fold<k> (STAGE omitted: the stage of the most recent run)."""
    from .. import resolve
    from ..evaluation.evaluate import evaluate
    from ..evaluation.report import format_metrics, write_report

    if run_dir is None:
        run_dir = resolve.run_dir(stage_or_latest(stage, runs_root), fold=fold or 0, cv=cv, split=split,
                                  runs_root=runs_root)
    m = write_report(evaluate(run_dir, fold=fold, cache=cache, cache_root=cache_root, judges=judges, samples=samples,
                              sampler=sampler))
    click.echo(strict_json(m) if as_json else format_metrics(m))


@command("ablate")
@stage_argument(required=False)
@click.option("--fold", type=int, default=0, show_default=True, help="test fold")
@cache_option
@cache_root_option
@run_option("folder of the ablation runs, one per row (default: runs/<stage>/ablate-fold<k>)")
@runs_root_option
@jobs_option("rows trained in parallel, one process each (default: CPU cores)")
@threads_option("torch threads per row (default: CPU cores / jobs)")
@_PROTOCOL
@click.option("--rows", default=None, help="comma-separated subset of rows to run")
@set_option
@json_option
def ablate_cmd(stage, fold, cache, cache_root, run_dir, runs_root, jobs, threads, protocol, rows, overrides, as_json):
    """Train the paper's ablation rows and design variants from one cache; print the table."""
    from .. import resolve
    from ..experiments.ablate import ablate, format_table

    stage = stage_or_latest(stage, runs_root)
    if run_dir is None and runs_root is not None:
        run_dir = resolve.run_dir(stage, "ablate", fold=fold, runs_root=runs_root)
    res = ablate(stage, fold=fold, cache=cache, cache_root=cache_root, run_dir=run_dir, jobs=jobs,
                 threads=threads, protocol=protocol, overrides=overrides, rows=rows.split(",") if rows else None)
    click.echo(strict_json(res) if as_json else format_table(res))


@command("cv")
@stage_argument(required=False)
@root_option
@cache_option
@cache_root_option
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True, help="seeds 0..N-1 per fold")
@click.option("--protocol", type=click.Choice(["honest", "paper", "both"]), default="honest", show_default=True,
              help="both: the honest number and the published-style one (best epoch on test) side by side")
@click.option("--split", type=click.Choice(["official", "louo", "dev"]), default="official", show_default=True,
              help="official: the annotation files' folds; louo: leave one surgeon out (JIGSAWS); dev: 3 inner "
                   "folds inside each official training set, test folds never read (to compare recipes)")
@click.option("--methods", default="udaqa,i3d+mlp,ridge", show_default=True,
              help="comma-separated: udaqa (the stage's recipe), paper (the paper's recipe), i3d+mlp (ablation "
                   "baseline), ridge")
@jobs_option("runs trained in parallel, one process each (default: CPU cores)")
@click.option("--samples", type=click.IntRange(min=1), default=50, show_default=True,
              help="panels S drawn per test sample, with the run's sampler (the 80% coverage needs 50 or more)")
@run_option("folder of the cross-validation runs, cv.json and predictions.parquet (default: "
            "runs/<stage>/cv-<split>)")
@runs_root_option
@set_option
@progress_option
@json_option
def cv_cmd(stage, root, cache, cache_root, seeds, protocol, split, methods, jobs, samples, run_dir, runs_root,
           overrides, progress, as_json):
    """Cross-validate STAGE: every fold x seed trained and evaluated, baselines on the same cache and
    folds, one table (mean +- sd over seeds, tagged with the protocol); writes cv.json and
    predictions.parquet. With no cache, stage one runs first (from --root)."""
    from .. import resolve
    from ..experiments.cv import cross_validate, format_table

    stage = stage_or_latest(stage, runs_root)
    if run_dir is None and runs_root is not None:
        run_dir = resolve.run_dir(stage, "cv", split=split, runs_root=runs_root)
    res = cross_validate(stage, root=root, cache=cache, cache_root=cache_root, overrides=overrides,
                         seeds=seeds, protocol=protocol, split=split,
                         methods=[m.strip() for m in methods.split(",") if m.strip()],
                         jobs=jobs, run_dir=run_dir, samples=samples, progress=progress)
    click.echo(strict_json(res) if as_json else format_table(res))
