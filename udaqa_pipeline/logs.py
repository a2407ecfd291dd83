"""Where the package's log records go when a command runs: library modules log to
``logging.getLogger(__name__)`` (all under the ``udaqa_pipeline`` logger) and never print; the
commands (the CLI, the demo's ``main``) call :func:`log_to_stderr` once, so a user sees those
messages (weights installs, stage one's progress, training's epochs) as bare lines on stderr."""

from __future__ import annotations

import logging
import sys

_NAME = "udaqa_pipeline"


class _Stderr(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a record is written (click's test runner
    and pytest swap it after the handler is installed)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def log_to_stderr() -> logging.Handler:
    """Install the one handler of the ``udaqa_pipeline`` logger (INFO and up, the bare message, to
    stderr) and set the logger to INFO; calling it again keeps the one handler. Returns it."""
    logger = logging.getLogger(_NAME)
    logger.setLevel(logging.INFO)
    for h in logger.handlers:
        if isinstance(h, _Stderr):
            return h
    h = _Stderr()
    h.setLevel(logging.INFO)
    h.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(h)
    return h
