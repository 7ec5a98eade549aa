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

A wrong number here trains silently against a wrong reference, so an entry is trusted only
when its stored key and the SHA-256 of key and payload match (read_entry); anything else is
a miss that the caller hears about (`warn`) and recomputes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlx_dpo.batching import length_sorted_batches
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.distributed import Ranks
from mlx_dpo.events import atomic_write_bytes

CACHE_ENV = "MLX_DPO_CACHE"
# 2: entries carry their key and a SHA-256 of key and payload (version 1 trusted any file
# that parsed, so a flipped byte trained against a wrong reference).
CACHE_VERSION = "2"
# A precompute saves what it has done at most this often (seconds): a kill loses no more.
CHECKPOINT_SECONDS = 30.0
PAIR_COLUMNS = ("chosen", "rejected")


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mlx-dpo"
    )
    return Path(root)


# cache folder -> why it cannot be used ("" when it can): checked once per process.
_usable: dict[Path, str] = {}


def _cache_folder_problem(folder: Path) -> str:
    """Why nothing can be kept in `folder` (missing and cannot be made, read-only, not a
    folder), or "" when a file can be made in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return err.strerror or type(err).__name__
    return ""


def writable_cache_dir() -> Path | None:
    """The cache folder when files can be kept in it, else None: the reference log-probs,
    the token cache and the weights' hash memo then go on without a cache."""
    folder = cache_dir()
    if folder not in _usable:
        _usable[folder] = _cache_folder_problem(folder)
    return None if _usable[folder] else folder


def cache_problem() -> str | None:
    """The one warning a run gives when its cache folder cannot be used, or None."""
    if writable_cache_dir() is not None:
        return None
    return (
        f"cache folder {cache_dir()}: {_usable[cache_dir()]}; going on without a cache "
        f"(nothing is kept between runs; set {CACHE_ENV} to a folder you can write)"
    )


def cache_key(weights_fingerprint: str, split: TokenizedSplit) -> str:
    """Weights (base, quantization and init adapter) and every token id of the split."""
    digest = hashlib.sha256()
    digest.update(CACHE_VERSION.encode())
    digest.update(weights_fingerprint.encode())
    digest.update(split.fingerprint().encode())
    return digest.hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / "reference" / f"{key}.ref"


# An entry on disk: one line of JSON {"key", "pairs", "arrays", "sha256", "meta"}, then the
# payload: the arrays' bytes, one after another (float32 log-probs; a partial pass's "done"
# mask as bool). sha256 covers the key and the payload, so a flipped byte, a zero-filled
# block or another key's file is a miss.
DONE = "done"


def _dtype(name: str) -> np.dtype:
    return np.dtype(np.bool_ if name == DONE else np.float32).newbyteorder("<")


def _checksum(key: str, payload: bytes) -> str:
    return hashlib.sha256(key.encode() + b"\0" + payload).hexdigest()


def _entry_bytes(key: str, arrays: dict[str, np.ndarray], meta: dict) -> bytes:
    names = list(arrays)
    payload = b"".join(np.ascontiguousarray(arrays[n]).astype(_dtype(n)).tobytes() for n in names)
    pairs = len(next(iter(arrays.values())))
    header = {"key": key, "pairs": pairs, "arrays": names, "sha256": _checksum(key, payload),
              "meta": meta}  # fmt: skip
    return json.dumps(header).encode() + b"\n" + payload


def read_entry(path: Path, key: str, pairs: int) -> dict[str, np.ndarray] | str | None:
    """An entry's arrays; None when there is none; else why it cannot be trusted (a
    damaged file, another key's, another split's length): a miss, never used."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot read ({err.strerror})"
    line, _, payload = raw.partition(b"\n")
    try:
        header = json.loads(line)
        names = list(header["arrays"])
        stored_key, stored_pairs, checksum = header["key"], header["pairs"], header["sha256"]
    except (ValueError, KeyError, TypeError, RecursionError):
        return "its header is damaged"
    if stored_key != key:
        return "it belongs to another key"
    if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        return "its header is damaged"
    if stored_pairs != pairs:
        return f"it holds {stored_pairs} pairs, not {pairs}"
    sizes = [_dtype(n).itemsize * pairs for n in names]
    if len(payload) != sum(sizes):
        return f"{len(payload)} bytes of data where {sum(sizes)} belong (cut short?)"
    if _checksum(key, payload) != checksum:
        return "its checksum does not match (damaged on disk)"
    arrays, offset = {}, 0
    for name, size in zip(names, sizes, strict=True):
        dtype = _dtype(name)
        arrays[name] = np.frombuffer(payload[offset : offset + size], dtype=dtype).astype(
            dtype.newbyteorder("=")
        )
        offset += size
    return arrays


def write_entry(path: Path, key: str, arrays: dict[str, np.ndarray], meta: dict) -> bool:
    """Write an entry atomically and durably (temp file, fsync, rename, fsync of the folder);
    False, with nothing left behind, when it cannot be written (full disk, read-only)."""
    try:
        atomic_write_bytes(path, _entry_bytes(key, arrays, meta))
    except OSError:
        return False
    return True


def load_cached(
    key: str,
    num_pairs: int,
    columns: tuple[str, ...] = PAIR_COLUMNS,
    warn: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, ...] | None:
    """The cached `columns` of `key`, in that order, or None: absent, without one of the
    columns (a narrower entry: recomputed with them all), or not to be trusted (then `warn`
    hears which file and why, and the entry is recomputed)."""
    found = read_entry(_path(key), key, num_pairs)
    if isinstance(found, str) or (found is not None and DONE in found):
        if warn is not None:
            reason = found if isinstance(found, str) else "it is not a finished entry"
            warn(f"reference cache {_path(key)}: {reason}; not used, computing it again")
        return None
    if found is None or not set(columns) <= set(found):
        return None
    return tuple(found[name] for name in columns)


def store(key: str, columns: dict[str, np.ndarray], meta: dict) -> Path | None:
    """Keep the log-probs of `key` (one array per column); None when the cache cannot take
    them."""
    if writable_cache_dir() is None:
        return None
    path = _path(key)
    return path if write_entry(path, key, columns, meta) else None


class Interrupted(Exception):
    """The precompute stopped on request (Ctrl-C, SIGTERM, a stop command) after saving what
    it had: the next start with the same weights and data continues from there."""

    def __init__(self, done: int, total: int):
        super().__init__(f"stopped after {done} of {total} pairs")
        self.done, self.total = done, total


def _partial_path(key: str, ranks: Ranks) -> Path:
    return cache_dir() / "reference" / f"{key}.partial-{ranks.rank}of{ranks.size}"


def _load_partial(
    path: Path,
    key: str,
    total: int,
    columns: tuple[str, ...],
    warn: Callable[[str], None] | None,
) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    found = read_entry(path, key, total)
    if isinstance(found, str) or (found is not None and DONE not in found):
        if warn is not None:
            reason = found if isinstance(found, str) else "not a partial entry"
            warn(f"reference cache {path}: {reason}; starting the pass over")
        return None
    if found is None or not set(columns) <= set(found):
        return None  # a pass of other columns: this one starts over
    return {name: found[name].copy() for name in columns}, found[DONE].copy()


def _save_partial(path: Path, key: str, values: dict[str, np.ndarray], done: np.ndarray) -> None:
    # No room for the checkpoint: the precompute goes on without one.
    write_entry(path, key, {**values, DONE: done}, {})


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
    warn: Callable[[str], None] | None = None,
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
    rank already has them cached. An entry that fails its checksum (or is another key's,
    or cut short) is a miss: `warn` hears it and the log-probs are computed again; a cache
    folder that cannot be written is no cache (reference.cache_problem says so once)."""
    ranks = ranks or Ranks(None, 0, 1)
    total = len(split)
    use_cache = use_cache and writable_cache_dir() is not None
    cached = load_cached(key, total, columns, warn) if use_cache else None
    if ranks.all(cached is not None):
        if progress:
            progress(total, total, True, 0.0)
        return cached
    batches = length_sorted_batches(split.pair_lengths(), batch_size, ranks.rank, ranks.size)
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    partial_path = _partial_path(key, ranks)
    partial = _load_partial(partial_path, key, total, columns, warn) if use_cache else None
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
    for positions in batches:
        stop = should_stop is not None and should_stop()
        if ranks.size > 1:
            stop = ranks.any(stop)
        if stop:
            if use_cache:
                _save_partial(partial_path, key, values, done_mask)
            raise Interrupted(min(done * ranks.size, total), total)
        if done_mask[positions].all():
            continue
        for name, batch_values in zip(columns, compute(positions.tolist()), strict=True):
            values[name][positions] = batch_values
        done_mask[positions] = True
        done += len(positions)
        now = time.monotonic()
        if use_cache and now - last_save >= CHECKPOINT_SECONDS:
            _save_partial(partial_path, key, values, done_mask)
            last_save = now
        if progress:
            rate = (done - resumed) / max(now - tic, 1e-9)
            eta = (len(order) - done) / rate if rate > 0 else None
            progress(min(done * ranks.size, total), total, False, eta)
    values = {name: ranks.sum(column) for name, column in values.items()}
    # Log-probs that are not finite come from a broken model (the run refuses them): never
    # kept, so that a fixed model folder at the same path is not judged by them again.
    if use_cache and all(np.isfinite(column).all() for column in values.values()):
        store(key, values, {"split": split.name, "pairs": total, "columns": list(columns)})
        partial_path.unlink(missing_ok=True)
    return tuple(values[name] for name in columns)
