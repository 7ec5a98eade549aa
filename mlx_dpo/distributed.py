"""Data parallelism over MLX's own distributed engine (`mlx.launch`): each rank reads a
disjoint shard of every global batch, gradients are averaged, and rank 0 alone writes the
run directory. With one process every call here is the identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np


@dataclass
class Ranks:
    group: Any
    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: np.ndarray) -> np.ndarray:
        if self.size == 1:
            return values
        total = mx.distributed.all_sum(mx.array(values), group=self.group, stream=mx.cpu)
        return np.array(total)

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one: stop and failure decisions are shared."""
        return bool(self.sum(np.array([float(flag)], dtype=np.float32))[0] > 0)

    def all(self, flag: bool) -> bool:
        return not self.any(not flag)

    def broadcast(self, arrays: dict[str, mx.array]) -> dict[str, mx.array]:
        """Rank 0's arrays on every rank (others pass arrays of the right shapes)."""
        if self.size == 1:
            return arrays
        out = {}
        # Collectives pair up by call order: every rank must walk the names in the same order
        # (a dict loaded from a checkpoint and one built in memory order their keys apart).
        for name in sorted(arrays):
            value = arrays[name]
            mine = value if self.is_main else mx.zeros_like(value)
            out[name] = mx.distributed.all_sum(mine, group=self.group, stream=mx.cpu)
        mx.eval(out)
        return out


def init() -> Ranks:
    group = mx.distributed.init()
    return Ranks(group=group, rank=group.rank(), size=group.size())
