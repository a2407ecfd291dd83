"""The CLI convention: one decorator per shared option, so an option has one spelling and one
meaning in every command (the table of what each means is the README's "Commands" section, and
``tests/test_cli_surface.py`` holds every command against every option): a positional STAGE
(optional for stage two: :func:`stage_or_latest`), ``--root``, ``--cache``, ``--cache-root``,
``--run``, ``--runs-root``, ``--set``, ``--progress/--no-progress``, ``--device``, ``--json``, ``--jobs``
(processes) and ``--threads`` (threads).
"""

from __future__ import annotations

from typing import Any, Callable

import click

F = Callable[..., Any]


class Command(click.Command):
    """A command of the convention (the one class, so that the convention has one place to grow)."""


class Group(click.Group):
    """A group whose commands and subgroups follow the convention (:class:`Command`)."""

    command_class = Command
    group_class = type  # subgroups are Groups too


def command(name: str) -> Callable[[F], Command]:
    """``click.command`` with :class:`Command`."""
    return click.command(name, cls=Command)


def stage_argument(*, required: bool) -> Callable[[F], F]:
    """The stage name, positional (``[STAGE]`` where the most recent run's can stand in)."""
    return click.argument("stage", required=required, metavar="STAGE" if required else "[STAGE]")


def stage_or_latest(stage: str | None, runs_root: str | None = None) -> str:
    """``stage``, or (when omitted) the stage of the most recent run under ``runs_root``, said on stderr."""
    if stage is not None:
        return stage
    from ..config import runs_root as _runs_root
    from ..resolve import stage_from_runs

    found = stage_from_runs(runs_root)
    click.echo(f"stage {found}: the most recent run under {_runs_root(runs_root)} (name the stage to choose another)",
               err=True)
    return found


_DIR = click.Path(file_okay=False)

root_option = click.option("--root", type=_DIR, default=None,
                           help="Dataset folder (default: dataset.root of the stage TOML).")
cache_option = click.option("--cache", type=_DIR, default=None,
                            help="Feature cache directory <cache-root>/<stage>-<hash> (default: the stage's "
                                 "complete cache under --cache-root).")
cache_root_option = click.option("--cache-root", type=_DIR, default=None,
                                 help="Folder of the feature caches and weights/ (default $UDAQA_CACHE or "
                                      "<repo>/cache).")
runs_root_option = click.option("--runs-root", type=_DIR, default=None,
                                help="Folder of the runs, where default run directories live and an omitted STAGE "
                                     "is looked up (default $UDAQA_RUNS or <repo>/runs).")
set_option = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a stage config value, e.g. --set train.epochs=20 (repeatable; unknown "
                               "keys are refused).")
progress_option = click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
device_option = click.option("--device", default=None,
                             help="torch device: cpu, cuda, cuda:1 (default: CUDA when present, else cpu).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")


def run_option(help: str, *extra: str, required: bool = False) -> Callable[[F], F]:
    """``--run DIR``: the run directory (``extra``: other spellings that stay, e.g. ``--run-dir``)."""
    return click.option("--run", *extra, "run_dir", type=click.Path(), default=None, required=required, help=help)


def jobs_option(help: str) -> Callable[[F], F]:
    """``--jobs N``: how many processes run in parallel (``help`` says which)."""
    return click.option("--jobs", type=int, default=None, help=help)


def threads_option(help: str) -> Callable[[F], F]:
    """``--threads N``: how many threads one process uses (``help`` says for what)."""
    return click.option("--threads", type=click.IntRange(min=1), default=None, help=help)


#: Fine-tuning (``train --finetune-backbone`` and ``finetune``).
force_option = click.option("--force", is_flag=True, help="Fine-tune even where an epoch is estimated too long.")
max_epoch_minutes_option = click.option(
    "--max-epoch-minutes", type=float, default=30.0, show_default=True,
    help="Refuse to fine-tune when an epoch is estimated to take longer (unless --force).")
