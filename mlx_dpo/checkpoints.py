"""Adapters and checkpoints on disk, every write atomic.

The run directory's adapters.safetensors + adapter_config.json are exactly what mlx-lm's
`load(..., adapter_path=RUN_DIR)` expects. A checkpoint adds the optimizer state and the step
(the data order is a function of the step, see batching.epoch_steps).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from mlx_dpo.events import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_FILE,
    CHECKPOINT_DIR,
    CHECKPOINT_STATE_FILE,
    LOSS_STATE_FILE,
    OPTIMIZER_FILE,
    atomic_write_json,
    current_umask,
)

CHECKPOINT_PREFIX = "step-"


def save_safetensors_atomic(
    path: Path, arrays: dict[str, mx.array], metadata: dict | None = None
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".safetensors")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        mx.save_safetensors(tmp, arrays, metadata=metadata or {})
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def adapter_config(num_layers: int, lora_parameters: dict, run_config: dict[str, Any]) -> dict:
    """mlx-lm's adapter_config.json (fine_tune_type, num_layers, lora_parameters) plus the
    run's configuration, which mlx-lm ignores; its `fields` mapping too, so that `mlx-dpo
    eval` reads data in the run's own field names."""
    return {
        **{k: v for k, v in run_config.items() if k != "health"},
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": lora_parameters,
    }


def save_adapters(directory: Path, weights: dict[str, mx.array], config: dict[str, Any]) -> None:
    save_safetensors_atomic(directory / ADAPTER_FILE, weights)
    atomic_write_json(directory / ADAPTER_CONFIG_FILE, config)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def checkpoint_step(path: Path | None) -> int | None:
    """The step of a checkpoint folder (checkpoint_name's inverse); None for no checkpoint."""
    return None if path is None else int(path.name.removeprefix(CHECKPOINT_PREFIX))


def save_checkpoint(
    run_dir: Path,
    step: int,
    weights: dict[str, mx.array],
    optimizer_state: Any,
    adapter_cfg: dict,
    extra: dict[str, Any],
    loss_state: dict[str, mx.array] | None = None,
) -> Path:
    """Write checkpoints/step-N/ into a temporary folder, then rename it into place. A loss
    with state between steps (bco_pair) has it saved as LOSS_STATE_FILE."""
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{checkpoint_name(step)}."))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        save_adapters(tmp, weights, adapter_cfg)
        save_safetensors_atomic(tmp / OPTIMIZER_FILE, dict(tree_flatten(optimizer_state)))
        if loss_state:
            save_safetensors_atomic(tmp / LOSS_STATE_FILE, dict(loss_state))
        atomic_write_json(tmp / CHECKPOINT_STATE_FILE, {"step": step, **extra})
        replaced = None
        if final.exists():
            # Renamed aside rather than deleted in place: a kill part-way through a delete would
            # leave a step-N folder that looks complete but lacks files.
            replaced = root / f".{final.name}.replaced.{tmp.name}"
            os.replace(final, replaced)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    return final


def remove_torn_writes(run_dir: Path) -> None:
    """Delete the temporary files and folders of writes a killed run never finished (they are
    never read; this only tidies). Only for a run directory no process is writing to."""
    root = run_dir / CHECKPOINT_DIR
    candidates = [p for p in run_dir.glob(".*") if p.suffix in (".tmp", ".safetensors")]
    if root.is_dir():
        candidates += [p for p in root.glob(f".{CHECKPOINT_PREFIX}*")]
    for path in candidates:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints, newest first (temporary folders of a torn write, and
    folders without a state file, are not checkpoints)."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    complete = [
        p
        for p in root.iterdir()
        if p.is_dir()
        and p.name.startswith(CHECKPOINT_PREFIX)
        and p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
        and (p / CHECKPOINT_STATE_FILE).is_file()
    ]
    return sorted(complete, key=lambda p: p.name, reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (temporary folders of a torn write are ignored)."""
    return next(iter(complete_checkpoints(run_dir)), None)


def read_state(path: Path) -> dict:
    """A checkpoint's state.json ({} when it cannot be read)."""
    try:
        state = json.loads((path / CHECKPOINT_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


class DamagedCheckpoint(Exception):
    """A checkpoint whose files cannot be read back (truncated, not JSON, not its step)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path.name}: {reason}")
        self.path, self.reason = path, reason


def save_loss_state(directory: Path, loss_state: dict[str, mx.array] | None) -> None:
    """The loss's state beside a folder's adapters (what `mlx-dpo eval` of the adapters
    evaluates with); nothing for a loss without state."""
    if loss_state:
        save_safetensors_atomic(directory / LOSS_STATE_FILE, dict(loss_state))


def load_loss_state(directory: Path) -> dict[str, mx.array] | None:
    """A checkpoint's (or an adapter folder's) loss state; None when it has none."""
    path = Path(directory) / LOSS_STATE_FILE
    return dict(mx.load(str(path))) if path.is_file() else None


def load_checkpoint(path: Path) -> tuple[dict[str, mx.array], Any, dict]:
    """(adapter weights, optimizer state, state.json) of a checkpoint; DamagedCheckpoint when
    one of its files is damaged."""
    try:
        weights = mx.load(str(path / ADAPTER_FILE))
    except (RuntimeError, ValueError, OSError) as err:
        raise DamagedCheckpoint(path, f"{ADAPTER_FILE}: {err}") from None
    try:
        optimizer_state = tree_unflatten(list(mx.load(str(path / OPTIMIZER_FILE)).items()))
    except (RuntimeError, ValueError, OSError) as err:
        raise DamagedCheckpoint(path, f"{OPTIMIZER_FILE}: {err}") from None
    try:
        state = json.loads((path / CHECKPOINT_STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpoint(path, f"{CHECKPOINT_STATE_FILE}: {err}") from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step != checkpoint_step(path):
        raise DamagedCheckpoint(
            path, f"{CHECKPOINT_STATE_FILE} does not record step {checkpoint_step(path)}"
        )
    return weights, optimizer_state, state
