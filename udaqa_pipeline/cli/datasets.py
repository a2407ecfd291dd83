"""``datasets list`` and ``datasets inspect``: thin shells over :mod:`udaqa_pipeline.datasets`."""

from __future__ import annotations

import json

import click

from .options import Group, json_option, root_option, set_option, stage_argument


@click.group("datasets", cls=Group)
def datasets_group() -> None:
    """Dataset adapters: what is supported, and what an annotation folder holds."""


@datasets_group.command("list")
def list_cmd() -> None:
    """The dataset adapters and the stage configs that use them."""
    from ..config import available_stages, read_stage
    from ..datasets import DATASETS

    for stage in available_stages():
        d = read_stage(stage).get("dataset", {})
        adapter = d.get("adapter", d.get("name", stage))
        note = "" if adapter in DATASETS else "  (no adapter)"
        click.echo(f"{stage:<12} adapter={adapter:<11} root={d.get('root', '.')}{note}")


def _human(info: dict) -> str:
    lines = [f"dataset          {info['dataset']}", f"samples          {info['n_samples']}"]
    for k, v in info["folds"].items():
        lines.append(f"fold {k:<11} train {v['train']}, test {v['test']}")
    lines.append("judges/sample    " + ", ".join(f"{k}: {v}" for k, v in info["judges_per_sample"].items()))
    lines.append("rules            " + ", ".join(f"{k}: {v}" for k, v in info["rules"].items()))
    ex = f" (e.g. {', '.join(info['rule_mismatch_examples'][:5])})" if info["rule_mismatches"] else ""
    lines.append(f"rule mismatches  {info['rule_mismatches']}{ex}")
    odd = info.get("judge_outliers", [])
    fixes = ", ".join(f"{o['id']} judge {o['judge']}: {o['value']:g} -> {'dropped' if o['used'] is None else format(o['used'], 'g')}"
                      for o in odd[:3])
    lines.append(f"judge outliers   {len(odd)}" + (f" ({fixes}{', ...' if len(odd) > 3 else ''})" if odd else ""))
    for g, (lo, hi) in info["score_range"].items():
        lines.append(f"scores {g:<9} {lo:g} .. {hi:g}")
    lines += [f"warning: {w}" for w in info["warnings"]]
    return "\n".join(lines)


@datasets_group.command("inspect")
@stage_argument(required=True)
@root_option
@set_option
@json_option
def inspect_cmd(stage, root, overrides, as_json) -> None:
    """Summarise STAGE's annotation files (no frames needed): samples, folds, judge panels, samples
    whose final score breaks the scoring rule, judge values off the judge scale (and what training
    gets instead: value/10 or the judge dropped), score ranges, and warnings about the files. A file
    with NaN/inf scores or a shape other than the published one is refused, naming it.

    STAGE is a stage name (mtl, finediving, jigsaws, aqa7, folder) or a stage TOML path. --json
    prints one object (dataset, n_samples, folds, judges_per_sample, rule_mismatches, score_range,
    judge_outliers, ...).
    """
    from ..config import resolve
    from ..datasets import inspect_dataset

    cfg = resolve(stage, overrides)
    info = inspect_dataset(cfg.dataset.name or stage, root, cfg)
    click.echo(json.dumps(info, indent=2) if as_json else _human(info))


def register(main: click.Group) -> None:
    """Add ``datasets list`` and ``datasets inspect`` to ``main``."""
    main.add_command(datasets_group)
