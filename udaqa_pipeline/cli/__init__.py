"""Thin command line: each submodule registers the commands of one stage; options are the
library functions' arguments passed straight through, spelled the same in every command
(:mod:`.options`).

Messages of the library (its ``udaqa_pipeline`` logger, INFO and up) go to stderr as bare lines
through the one handler installed here (:func:`~udaqa_pipeline.logs.log_to_stderr`); what a command
prints on stdout is its result.

Errors: a :class:`~udaqa_pipeline.errors.UdaqaError` (raised on purpose, its message names the
file and the fix) is printed here, once, as one line ``error: <message>`` with exit status 1; a
usage error (unknown option, bad choice) is one line too, ``error: <message> (see `<command>
--help`)``, exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from .. import __version__
from ..errors import UdaqaError
from ..logs import log_to_stderr
from .options import Group

_COMMAND_MODULES = ("backbone", "datasets", "features", "train", "score")


class _Main(Group):
    def main(self, args=None, prog_name=None, **extra):
        # click's usage errors print the usage, a hint and the error on three lines; ours are one
        extra.pop("standalone_mode", None)
        try:
            rv = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "udaqa-pipeline"
            click.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        log_to_stderr()
        try:
            return super().invoke(ctx)
        except UdaqaError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(1)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="udaqa-pipeline")
def main() -> None:
    """UD-AQA: score action quality with sampled judge panels and uncertainty."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(main)
