"""Thin command line: each submodule registers the commands of one stage; options are the
library functions' arguments passed straight through, spelled the same in every command
(:mod:`.options`).

Messages of the library (its ``udaqa_pipeline`` logger, INFO and up) go to stderr as bare lines
through the one handler installed here (:func:`~udaqa_pipeline.logs.log_to_stderr`); what a command
prints on stdout is its result.

Errors: a :class:`~udaqa_pipeline.errors.UdaqaError` (raised on purpose, its message names the
file and the fix) is printed here, once, as one line ``error: <message>`` with exit status 1;
any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__
from ..errors import UdaqaError
from ..logs import log_to_stderr
from .options import Group

_COMMAND_MODULES = ("backbone", "datasets", "features", "train", "score")


class _Main(Group):
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
