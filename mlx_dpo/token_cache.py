"""Tokenized splits kept on disk, so the second start of a run skips reading, validating and
tokenizing (seconds instead of a minute for 60,000 pairs).

An entry is keyed by everything the token ids depend on: the bytes of the split's files, the
`fields` mapping, the tokenizer (its vocabulary, merges and normalisation, as the fast
tokenizer serialises them), its chat template, max_length and this module's format version.
Entries live under the cache folder of the reference log-probs (reference.cache_dir(),
MLX_DPO_CACHE), are written atomically and durably (temp file, fsync, rename, fsync of the
folder) and a corrupt one is recomputed (numpy's zip format checks each array's CRC-32).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mlx_dpo.data import TokenizedSplit, fast_backend
from mlx_dpo.events import fsync_dir
from mlx_dpo.reference import cache_dir, writable_cache_dir

FORMAT_VERSION = "1"
_ARRAYS = ("tokens", "starts", "lengths", "cuts", "mismatch")

# (path, size, mtime_ns) -> sha256 of the bytes: a file is hashed once per process.
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _digests[memo] = digest.hexdigest()
    return _digests[memo]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of what the token ids depend on in the tokenizer: its serialised fast tokenizer
    (vocabulary, merges, normaliser, pre-tokenizer, added tokens), chat template, EOS and
    class; the vocabulary itself for a tokenizer without a fast backend."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    digest = hashlib.sha256()
    backend = fast_backend(tokenizer)
    if backend is not None and hasattr(backend, "to_str"):
        digest.update(backend.to_str().encode())
    else:
        vocab = hf.get_vocab() if hasattr(hf, "get_vocab") else {}
        digest.update(json.dumps(sorted(vocab.items())).encode())
    template = getattr(tokenizer, "chat_template", None)
    digest.update(json.dumps([template, getattr(tokenizer, "eos_token_id", None)]).encode())
    digest.update(type(hf).__name__.encode())
    return digest.hexdigest()


def split_key(
    files: list[Path], fields: dict[str, str], tokenizer_hash: str, max_length: int
) -> str:
    digest = hashlib.sha256()
    parts = {
        "version": FORMAT_VERSION,
        "files": [file_digest(f) for f in files],
        "fields": fields,
        "tokenizer": tokenizer_hash,
        "max_length": max_length,
    }
    digest.update(json.dumps(parts, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_dir() / "tokenized" / f"{key}.npz"


def load(key: str, name: str, path: str) -> tuple[TokenizedSplit, dict] | None:
    """(split, its stored meta) or None when absent or unreadable."""
    file = _path(key)
    if writable_cache_dir() is None or not file.is_file():
        return None
    try:
        with np.load(file, allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in (*_ARRAYS, "sources", "meta")}
        meta = json.loads(bytes(arrays["meta"]).decode())
        sources = bytes(arrays["sources"]).decode().split("\0") if len(arrays["starts"]) else []
        split = TokenizedSplit(
            name,
            path,
            arrays["tokens"],
            arrays["starts"],
            arrays["lengths"],
            sources,
            arrays["cuts"],
            arrays["mismatch"],
            meta.get("shape", ""),
        )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError):
        return None  # a torn or foreign file is recomputed, never trusted
    if len(split.sources) != len(split):
        return None
    return split, meta


def store(key: str, split: TokenizedSplit, meta: dict) -> Path | None:
    """Write the entry atomically; a cache that cannot be written (full disk, read-only
    folder) is skipped: the run goes on without it."""
    if writable_cache_dir() is None:
        return None
    file = _path(key)
    tmp = file.with_name(f".{file.stem}.{os.getpid()}.tmp.npz")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                tokens=split.tokens,
                starts=split.starts,
                lengths=split.lengths,
                cuts=split.cuts,
                mismatch=split.mismatch,
                sources=np.frombuffer("\0".join(split.sources).encode(), dtype=np.uint8),
                meta=np.frombuffer(json.dumps({**meta, "shape": split.shape}).encode(), np.uint8),
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, file)
        fsync_dir(file.parent)
    except OSError:
        tmp.unlink(missing_ok=True)
        return None
    return file
