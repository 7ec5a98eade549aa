"""Reference log-probabilities cached on disk.

The reference is the frozen base (plus a frozen init adapter, if any) with every LoRA branch
switched off. Its log-probs depend only on the weights and the token ids, so they are
computed once per (weights, tokenized data) and kept under the cache folder: a β sweep or a
resumed run reads them instead of running a second forward pass every step.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_dpo.data import TokenizedSplit
from mlx_dpo.distributed import Ranks

CACHE_ENV = "MLX_DPO_CACHE"
CACHE_VERSION = "1"


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mlx-dpo"
    )
    return Path(root)


def cache_key(weights_fingerprint: str, split: TokenizedSplit) -> str:
    """Weights (base, quantization and init adapter) and every token id of the split."""
    digest = hashlib.sha256()
    digest.update(CACHE_VERSION.encode())
    digest.update(weights_fingerprint.encode())
    digest.update(split.fingerprint().encode())
    return digest.hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / "reference" / f"{key}.safetensors"


def load_cached(key: str, num_pairs: int) -> tuple[np.ndarray, np.ndarray] | None:
    path = _path(key)
    if not path.exists():
        return None
    try:
        arrays = mx.load(str(path))
        chosen = np.array(arrays["chosen"], dtype=np.float32)
        rejected = np.array(arrays["rejected"], dtype=np.float32)
    except Exception:  # a corrupt cache file is recomputed, never trusted
        return None
    if chosen.shape != (num_pairs,) or rejected.shape != (num_pairs,):
        return None
    return chosen, rejected


def store(key: str, chosen: np.ndarray, rejected: np.ndarray, meta: dict) -> Path:
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")
    mx.save_safetensors(
        str(tmp),
        {"chosen": mx.array(chosen), "rejected": mx.array(rejected)},
        metadata={"meta": json.dumps(meta)},
    )
    os.replace(tmp, path)
    return path


def reference_logps(
    key: str,
    split: TokenizedSplit,
    compute: Callable[[list[int]], tuple[np.ndarray, np.ndarray]],
    batch_size: int,
    progress: Callable[[int, int, bool], None] | None = None,
    use_cache: bool = True,
    ranks: Ranks | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair reference log-probs (chosen, rejected) for a split, from the cache or computed
    in batches with `compute(pair_positions)`. `progress(done, total, cached)` reports.
    In a distributed run each rank computes a shard and the results are summed, unless every
    rank already has them cached."""
    ranks = ranks or Ranks(None, 0, 1)
    total = len(split)
    cached = load_cached(key, total) if use_cache else None
    if ranks.all(cached is not None):
        if progress:
            progress(total, total, True)
        return cached
    chosen = np.zeros(total, dtype=np.float32)
    rejected = np.zeros(total, dtype=np.float32)
    # Length-sorted batches pad little; results go back to their pairs' positions.
    order = sorted(
        range(total),
        key=lambda i: (
            len(split.pairs[i].prompt_ids)
            + max(len(split.pairs[i].chosen_ids), len(split.pairs[i].rejected_ids))
        ),
    )
    order = order[ranks.rank :: ranks.size]
    done = 0
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        batch_chosen, batch_rejected = compute(positions)
        chosen[positions] = batch_chosen
        rejected[positions] = batch_rejected
        done += len(positions) * ranks.size
        if progress:
            progress(min(done, total), total, False)
    chosen, rejected = ranks.sum(chosen), ranks.sum(rejected)
    if use_cache:
        store(key, chosen, rejected, {"split": split.name, "pairs": total})
    return chosen, rejected
