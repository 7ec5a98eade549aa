"""Preference metrics of a model (and adapter) on a data split: the library behind
`mlx-dpo eval`. The adapter's recorded settings (β, the loss and its options, max_length, fields,
quantization) are used unless given; unset ones are TrainConfig's defaults. A kto adapter is
evaluated on rated completions (or pairs read as two completions each), a reference-free one
without a reference model."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mlx_dpo import checkpoints
from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.config import INT_LIMIT, TrainConfig
from mlx_dpo.errors import UserError
from mlx_dpo.events import atomic_write_text, finite_or_none
from mlx_dpo.session import open_session
from mlx_dpo.trainer.evaluation import evaluate_split

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
    batch_size: int = TrainConfig.batch_size,
    max_length: int | None = None,
    output: str | None = None,
    trust_remote_code: bool = False,
    data_config: str | None = None,
    data_revision: str | None = None,
) -> dict[str, Any]:
    """The split's metrics (evaluation.evaluate_split); with `output`, one JSON line a pair
    (kto: a completion) with its log-probs and rewards, written there atomically."""
    if output is not None:
        check_output_path(output)
    saved = _adapter_settings(adapter_path)
    model = model or saved.get("base_model") or saved.get("model")
    if not model:
        raise UserError("no model given: pass --model (or an --adapter-path that records it)")
    if beta is not None and not (math.isfinite(beta) and beta > 0):
        raise UserError(f"--beta must be > 0, got {beta}")
    if not 0 < batch_size <= INT_LIMIT:
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
        batch_size=batch_size,
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
    result = evaluate_split(
        session, session.splits[split], config, per_pair=output is not None, loss_state=loss_state
    )
    per_pair = result.pop("per_pair", None)
    if output:
        atomic_write_text(output, "".join(json_line(row) + "\n" for row in per_pair))
    return result
