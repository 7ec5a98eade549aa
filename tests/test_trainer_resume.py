"""Resuming a run (mlx_dpo/trainer/resume.py): the run directory made consistent with its
newest complete checkpoint, the checkpoint loaded into the model and optimizer, and a resumed
run equal to an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlx_dpo.checkpoints import save_checkpoint
from mlx_dpo.distributed import Ranks
from mlx_dpo.errors import UserError
from mlx_dpo.events import read_events, send_command
from mlx_dpo.trainer.resume import (
    ResumePoint,
    prepare_run_dir,
    restore_checkpoint,
    share_resume_point,
)
from mlx_dpo.trainer.run import RunOptions, train
from tests.training import adapters, config_for, run, steps


def test_resume_equals_uninterrupted(llama_chatml, preference_data, tmp_path):
    straight_config = config_for(
        llama_chatml, preference_data, tmp_path / "straight", lora_dropout=0.1
    )
    run(straight_config)
    interrupted = config_for(
        llama_chatml, preference_data, tmp_path / "interrupted", lora_dropout=0.1
    )
    run_dir = tmp_path / "interrupted"

    def stop_after_third(line: str) -> None:
        if line.startswith("step 3/"):
            send_command(run_dir, "stop")

    status = train(interrupted, RunOptions(run_dir, on_line=stop_after_third, handle_signals=False))
    assert status == "stopped"
    assert [e["step"] for e in steps(read_events(run_dir))][-1] == 3
    status, events = run(interrupted, resume=True)
    assert status == "completed"
    straight_events = read_events(tmp_path / "straight")
    assert [e["step"] for e in steps(events)] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(
        [e["loss"] for e in steps(events)], [e["loss"] for e in steps(straight_events)], rtol=1e-6
    )
    a, b = adapters(tmp_path / "straight"), adapters(run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7)


def write_events(run_dir: Path, steps_written: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    events = [{"event": "run_start", "step": 0, "time": 0.0}]
    events += [{"event": "step", "step": s, "time": float(s)} for s in range(1, steps_written + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))


class Tiny(nn.Module):
    """Two LoRA-named parameters, as adapter_weights and checkpoints see them."""

    def __init__(self):
        super().__init__()
        self.lora_a = mx.zeros((2, 3))
        self.lora_b = mx.zeros((3, 2))


def checkpoint_of(run_dir: Path, step: int, value: float) -> tuple[Path, Tiny, optim.AdamW]:
    model = Tiny()
    model.update({"lora_a": mx.full((2, 3), value), "lora_b": mx.full((3, 2), -value)})
    optimizer = optim.AdamW(learning_rate=1e-2)
    optimizer.init(model.trainable_parameters())
    optimizer.update(model, {"lora_a": mx.ones((2, 3)), "lora_b": mx.ones((3, 2))})
    mx.eval(model.parameters(), optimizer.state)
    path = save_checkpoint(
        run_dir,
        step,
        dict(tree_flatten(model.parameters())),
        optimizer.state,
        {"fine_tune_type": "lora"},
        {"best_eval": {"step": step, "loss": 0.5}, "seed": 0},
    )
    return path, model, optimizer


def test_a_fresh_start_drops_the_events_of_an_attempt_that_never_ran(tmp_path):
    write_events(tmp_path, 3)
    assert prepare_run_dir(tmp_path, resume=False) is None
    assert not (tmp_path / "metrics.jsonl").exists()
    # Once config.yaml is there a run has started: nothing is touched (the CLI refuses it).
    write_events(tmp_path, 3)
    (tmp_path / "config.yaml").write_text("iters: 3\n")
    assert prepare_run_dir(tmp_path, resume=False) is None
    assert len(read_events(tmp_path)) == 4


def test_resume_takes_the_newest_complete_checkpoint_and_drops_later_events(tmp_path):
    checkpoint_of(tmp_path, 2, 1.0)
    checkpoint_of(tmp_path, 4, 2.0)
    (tmp_path / "checkpoints" / "step-0000004" / "state.json").unlink()  # incomplete
    torn = tmp_path / "checkpoints" / ".step-0000006.abc"
    torn.mkdir()
    (tmp_path / ".adapters.xyz.safetensors").write_bytes(b"half")
    write_events(tmp_path, 5)
    found = prepare_run_dir(tmp_path, resume=True)
    assert found == tmp_path / "checkpoints" / "step-0000002"
    assert not torn.exists() and not (tmp_path / ".adapters.xyz.safetensors").exists()
    assert [(e["event"], e["step"]) for e in read_events(tmp_path)] == [
        ("run_start", 0),
        ("step", 1),
        ("step", 2),
    ]


def test_resume_without_a_checkpoint_starts_at_step_0(tmp_path):
    write_events(tmp_path, 3)
    assert prepare_run_dir(tmp_path, resume=True) is None
    assert [e["event"] for e in read_events(tmp_path)] == ["run_start"]


def test_only_rank_0_touches_the_run_directory(tmp_path):
    write_events(tmp_path, 3)
    assert prepare_run_dir(tmp_path, resume=True, is_main=False) is None
    assert prepare_run_dir(tmp_path, resume=False, is_main=False) is None
    assert len(read_events(tmp_path)) == 4


def test_restore_checkpoint_loads_weights_optimizer_state_and_the_best_eval(tmp_path):
    path, saved_model, saved_optimizer = checkpoint_of(tmp_path, 2, 1.5)
    model, optimizer = Tiny(), optim.AdamW(learning_rate=1e-2)
    optimizer.init(model.trainable_parameters())
    point = restore_checkpoint(path, model, optimizer)
    assert point == ResumePoint(step=2, best_eval={"step": 2, "loss": 0.5})
    for name, value in tree_flatten(saved_model.parameters()):
        np.testing.assert_array_equal(np.array(dict(tree_flatten(model.parameters()))[name]), value)
    restored = dict(tree_flatten(optimizer.state))
    for name, value in tree_flatten(saved_optimizer.state):
        np.testing.assert_array_equal(np.array(restored[name]), np.array(value))


def test_one_rank_shares_nothing():
    model = Tiny()
    optimizer = optim.AdamW(learning_rate=1e-2)
    optimizer.init(model.trainable_parameters())
    assert share_resume_point(Ranks(None, 0, 1), 7, model, optimizer) == 7
    assert share_resume_point(Ranks(None, 0, 1), 0, model, optimizer) == 0


def test_bco_pair_resume_is_bit_exact_with_its_reward_shift(
    llama_chatml, preference_data, tmp_path
):
    """The MPO recipe [sigmoid, bco_pair, sft]: bco_pair's running reward shift is saved in
    each checkpoint (and beside the adapters) and restored on resume, so a stopped and
    resumed run is the uninterrupted one, bit for bit."""
    options = dict(
        loss=["sigmoid", "bco_pair", "sft"], loss_weights=[0.8, 0.2, 1.0], grad_accumulation=2,
        save_every=2, lora_dropout=0.1,
    )  # fmt: skip
    run(config_for(llama_chatml, preference_data, tmp_path / "straight", **options))
    run_dir = tmp_path / "interrupted"
    interrupted = config_for(llama_chatml, preference_data, run_dir, **options)

    def stop_after_third(line: str) -> None:
        if line.startswith("step 3/"):
            send_command(run_dir, "stop")

    status = train(interrupted, RunOptions(run_dir, on_line=stop_after_third, handle_signals=False))
    assert status == "stopped"
    saved = mx.load(str(run_dir / "checkpoints" / "step-0000003" / "loss_state.safetensors"))
    assert saved["bco_reward_count"].item() == 6  # 3 steps of 2 micro-batches
    status, events = run(interrupted, resume=True)
    assert status == "completed"
    straight_events = read_events(tmp_path / "straight")
    straight = steps(straight_events)
    resumed = steps(events)
    # A list with a reference-based loss computes the reference (once, cached).
    assert any(e["event"] == "reference" for e in straight_events)
    assert [e["step"] for e in resumed] == [1, 2, 3, 4, 5, 6]
    for name in ("loss", "bco_reward_shift", "rewards/margins"):
        assert [e[name] for e in resumed] == [e[name] for e in straight], name
    assert straight[-1]["bco_reward_shift"] != 0
    a, b = adapters(tmp_path / "straight"), adapters(run_dir)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    for folder in (tmp_path / "straight", run_dir):
        state = mx.load(str(folder / "loss_state.safetensors"))
        assert state["bco_reward_mean"].item() == pytest.approx(straight[-1]["bco_reward_shift"])


def test_a_bco_pair_checkpoint_without_its_shift_is_refused(
    llama_chatml, preference_data, tmp_path
):
    run_dir = tmp_path / "run"
    config = config_for(
        llama_chatml, preference_data, run_dir, loss="bco_pair", iters=2, save_every=1
    )
    run(config)
    for path in (run_dir / "checkpoints").glob("*/loss_state.safetensors"):
        path.unlink()
    with pytest.raises(UserError, match="no bco_pair reward shift"):
        run(config, resume=True)


def test_kto_resume_is_bit_exact(llama_chatml, thumbs_data, tmp_path):
    """A KTO run (rated completions, KL rows rebuilt from each batch) stopped and resumed is
    the uninterrupted one."""
    options = dict(loss="kto", save_every=2, lora_dropout=0.1)
    run(config_for(llama_chatml, thumbs_data, tmp_path / "straight", **options))
    run_dir = tmp_path / "interrupted"
    interrupted = config_for(llama_chatml, thumbs_data, run_dir, **options)

    def stop_after_third(line: str) -> None:
        if line.startswith("step 3/"):
            send_command(run_dir, "stop")

    status = train(interrupted, RunOptions(run_dir, on_line=stop_after_third, handle_signals=False))
    assert status == "stopped"
    status, events = run(interrupted, resume=True)
    assert status == "completed"
    straight = steps(read_events(tmp_path / "straight"))
    for name in ("loss", "kl", "count/desirable"):
        assert [e[name] for e in steps(events)] == [e[name] for e in straight], name
    a, b = adapters(tmp_path / "straight"), adapters(run_dir)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
