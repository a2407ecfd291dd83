"""Restricted unpickling for files we did not write (annotation pickles, DeepMind's checkpoint).

Plain ``pickle.load`` runs whatever callable a file names. The published AQA annotation files and
the I3D checkpoint only need builtin containers plus numpy array and scalar reconstruction, so
:class:`SafeUnpickler` resolves exactly those globals and refuses every other one *before* calling
anything.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from .errors import UdaqaError

# numpy moved its internals from numpy.core to numpy._core in 2.0; files written by either exist.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")

_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _mod in _NUMPY_CORE:
    _ALLOWED[(_mod, "_reconstruct")] = np._core.multiarray._reconstruct
    _ALLOWED[(_mod, "scalar")] = np._core.multiarray.scalar
    _ALLOWED[(_mod, "_frombuffer")] = np._core.numeric._frombuffer


def _codecs_encode(obj: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles of numpy arrays store raw bytes as ``_codecs.encode(text, 'latin1')``.
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode("latin1")


_ALLOWED[("_codecs", "encode")] = _codecs_encode


class UnsafePickleError(UdaqaError, pickle.UnpicklingError):
    """The pickle names a global outside the allow-list (it could run code); nothing was called."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only builtin containers and numpy arrays/dtypes/scalars."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: only builtin containers and numpy arrays "
                "are allowed in annotation and weight pickles"
            ) from None


def safe_load(file: str | Path | IO[bytes] | bytes, *, encoding: str = "latin1") -> Any:
    """Load a pickle with :class:`SafeUnpickler`.

    ``encoding='latin1'`` lets Python 3 read the Python-2 pickles some AQA releases ship.
    Raises :class:`UnsafePickleError` for a disallowed global and ``pickle.UnpicklingError`` /
    ``EOFError`` for a damaged file; callers wrap these with the file's path.
    """
    if isinstance(file, (bytes, bytearray)):
        return SafeUnpickler(io.BytesIO(file), encoding=encoding).load()
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return SafeUnpickler(f, encoding=encoding).load()
    return SafeUnpickler(file, encoding=encoding).load()
