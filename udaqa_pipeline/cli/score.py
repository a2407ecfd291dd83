"""`score` (a user's own video with a trained run), `finetune` (I3D unfrozen) and
`evaluate-finetuned`."""

from __future__ import annotations


import click

from ..fileutil import strict_json
from .options import (command, device_option, force_option, jobs_option, json_option,
                      max_epoch_minutes_option, progress_option, root_option, run_option, runs_root_option,
                      set_option, stage_argument, stage_or_latest)


def register(main: click.Group) -> None:
    """Add this module's commands to ``main``."""
    main.add_command(score_cmd)
    main.add_command(finetune_cmd)
    main.add_command(evaluate_finetuned_cmd)


_DECODE_JOBS = "decoding processes (default: min(8, CPU cores) on GPU, 0 = in this process on CPU)"


@command("score")
@click.argument("path", type=click.Path())
@run_option("run directory (holds checkpoint.pt)", required=True)
@click.option("--judges", type=int, default=None, help="judges T per panel (default: the run's rule needs)")
@click.option("--difficulty", type=float, default=None, help="degree of difficulty, for rules that multiply by it")
@click.option("--samples", type=int, default=50, show_default=True,
              help="panels S drawn per video (a video's 80% interval of the final score needs 10 or more)")
@click.option("--group", default=None, help="scaling group (action/task) for runs scaled per group")
@click.option("--rule", default=None, help="scoring rule (default: the run's dataset rule)")
@click.option("--seed", type=int, default=0, show_default=True)
@device_option
@click.option("--expect-stage", default=None, metavar="STAGE",
              help="refuse a run trained on another stage or dataset")
@json_option
@click.option("--out", type=click.Path(), default=None,
              help="Parquet table of the rows (default for a folder of videos: ./scores.parquet)")
def score_cmd(path, run_dir, judges, difficulty, samples, group, rule, seed, device, expect_stage,
              as_json, out):
    """Score PATH (a video, a frame folder, or a folder of videos) with a trained run."""
    from ..inference.score import format_row, score

    res = score(path, run_dir, judges=judges, difficulty=difficulty, samples=samples, group=group, rule=rule,
                seed=seed, device=device, out=out, expect_stage=expect_stage)
    if as_json:
        obj = res if res["batch"] else {**res["rows"][0], **({"out": res["out"]} if "out" in res else {})}
        click.echo(strict_json(obj, indent=None))
        return
    for row in res["rows"]:
        click.echo(format_row(row))
    if "out" in res:
        bad = sum(r["status"] != "ok" for r in res["rows"])
        click.echo(f"wrote {len(res['rows'])} rows ({bad} unreadable) to {res['out']}")


@command("finetune")
@stage_argument(required=False)
@root_option
@click.option("--fold", type=int, default=0, show_default=True, help="test fold (trains on the others)")
@click.option("--cv", type=int, default=None, help="K-fold cross-validation over the whole dataset")
@run_option("run directory (default: runs/<stage>/finetune-fold<k>); under torchrun spell it --run-dir",
            "--run-dir")
@runs_root_option
@click.option("--protocol", type=click.Choice(["honest", "paper"]), default="honest", show_default=True)
@set_option
@click.option("--resume/--no-resume", default=True, show_default=True)
@force_option
@max_epoch_minutes_option
@jobs_option(_DECODE_JOBS)
@device_option
@click.option("--limit", type=int, default=None, help="first N samples only")
@progress_option
def finetune_cmd(stage, root, fold, cv, run_dir, runs_root, protocol, overrides, resume, force, max_epoch_minutes,
                 jobs, device, limit, progress):
    """Train UD-AQA with the I3D backbone unfrozen, from STAGE's frames (not the cache); the same as
    `train --finetune-backbone`, with --jobs and --limit."""
    from .. import resolve
    from ..engine.finetune import finetune
    from ..runs.layout import RunSpec, stage_name
    from .train import echo_runs

    stage = stage_or_latest(stage, runs_root)
    if run_dir is None and runs_root is not None:
        run_dir = resolve.run_dir(stage, "finetune", fold=fold, cv=cv, runs_root=runs_root)
    out = finetune(stage, root, spec=RunSpec(stage_name(stage), fold=fold, cv=cv, protocol=protocol), run_dir=run_dir,
                   overrides=overrides, resume=resume, progress=progress, force=force, jobs=jobs, device=device,
                   max_epoch_minutes=max_epoch_minutes, limit=limit)
    echo_runs(out)


@command("evaluate-finetuned")
@run_option("the fine-tuned run directory (holds checkpoint.pt)")
@root_option
@click.option("--judges", type=int, default=None, help="judges T per sampled panel (default: the rule's)")
@click.option("--samples", type=int, default=10, show_default=True, help="panels S drawn per sample")
@device_option
@jobs_option(_DECODE_JOBS)
@json_option
def evaluate_finetuned_cmd(run_dir, root, judges, samples, device, jobs, as_json):
    """Evaluate the fine-tuned run --run on its test fold, features from its own backbone (writes
    <run>/eval/)."""
    from ..evaluation.report import format_metrics
    from ..evaluation.finetuned import evaluate_finetuned

    if run_dir is None:
        raise click.UsageError("pass the fine-tuned run: --run DIR")
    m = evaluate_finetuned(run_dir, root, judges=judges, samples=samples, device=device, jobs=jobs)
    click.echo(strict_json(m) if as_json else format_metrics(m))
