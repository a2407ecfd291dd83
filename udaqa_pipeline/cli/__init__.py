"""Thin command line: each submodule registers the commands of one stage; options are the
library functions' arguments passed straight through."""

from __future__ import annotations

import importlib

import click

from .. import __version__

_COMMAND_MODULES = ("backbone", "datasets", "features", "train", "score")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="udaqa-pipeline")
def main() -> None:
    """UD-AQA: score action quality with sampled judge panels and uncertainty."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(main)
