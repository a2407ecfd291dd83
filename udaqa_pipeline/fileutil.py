"""Small file helpers shared by the stages: crash-safe writes and content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers (and a rerun after kill -9 or a crash) see the old
    file or the new one, never a partial one: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks (weights, sample tables, checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def strict_json(obj: Any, indent: int | None = 1) -> str:
    """``obj`` as standard JSON: NaN and infinities (undefined metrics) become ``null``, numpy scalars and
    arrays plain numbers and lists, other unknown objects their ``str``; what jq and every other parser
    accepts (Python's default would write bare ``NaN``)."""
    import math

    import numpy as np

    def clean(x: Any) -> Any:
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.ndarray):
            return clean(x.tolist())
        if isinstance(x, np.generic):
            x = x.item()
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        return str(x)

    return json.dumps(clean(obj), indent=indent, allow_nan=False)
