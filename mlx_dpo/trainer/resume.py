"""Taking a run up again where its last checkpoint left it (`--resume`).

The run directory is tidied first: temporaries of writes a kill cut short are deleted, the
newest complete checkpoint is found, and the events after its step go (those steps are
recomputed exactly: the data order and the dropout noise are functions of the step). Rank 0
reads the checkpoint and sends it to the other ranks, which may not see its run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mlx_dpo import checkpoints
from mlx_dpo.distributed import Ranks
from mlx_dpo.events import CONFIG_FILE, METRICS_FILE, truncate_events_after
from mlx_dpo.model import adapter_weights


def prepare_run_dir(run_dir: Path, resume: bool, is_main: bool = True) -> Path | None:
    """The checkpoint to resume from (None: start at step 0), with the run directory made
    consistent with it. A fresh start drops the events of an attempt that never got as far
    as a run (a bad input, a kill while loading: no config.yaml yet). Rank 0 only."""
    if not is_main:
        return None
    if not resume:
        if not (run_dir / CONFIG_FILE).exists():
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        return None
    checkpoints.remove_torn_writes(run_dir)
    resume_from = checkpoints.latest_checkpoint(run_dir)
    resume_step = 0
    if resume_from is not None:
        resume_step = checkpoints.load_checkpoint(resume_from)[2]["step"]
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
    its step, best evaluation and loss state."""
    weights, optimizer_state, saved = checkpoints.load_checkpoint(path)
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
