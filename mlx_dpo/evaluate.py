"""Preference metrics of a model (and adapter) on a data split: the library behind
`mlx-dpo eval`. The adapter's recorded settings (β, the loss and its options, max_length, fields,
quantization) are used unless given; unset ones are TrainConfig's defaults. A kto adapter is
evaluated on rated completions (or pairs read as two completions each), a reference-free one
without a reference model.

The model work is one forward pass over the split's rows where it can be: without an adapter
the model is its own reference (its log-probs serve as both, rewards are 0), and with one the
reference's log-probs come from the on-disk cache that training fills (mlx_dpo/reference.py),
computed once and kept there when missing. `reference="live"` computes them batch by batch
and touches no cache."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlx_dpo import checkpoints, reference
from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.config import INT_LIMIT, REFERENCE_MODES, TrainConfig
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.errors import UserError
from mlx_dpo.events import (
    LOGPS_PREFERENCE_ACCURACY,
    atomic_write_text,
    finite_or_none,
)
from mlx_dpo.losses import PairLogps, UnpairedLogps
from mlx_dpo.memory.session import forward_batch_for
from mlx_dpo.model import print_note
from mlx_dpo.session import Session, open_session
from mlx_dpo.trainer.batch_logps import compute_reference, reference_columns
from mlx_dpo.trainer.evaluation import ReferenceColumns, evaluation_logps, evaluation_metrics
from mlx_dpo.unpaired import CompletionSplit

# The loss and its options, as the adapter's run recorded them (adapter_config.json).
LOSS_KEYS = (
    "loss",
    "label_smoothing",
    "simpo_gamma",
    "sft_weight",
    "loss_weights",
    "discopop_tau",
    "cpo_alpha",
    "ld_alpha",
    "use_weighting",
    "desirable_weight",
    "undesirable_weight",
)


def _adapter_settings(adapter_path: str | None) -> dict[str, Any]:
    """The run's settings its adapter folder records (checked: adapter_config.py)."""
    return read_adapter_config(adapter_path) if adapter_path else {}


def check_output_path(output: str) -> None:
    """Before the evaluation: --output can be written (not a folder, its folder exists or can
    be made, and takes a file). A UserError at once rather than after the whole work."""
    path = Path(output)
    if path.is_dir():
        raise UserError(f"--output {output}: is a folder; give a file name (e.g. pairs.jsonl)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"--output {output}: {folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise UserError(f"--output {output}: cannot write in {folder} ({reason})") from None


def json_line(record: dict[str, Any]) -> str:
    """One line of strict JSON: numbers that are not finite are null (JSON has no NaN)."""
    return json.dumps(finite_or_none(record), allow_nan=False)


def evaluate_command(
    model: str | None,
    adapter_path: str | None,
    data: str,
    split: str = "test",
    beta: float | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    output: str | None = None,
    trust_remote_code: bool = False,
    data_config: str | None = None,
    data_revision: str | None = None,
    reference_mode: str = "cached",
    on_note: Callable[[str], None] = print_note,
) -> dict[str, Any]:
    """The split's metrics (evaluation.evaluate_split); with `output`, one JSON line a pair
    (kto: a completion) with its log-probs and rewards, written there atomically.
    `reference_mode` "cached" reads (and fills) the reference cache, "live" leaves it alone;
    `on_note` hears where the reference log-probs came from. `batch_size`: pairs a forward
    batch; default the most whose memory stays within a training step's at the default
    batch size (memory.session.forward_batch_for)."""
    if output is not None:
        check_output_path(output)
    if reference_mode not in REFERENCE_MODES:
        raise UserError(f"--reference must be one of {', '.join(REFERENCE_MODES)}")
    saved = _adapter_settings(adapter_path)
    model = model or saved.get("base_model") or saved.get("model")
    if not model:
        raise UserError("no model given: pass --model (or an --adapter-path that records it)")
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise UserError(f"--beta must be > 0, got {beta}")
    if batch_size is not None and not 0 < batch_size <= INT_LIMIT:
        raise UserError(f"--batch-size must be > 0, got {batch_size}")
    if max_length is not None and not 8 <= max_length <= INT_LIMIT:
        raise UserError(f"--max-length must be >= 8, got {max_length}")
    config = TrainConfig(
        model=model,
        data=data,
        data_config=data_config,
        data_revision=data_revision,
        beta=beta if beta is not None else float(saved.get("beta", TrainConfig.beta)),
        **{key: saved[key] for key in LOSS_KEYS if saved.get(key) is not None},
        max_length=max_length or int(saved.get("max_length", TrainConfig.max_length)),
        fields=saved.get("fields") or {},
        quantize=saved.get("quantize"),
        trust_remote_code=trust_remote_code,
    )
    session = open_session(config, splits=(split,), adapter_path=adapter_path)
    if split not in session.splits:
        raise UserError(f"{data}: no {split} split")
    session.model.eval()
    # bco_pair's reward shift as training left it (beside the adapters, or in a checkpoint).
    loss_state = checkpoints.load_loss_state(Path(adapter_path)) if adapter_path else None
    data_split = session.splits[split]
    batch_size = batch_size or forward_batch_for(session, config, data_split)
    columns = reference_columns(config)
    use_cache = reference_mode == "cached" and bool(columns)
    # Without an adapter the model is its own reference: one forward pass gives both.
    own_reference = adapter_path is None
    cached = None
    if use_cache and not own_reference:
        cached = split_reference(session, data_split, config, batch_size, on_note)
    logps = evaluation_logps(
        session,
        data_split,
        config,
        cached,
        reference_is_policy=own_reference,
        batch_size=batch_size,
    )
    if use_cache and own_reference:
        keep_reference(session, data_split, columns, logps)
    if own_reference and columns and not isinstance(data_split, CompletionSplit):
        on_note(
            "no adapter: the model is its own reference, so every reward is 0; "
            f"{LOGPS_PREFERENCE_ACCURACY} says how often it already prefers the chosen answer"
        )
    result = evaluation_metrics(
        data_split, logps, config, loss_state=loss_state, per_pair=output is not None
    )
    per_pair = result.pop("per_pair", None)
    if output:
        atomic_write_text(output, "".join(json_line(row) + "\n" for row in per_pair))
    return result


def split_reference(
    session: Session,
    split: TokenizedSplit,
    config: TrainConfig,
    batch_size: int,
    on_note: Callable[[str], None] = print_note,
) -> ReferenceColumns:
    """The split's reference columns (batch_logps.reference_columns) from the cache training
    fills, under the same key (the weights and the split's token ids): read when there,
    else computed once in length-sorted batches and kept for the next evaluation or run."""
    columns = reference_columns(config)
    key = reference.cache_key(session.weights_fingerprint, split)
    unit = "completions" if isinstance(split, CompletionSplit) else "pairs"
    writable = reference.writable_cache_dir() is not None
    found = None if writable else reference.load_cached(key, len(split), columns, on_note)
    read = found is not None
    if found is None:
        read_by_pass = []
        tic = time.perf_counter()
        found = reference.reference_logps(
            key,
            split,
            compute_reference(session, split, columns),
            batch_size,
            lambda _done, _total, cached, _eta: read_by_pass.append(cached),
            use_cache=writable,
            columns=columns,
            warn=on_note,
        )
        read = any(read_by_pass)
        seconds = time.perf_counter() - tic
    if read:
        on_note(f"reference log-probs of {len(split)} {unit} read from the cache")
    else:
        kept = "kept in the cache" if writable else "not kept: the cache folder is read-only"
        on_note(f"reference log-probs of {len(split)} {unit} computed in {seconds:.1f}s ({kept})")
    return dict(zip(columns, found, strict=True))


def keep_reference(
    session: Session,
    split: TokenizedSplit,
    columns: tuple[str, ...],
    logps: PairLogps | UnpairedLogps,
) -> None:
    """Keep the reference log-probs of an evaluation without an adapter (the model is its
    own reference) in the cache, where it has no entry yet and can be written: an evaluation
    of a tuned adapter on the same split then needs the policy's forward pass only."""
    key = reference.cache_key(session.weights_fingerprint, split)
    if reference.writable_cache_dir() is None:
        return
    if reference.load_cached(key, len(split), columns) is not None:
        return
    if isinstance(logps, UnpairedLogps):
        own = {"completion": logps.reference}
    else:
        own = {
            "chosen": logps.reference_chosen,
            "rejected": logps.reference_rejected,
            "chosen_tail": logps.reference_chosen_tail,
            "rejected_tail": logps.reference_rejected_tail,
        }
    values = {name: np.array(own[name], dtype=np.float32) for name in columns}
    meta = {"split": split.name, "pairs": len(split), "columns": list(columns)}
    # A full disk or a cache made read-only meanwhile: the evaluation's result stands.
    with contextlib.suppress(OSError):
        reference.store(key, values, meta)
