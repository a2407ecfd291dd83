"""Deterministic sample split across processes/hosts, and torchrun detection.

Sample ``i`` (in dataset order) belongs to shard ``i % n``: round robin spreads long and short
videos evenly and depends only on (N, n), so every rank, every host and every rerun agree without
talking to each other. Finished samples are staged under their global index, so which shard
computed a sample never changes the merged cache.
"""

from __future__ import annotations

import os
from typing import NamedTuple


class Shard(NamedTuple):
    index: int
    count: int

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def parse_shard(spec: str | None) -> Shard:
    """``"i/n"`` (0-based i) -> :class:`Shard`; ``None`` -> the single shard 0/1."""
    if spec is None or spec == "":
        return Shard(0, 1)
    try:
        i, n = (int(x) for x in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"--shard {spec!r}: expected i/n with 0 <= i < n, e.g. 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"--shard {spec!r}: expected i/n with 0 <= i < n, e.g. 0/4")
    return Shard(i, n)


def torchrun_env() -> Shard | None:
    """The shard of this process under torchrun (``RANK``/``WORLD_SIZE`` set, world > 1), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return None
    return Shard(int(os.environ["RANK"]), world)


def shard_indices(n_samples: int, shard: Shard) -> list[int]:
    """Global sample indices of ``shard``: ``i % count == index``."""
    return list(range(shard.index, n_samples, shard.count))
