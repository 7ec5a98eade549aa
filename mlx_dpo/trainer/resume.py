"""Taking a run up again where its last checkpoint left it (`--resume`).

The run directory is tidied first: temporaries of writes a kill cut short are deleted, the
newest intact checkpoint is found (a damaged newer one is named and passed over), and the
events after its step go (those steps are
recomputed exactly: the data order and the dropout noise are functions of the step). Rank 0
reads the checkpoint and sends it to the other ranks, which may not see its run directory.

A resumed run is the run its checkpoint was training: the settings are checked against
config.yaml before anything loads (mlx_dpo/rundir.py, resume_changes), the weights and the
tokens against the fingerprints the checkpoint records once they are loaded
(check_same_inputs), and the checkpoint loads strictly (check_weights_match).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_dpo import checkpoints
from mlx_dpo.distributed import Ranks
from mlx_dpo.errors import UserError
from mlx_dpo.events import (
    ADAPTER_CONFIG_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    read_events,
    truncate_events_after,
)
from mlx_dpo.model import adapter_weights
from mlx_dpo.session import Session


def prepare_run_dir(
    run_dir: Path,
    resume: bool,
    is_main: bool = True,
    on_damaged: Callable[[str], None] | None = None,
) -> Path | None:
    """The checkpoint to resume from (None: start at step 0), with the run directory made
    consistent with it. A damaged newest checkpoint (truncated weights, bad JSON) is passed
    over for the newest intact one; `on_damaged` gets a line naming both. A fresh start drops
    the events of an attempt that never got as far as a run (a bad input, a kill while
    loading: no config.yaml yet). Rank 0 only; the caller holds the run's lock."""
    if not is_main:
        return None
    if not resume:
        if not (run_dir / CONFIG_FILE).exists():
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        return None
    checkpoints.remove_torn_writes(run_dir)
    resume_from, resume_step, damaged = None, 0, []
    for candidate in checkpoints.complete_checkpoints(run_dir):
        try:
            resume_step = checkpoints.load_checkpoint(candidate)[2]["step"]
        except checkpoints.DamagedCheckpoint as err:
            damaged.append(err)
            continue
        resume_from = candidate
        break
    if damaged and on_damaged is not None:
        instead = (
            f"resuming from {resume_from.name}, the newest intact one"
            if resume_from is not None
            else "no intact checkpoint is left: starting again at step 0"
        )
        for err in damaged:
            on_damaged(f"checkpoint {err.path} is damaged ({err.reason}); {instead}")
    # Steps after the checkpoint are recomputed exactly; their events go.
    truncate_events_after(run_dir, resume_step)
    return resume_from


@dataclass(frozen=True)
class ResumePoint:
    """Where a run starts: the step, the best evaluation so far (kept in checkpoints) and the
    loss's state (bco_pair's reward shift; None for a loss without state)."""

    step: int = 0
    best_eval: dict | None = None
    loss_state: dict[str, mx.array] | None = None


def restore_checkpoint(path: Path, model: nn.Module, optimizer: optim.Optimizer) -> ResumePoint:
    """Load a checkpoint's adapter weights into the model and its state into the optimizer;
    its step, best evaluation and loss state. Strict: the checkpoint's LoRA weights must be
    exactly the model's (names and shapes), so a run never goes on with some tensors of
    another shape or none at all."""
    weights, optimizer_state, saved = checkpoints.load_checkpoint(path)
    check_weights_match(weights, adapter_weights(model), path)
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = optimizer_state
    return ResumePoint(
        int(saved["step"]), saved.get("best_eval"), checkpoints.load_loss_state(path)
    )


def share_loss_state(ranks: Ranks, loss_state: dict[str, mx.array]) -> dict[str, mx.array]:
    """Rank 0's loss state on every rank (the others pass their initial state: same names and
    shapes)."""
    if ranks.size == 1 or not loss_state:
        return loss_state
    return ranks.broadcast(loss_state)


def check_weights_match(saved: dict, expected: dict, path: Path) -> None:
    """A UserError naming what differs when a checkpoint's weights are not the model's."""
    problems = [f"{name}: missing" for name in sorted(set(expected) - set(saved))]
    problems += [
        f"{name}: not a LoRA weight of this model" for name in sorted(set(saved) - set(expected))
    ]
    problems += [
        f"{name}: shape {tuple(saved[name].shape)} in the checkpoint, {tuple(value.shape)} "
        "in the model (a different LoRA rank?)"
        for name, value in sorted(expected.items())
        if name in saved and tuple(saved[name].shape) != tuple(value.shape)
    ]
    if problems:
        raise UserError(
            f"{path}: its LoRA weights do not fit this run's model; was config.yaml edited?",
            problems,
        )


# What a checkpoint records of the run's inputs, to be the same on --resume.
INPUTS_KEY = "inputs"
# The data order a checkpoint's run went by, kept in its state.json: by optimizer step
# (mlx_dpo/batching.py, epoch_steps). Checkpoints without it come from the order before, which
# is the same one for runs without gradient accumulation only.
DATA_ORDER_KEY, DATA_ORDER = "data_order", "steps"


def data_order_warning(checkpoint: Path) -> str | None:
    """A warning when a checkpoint was made in the order before epoch_steps with gradient
    accumulation: from here its steps see other pairs than the interrupted run's would have
    (each epoch still every pair once); None when its order is today's."""
    if checkpoints.read_state(checkpoint).get(DATA_ORDER_KEY) == DATA_ORDER:
        return None
    try:
        made_with = json.loads((checkpoint / ADAPTER_CONFIG_FILE).read_text(encoding="utf-8"))
        accumulation = int(made_with.get("grad_accumulation") or 1)
    except (OSError, ValueError, TypeError, AttributeError):
        accumulation = 1
    if accumulation <= 1:
        return None
    return (
        f"{checkpoint} comes from an older mlx-dpo, whose data order with grad_accumulation "
        f"{accumulation} is not today's: the rest of the run sees its pairs in another order "
        "than the interrupted run would have"
    )


def run_inputs(session: Session) -> dict[str, str]:
    """Fingerprints of what the run trains on: the weights (base, quantization, init adapter)
    and every token id of its splits (so the data, the tokenizer, the chat template,
    max_length and the fields mapping)."""
    inputs = {"weights": session.weights_fingerprint}
    for name in ("train", "valid"):
        if name in session.splits:
            inputs[f"{name}_tokens"] = session.splits[name].fingerprint()
    return inputs


INPUT_NAMES = {
    "weights": "the model's weights (its files, quantization or init adapter)",
    "train_tokens": "the train split's tokens (its data, the tokenizer, the chat template, "
    "max_length or fields)",
    "valid_tokens": "the validation split's tokens (its data, the tokenizer, the chat "
    "template, max_length or fields)",
}


def check_same_inputs(checkpoint: Path | None, session: Session) -> None:
    """A UserError when the checkpoint's LoRA weights do not fit the session's model, or the
    run's inputs differ from those its checkpoint was trained on (checkpoints written before
    this check record none: only their weights are checked)."""
    if checkpoint is None:
        return
    weights = checkpoints.load_checkpoint(checkpoint)[0]
    check_weights_match(weights, adapter_weights(session.model), checkpoint)
    saved = checkpoints.read_state(checkpoint).get(INPUTS_KEY)
    if not isinstance(saved, dict):
        return
    now = run_inputs(session)
    changed = [INPUT_NAMES.get(k, k) for k in saved if k in now and saved[k] != now[k]]
    changed += [INPUT_NAMES.get(k, k) for k in now if k not in saved]
    if changed:
        raise UserError(
            f"--resume: this is not the run {checkpoint.parent.parent} was training; changed "
            "since its checkpoint:",
            changed,
        )


def evaluated_at(run_dir: Path, step: int) -> bool:
    """Whether the kept event stream has an evaluation of this step: a run stopped during
    one saved its checkpoint without it, and a resume does it first."""
    return any(e.get("event") == "eval" and e.get("step") == step for e in read_events(run_dir))


def share_resume_point(
    ranks: Ranks, step: int, model: nn.Module, optimizer: optim.Optimizer
) -> int:
    """Rank 0's step, adapter weights and optimizer state on every rank (other ranks may not
    see rank 0's run directory); the step to start at."""
    step = int(ranks.sum(np.array([step if ranks.is_main else 0]))[0])
    if step:
        model.load_weights(list(ranks.broadcast(adapter_weights(model)).items()), strict=False)
        optimizer.state = tree_unflatten(
            list(ranks.broadcast(dict(tree_flatten(optimizer.state))).items())
        )
    return step
