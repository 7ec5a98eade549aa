"""A run that ran out of memory goes on with a smaller batch (issue 22): the same pairs per
optimizer step split into smaller micro-batches is the same run (mlx_dpo/batching.py,
epoch_steps; mlx_dpo/rundir.py, resume_changes), the out-of-memory message prints the command
that does it, and a resume that changes the pairs per step is refused with the numbers."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from mlx_dpo.cli import main
from mlx_dpo.events import read_events
from mlx_dpo.trainer import step as trainer_step
from tests.faults import METAL_OUT_OF_MEMORY, out_of_memory_at_step
from tests.training import adapters, config_for, run, run_with_lines, steps

# 24 train pairs in steps of 4 × 2 = 8: 3 steps an epoch, so 5 steps cross into the second.
SETTINGS = dict(iters=5, batch_size=4, grad_accumulation=2, save_every=2)


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture
def straight(llama_chatml, preference_data, tmp_path) -> Path:
    """The uninterrupted run."""
    status, _ = run(config_for(llama_chatml, preference_data, tmp_path / "straight", **SETTINGS))
    assert status == "completed"
    return tmp_path / "straight"


def run_out_of_memory_at_step_3(model, data, run_dir: Path, monkeypatch) -> str:
    """The run stopped by Metal running out of memory in step 3; the resume command its
    message prints."""
    with monkeypatch.context() as patch:
        patch.setattr(
            trainer_step, "compiled_step", out_of_memory_at_step(trainer_step.compiled_step, 3)
        )
        status, events, lines = run_with_lines(config_for(model, data, run_dir, **SETTINGS))
    assert status == "failed"
    assert [e["step"] for e in steps(events)] == [1, 2]
    error = next(line for line in lines if line.startswith("error: "))
    assert error.startswith(f"error: step 3: out of memory ({METAL_OUT_OF_MEMORY})")
    assert f"Last good checkpoint: {run_dir / 'checkpoints' / 'step-0000002'}." in error
    state = json.loads((run_dir / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["data_order"] == "steps"
    command = (
        f"mlx-dpo train --resume --adapter-path {shlex.quote(str(run_dir.resolve()))} "
        "--batch-size 2 --grad-accumulation 4"
    )
    assert error.endswith(
        f"To continue with the same 8 pairs per optimizer step in smaller batches: {command} "
        "(add --grad-checkpoint to use less still)"
    )
    assert events[-1]["status"] == "failed" and command in events[-1]["error"]
    return command


def max_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[name] - b[name]).max()) for name in a)


@pytest.mark.parametrize("extra", [[], ["--grad-checkpoint"]], ids=["split", "checkpointed"])
def test_out_of_memory_then_the_printed_resume_with_half_the_batch_equals_the_straight_run(
    llama_chatml, preference_data, tmp_path, monkeypatch, capsys, straight, extra
):
    run_dir = tmp_path / "run"
    command = run_out_of_memory_at_step_3(llama_chatml, preference_data, run_dir, monkeypatch)
    capsys.readouterr()
    assert main([*shlex.split(command)[1:], *extra, "--no-tui"]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "at step 2" in out
    assert "warning:" not in out  # its checkpoints record today's data order
    for change in ["batch_size: 4 → 2", "grad_accumulation: 2 → 4"]:
        assert f"resumed with a changed setting: {change}" in out
    events = read_events(run_dir)
    resumed, uninterrupted = steps(events), steps(read_events(straight))
    assert [e["step"] for e in resumed] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(
        [e["loss"] for e in resumed], [e["loss"] for e in uninterrupted], rtol=1e-4
    )
    assert [e["epoch"] for e in resumed] == pytest.approx([1 / 3, 2 / 3, 1, 4 / 3, 5 / 3])
    a, b = adapters(straight), adapters(run_dir)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-6, err_msg=name)
    print(f"max |resumed - uninterrupted| = {max_difference(a, b):.3g}")


def test_a_resume_that_changes_the_effective_batch_is_refused_with_the_numbers(
    llama_chatml, preference_data, tmp_path, monkeypatch, capsys
):
    run_dir = tmp_path / "run"
    command = run_out_of_memory_at_step_3(llama_chatml, preference_data, run_dir, monkeypatch)
    before = run_files(run_dir)
    capsys.readouterr()
    args = [*shlex.split(command)[1:5], "--batch-size", "2", "--grad-accumulation", "3"]
    assert main([*args, "--no-tui"]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert err.count("\n") == 1 and err.rstrip().endswith(
        ": effective batch: 8 pairs per optimizer step (batch 4 × accumulation 2) → 6 "
        "(batch 2 × accumulation 3)"
    )
    assert "--resume continues the run" in err
    assert run_files(run_dir) == before
