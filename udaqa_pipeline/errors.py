"""The one base class of the errors this package raises on purpose.

Every error raised because the input cannot be used as asked (a video that does not decode, an
annotation file in another shape, a config key that does not exist, a checkpoint of another run,
missing weights, a cache of other settings) derives from :class:`UdaqaError`; its message names
the file and the fix. The command line catches this one class, once, and prints ``error:
<message>`` (exit status 1). Any other exception is a bug and keeps its traceback.

The subclasses live next to the code that raises them (``VideoError`` in ``video/decode.py``,
``ConfigError`` in ``config.py``, ...); those that callers already caught as ``ValueError`` or
``RuntimeError`` still are one.
"""

from __future__ import annotations


class UdaqaError(Exception):
    """Raised on purpose: the input cannot be used as asked. The message names the file (or the
    option) and the fix, in one line, so the CLI prints it without a traceback."""


class ArgumentError(UdaqaError, ValueError):
    """A keyword argument (a command-line option) whose value cannot work; the message names the
    option and the values it takes."""
