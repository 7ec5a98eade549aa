"""Reference log-probabilities cached on disk.

The reference is the frozen base (plus a frozen init adapter, if any) with every LoRA branch
switched off. Its log-probs depend only on the weights and the token ids, so they are
computed once per (weights, tokenized data) and kept under the cache folder: a β sweep or a
resumed run reads them instead of running a second forward pass every step. The precompute is
chunked and checkpointed (reference_logps), so a kill or Ctrl-C during it loses little.

An entry holds named per-entry columns: "chosen" and "rejected" for pairs (plus LD-DPO's
"chosen_tail" and "rejected_tail" when a run asks for them), "completion" for KTO's
completions. An entry missing a column a run needs is recomputed with every column it needs,
and an entry with more columns than asked serves a run that needs fewer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_dpo.data import TokenizedSplit
from mlx_dpo.distributed import Ranks

CACHE_ENV = "MLX_DPO_CACHE"
CACHE_VERSION = "1"
# A precompute saves what it has done at most this often (seconds): a kill loses no more.
CHECKPOINT_SECONDS = 30.0
PAIR_COLUMNS = ("chosen", "rejected")


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


def load_cached(
    key: str, num_pairs: int, columns: tuple[str, ...] = PAIR_COLUMNS
) -> tuple[np.ndarray, ...] | None:
    """The cached columns of an entry, in `columns` order; None when it is missing, corrupt,
    of another length or lacks a column."""
    path = _path(key)
    if not path.exists():
        return None
    try:
        arrays = mx.load(str(path))
        found = tuple(np.array(arrays[name], dtype=np.float32) for name in columns)
    except Exception:  # a corrupt (or older, narrower) cache file is recomputed, never trusted
        return None
    if any(values.shape != (num_pairs,) for values in found):
        return None
    return found


def store(key: str, columns: dict[str, np.ndarray], meta: dict) -> Path:
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")
    mx.save_safetensors(
        str(tmp),
        {name: mx.array(values) for name, values in columns.items()},
        metadata={"meta": json.dumps(meta)},
    )
    os.replace(tmp, path)
    return path


class Interrupted(Exception):
    """The precompute stopped on request (Ctrl-C, SIGTERM, a stop command) after saving what
    it had: the next start with the same weights and data continues from there."""

    def __init__(self, done: int, total: int):
        super().__init__(f"stopped after {done} of {total} pairs")
        self.done, self.total = done, total


def _partial_path(key: str, ranks: Ranks) -> Path:
    return cache_dir() / "reference" / f"{key}.partial-{ranks.rank}of{ranks.size}.npz"


def _load_partial(
    path: Path, total: int, columns: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            values = {name: stored[name].astype(np.float32) for name in columns}
            done = stored["done"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if any(v.shape != (total,) for v in values.values()) or done.shape != (total,):
        return None
    return values, done.astype(bool)


def _save_partial(path: Path, values: dict[str, np.ndarray], done: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            np.savez(handle, done=done, **values)
        os.replace(tmp, path)
    except OSError:  # no room for the checkpoint: the precompute goes on without one
        tmp.unlink(missing_ok=True)


def reference_logps(
    key: str,
    split: TokenizedSplit,
    compute: Callable[[list[int]], tuple[np.ndarray, ...]],
    batch_size: int,
    progress: Callable[[int, int, bool, float | None], None] | None = None,
    use_cache: bool = True,
    ranks: Ranks | None = None,
    should_stop: Callable[[], bool] | None = None,
    columns: tuple[str, ...] = PAIR_COLUMNS,
) -> tuple[np.ndarray, ...]:
    """Per-pair (or per-completion) reference log-probs of a split, one array per column
    (default chosen, rejected), from the cache or computed in batches with
    `compute(positions)` (which returns the columns in order). `progress(done, total, cached,
    eta_seconds)` reports at the start (the pairs a resumed precompute already has) and after
    each batch.

    Chunked and checkpointed: what is done is saved beside the cache entry at most every
    CHECKPOINT_SECONDS, so a killed precompute resumes from its last chunk; `should_stop()`
    is asked between batches and, when true, the work is saved and Interrupted raised.
    In a distributed run each rank computes a shard and the results are summed, unless every
    rank already has them cached."""
    ranks = ranks or Ranks(None, 0, 1)
    total = len(split)
    cached = load_cached(key, total, columns) if use_cache else None
    if ranks.all(cached is not None):
        if progress:
            progress(total, total, True, 0.0)
        return cached
    # Length-sorted batches pad little; results go back to their pairs' positions.
    order = np.argsort(split.pair_lengths(), kind="stable")[ranks.rank :: ranks.size]
    partial_path = _partial_path(key, ranks)
    partial = _load_partial(partial_path, total, columns) if use_cache else None
    if partial is None:
        values = {name: np.zeros(total, dtype=np.float32) for name in columns}
        done_mask = np.zeros(total, dtype=bool)
    else:
        values, done_mask = partial
    resumed = int(done_mask[order].sum())
    done = resumed
    if progress:
        progress(min(done * ranks.size, total), total, False, None)
    tic = last_save = time.monotonic()
    for start in range(0, len(order), batch_size):
        positions = order[start : start + batch_size]
        stop = should_stop is not None and should_stop()
        if ranks.size > 1:
            stop = ranks.any(stop)
        if stop:
            if use_cache:
                _save_partial(partial_path, values, done_mask)
            raise Interrupted(min(done * ranks.size, total), total)
        if done_mask[positions].all():
            continue
        for name, batch_values in zip(columns, compute(positions.tolist()), strict=True):
            values[name][positions] = batch_values
        done_mask[positions] = True
        done += len(positions)
        now = time.monotonic()
        if use_cache and now - last_save >= CHECKPOINT_SECONDS:
            _save_partial(partial_path, values, done_mask)
            last_save = now
        if progress:
            rate = (done - resumed) / max(now - tic, 1e-9)
            eta = (len(order) - done) / rate if rate > 0 else None
            progress(min(done * ranks.size, total), total, False, eta)
    values = {name: ranks.sum(column) for name, column in values.items()}
    if use_cache:
        store(key, values, {"split": split.name, "pairs": total, "columns": list(columns)})
        partial_path.unlink(missing_ok=True)
    return tuple(values[name] for name in columns)
