"""Resuming a run (mlx_dpo/trainer/resume.py): the run directory made consistent with its
newest complete checkpoint, the checkpoint loaded into the model and optimizer, and a resumed
run equal to an uninterrupted one; a damaged newest checkpoint passed over for the newest
intact one; a resume that would change the run (its settings, its data, its LoRA shape)
refused, the settings it may change recorded."""

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
    DATA_ORDER,
    DATA_ORDER_KEY,
    ResumePoint,
    data_order_warning,
    prepare_run_dir,
    restore_checkpoint,
    share_resume_point,
)
from mlx_dpo.trainer.run import RunOptions, train
from tests.training import adapters, config_for, run, steps
from tests.unit.test_checkpoints import damage


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


def test_a_checkpoint_from_the_order_before_steps_is_named_when_it_accumulated(tmp_path):
    """Checkpoints made before the data order went by optimizer step: the same order without
    accumulation (nothing said), another with it (a warning naming the checkpoint)."""
    path, _, _ = checkpoint_of(tmp_path, 2, 1.0)
    assert data_order_warning(path) is None  # accumulation 1 (unset)
    config_file = path / "adapter_config.json"
    config_file.write_text(json.dumps({"fine_tune_type": "lora", "grad_accumulation": 2}))
    warning = data_order_warning(path)
    assert warning.startswith(f"{path} comes from an older mlx-dpo")
    assert "grad_accumulation 2" in warning
    state_file = path / "state.json"
    state_file.write_text(
        json.dumps({**json.loads(state_file.read_text()), DATA_ORDER_KEY: DATA_ORDER})
    )
    assert data_order_warning(path) is None


def test_one_rank_shares_nothing():
    model = Tiny()
    optimizer = optim.AdamW(learning_rate=1e-2)
    optimizer.init(model.trainable_parameters())
    assert share_resume_point(Ranks(None, 0, 1), 7, model, optimizer) == 7
    assert share_resume_point(Ranks(None, 0, 1), 0, model, optimizer) == 0


# ---- a damaged newest checkpoint ---------------------------------------------------------


@pytest.mark.parametrize("how", ["truncated adapters", "bad JSON"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, how):
    checkpoint_of(tmp_path, 2, 1.0)
    checkpoint_of(tmp_path, 4, 2.0)
    newest, _, _ = checkpoint_of(tmp_path, 6, 3.0)
    damage(newest, how)
    write_events(tmp_path, 6)
    said: list[str] = []
    found = prepare_run_dir(tmp_path, resume=True, on_damaged=said.append)
    assert found == tmp_path / "checkpoints" / "step-0000004"
    assert len(said) == 1
    assert f"checkpoint {newest} is damaged (" in said[0]
    assert said[0].endswith("resuming from step-0000004, the newest intact one")
    assert [e["step"] for e in read_events(tmp_path) if e["event"] == "step"] == [1, 2, 3, 4]


def test_when_no_checkpoint_is_intact_the_run_starts_again(tmp_path):
    only, _, _ = checkpoint_of(tmp_path, 2, 1.0)
    damage(only, "bad JSON")
    said: list[str] = []
    assert prepare_run_dir(tmp_path, resume=True, on_damaged=said.append) is None
    assert "no intact checkpoint is left: starting again at step 0" in said[0]


def test_resume_over_a_damaged_checkpoint_names_both_and_ends_as_an_unbroken_run(
    llama_chatml, preference_data, tmp_path, capsys
):
    """Today's code ended with a traceback; now the run goes on from step 2, says so on the
    console and in a log event, and ends with the adapters of a run never interrupted."""
    from mlx_dpo.cli import main

    run(config_for(llama_chatml, preference_data, tmp_path / "straight", save_every=2))
    run_dir = tmp_path / "run"
    config = config_for(llama_chatml, preference_data, run_dir, save_every=2)

    def stop_after_4(line: str) -> None:
        if line.startswith("step 4/"):
            send_command(run_dir, "stop")

    status = train(config, RunOptions(run_dir, on_line=stop_after_4, handle_signals=False))
    assert status == "stopped"
    damage(run_dir / "checkpoints" / "step-0000004", "truncated adapters")
    capsys.readouterr()
    assert main(["train", "--resume", "--adapter-path", str(run_dir), "--no-tui"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    line = next(line for line in out.splitlines() if "is damaged" in line)
    assert "step-0000004" in line and "resuming from step-0000002" in line
    logs = [e for e in read_events(run_dir) if e["event"] == "log" and "is damaged" in e["message"]]
    assert len(logs) == 1 and logs[0]["level"] == "warning"
    a, b = adapters(tmp_path / "straight"), adapters(run_dir)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7)
    assert [e["step"] for e in steps(read_events(run_dir))] == [1, 2, 3, 4, 5, 6]


# ---- the run config.yaml describes -------------------------------------------------------


def trained_run(model, data, run_dir, **overrides) -> Path:
    status, _ = run(config_for(model, data, run_dir, iters=2, save_every=2, **overrides))
    assert status == "completed"
    return run_dir


def run_files(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("flags", "listed"),
    [
        (["--lora-rank", "8"], ["lora_rank: 4 → 8"]),
        (["--beta", "0.1", "--seed", "3"], ["beta: 0.5 → 0.1", "seed: 0 → 3"]),
        (
            ["--batch-size", "2", "--loss", "ipo"],
            [
                "effective batch: 4 pairs per optimizer step (batch 4 × accumulation 1) → 2 "
                "(batch 2 × accumulation 1)",
                "loss: 'sigmoid' → 'ipo'",
            ],
        ),
    ],
)
def test_resume_refuses_a_setting_that_changes_the_run_and_touches_nothing(
    llama_chatml, preference_data, tmp_path, capsys, flags, listed
):
    """Today `--lora-rank 8` on a rank-4 run loaded non-strictly, logged rank 8 and wrote an
    adapter mlx-lm cannot load; now every such change is refused before anything loads."""
    from mlx_dpo.cli import main

    run_dir = trained_run(llama_chatml, preference_data, tmp_path / "run")
    before = run_files(run_dir)
    capsys.readouterr()
    code = main(["train", "--resume", "--adapter-path", str(run_dir), "--no-tui", *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume continues the run" in err and "Traceback" not in err
    if len(listed) == 1:  # one difference is one line (errors.UserError)
        assert err.count("\n") == 1 and err.rstrip().endswith(f": {listed[0]}")
    else:
        assert [line.strip() for line in err.splitlines()[1:]] == listed
    assert run_files(run_dir) == before


def test_resume_records_the_settings_it_may_change(llama_chatml, preference_data, tmp_path, capsys):
    from mlx_dpo.cli import main

    run_dir = trained_run(llama_chatml, preference_data, tmp_path / "run")
    capsys.readouterr()
    args = ["train", "--resume", "--adapter-path", str(run_dir), "--no-tui", "--iters", "4",
            "--eval-every", "2", "--reference", "live"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    changes = ["iters: 2 → 4", "reference: 'cached' → 'live'", "eval_every: 0 → 2"]
    for change in changes:
        assert f"resumed with a changed setting: {change}" in out
    logs = [e["message"] for e in read_events(run_dir) if e["event"] == "log"]
    assert [f"resumed with a changed setting: {change}" for change in changes] == [
        m for m in logs if m.startswith("resumed with")
    ]
    assert [e["step"] for e in steps(read_events(run_dir))] == [1, 2, 3, 4]


def test_resume_refuses_data_whose_content_changed(llama_chatml, preference_data, tmp_path):
    """The same --data path with other pairs in it: the checkpoint's token fingerprint
    differs, the run ends failed naming what changed, and its adapters are untouched."""
    config = config_for(llama_chatml, preference_data, tmp_path / "run", iters=2, save_every=2)
    run_dir = trained_run(llama_chatml, preference_data, tmp_path / "run")
    adapters_before = (run_dir / "adapters.safetensors").read_bytes()
    train_file = preference_data / "train.jsonl"
    rows = train_file.read_text().splitlines()
    train_file.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # the same pairs, reordered
    with pytest.raises(UserError) as err:
        run(config, resume=True)
    assert "this is not the run" in str(err.value)
    assert err.value.problems == [
        "the train split's tokens (its data, the tokenizer, the chat template, max_length or "
        "fields)"
    ]
    assert read_events(run_dir)[-1]["status"] == "failed"
    assert (run_dir / "adapters.safetensors").read_bytes() == adapters_before


def test_a_checkpoint_of_another_lora_rank_is_never_loaded(llama_chatml, preference_data, tmp_path):
    """config.yaml edited by hand to rank 8 over rank-4 checkpoints: the checkpoint does not
    load (a strict load), the run ends failed, nothing is written over the adapters."""
    from mlx_dpo.config import load_config_file, save_config

    run_dir = trained_run(llama_chatml, preference_data, tmp_path / "run")
    edited = load_config_file(run_dir / "config.yaml")
    edited.lora_rank = 8
    save_config(edited, run_dir / "config.yaml")
    adapters_before = (run_dir / "adapters.safetensors").read_bytes()
    with pytest.raises(UserError) as err:
        run(edited, resume=True)
    assert "its LoRA weights do not fit this run's model" in str(err.value)
    assert err.value.problems[0] == (
        "model.layers.0.mlp.down_proj.lora_a: shape (128, 4) in the checkpoint, (128, 8) in the "
        "model (a different LoRA rank?)"
    )
    assert all("a different LoRA rank?" in problem for problem in err.value.problems)
    assert read_events(run_dir)[-1]["status"] == "failed"
    assert (run_dir / "adapters.safetensors").read_bytes() == adapters_before


def test_restore_checkpoint_is_strict(tmp_path):
    path, _, _ = checkpoint_of(tmp_path, 2, 1.0)

    class Wider(nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_a = mx.zeros((2, 5))
            self.lora_b = mx.zeros((5, 2))

    model, optimizer = Wider(), optim.AdamW(learning_rate=1e-2)
    optimizer.init(model.trainable_parameters())
    with pytest.raises(UserError) as err:
        restore_checkpoint(path, model, optimizer)
    assert err.value.problems == [
        "lora_a: shape (2, 3) in the checkpoint, (2, 5) in the model (a different LoRA rank?)",
        "lora_b: shape (3, 2) in the checkpoint, (5, 2) in the model (a different LoRA rank?)",
    ]
    assert np.array(model.lora_a).sum() == 0  # nothing was loaded


def test_a_moved_data_folder_resumes_once_config_yaml_names_it(
    llama_chatml, preference_data, tmp_path
):
    """The data's path is part of the run; its content is what is checked: after a move,
    editing the path in config.yaml is enough."""
    import shutil

    from mlx_dpo.config import load_config_file, save_config

    run_dir = trained_run(llama_chatml, preference_data, tmp_path / "run")
    moved = tmp_path / "moved-data"
    shutil.move(preference_data, moved)
    config = load_config_file(run_dir / "config.yaml")
    config.data = str(moved)
    save_config(config, run_dir / "config.yaml")
    config.iters = 3
    status, events = run(config, resume=True)
    assert status == "completed" and [e["step"] for e in steps(events)] == [1, 2, 3]


def test_resume_refuses_a_model_whose_chat_template_changed(
    llama_chatml, preference_data, tmp_path
):
    """Same model folder, same weights, another chat template: the tokens differ."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(llama_chatml, model)
    config = config_for(model, preference_data, tmp_path / "run", iters=2, save_every=2)
    trained_run(model, preference_data, tmp_path / "run")
    tokenizer_config = json.loads((model / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = tokenizer_config["chat_template"].replace(
        "<|im_start|>", "<|im_start|> "
    )
    (model / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(UserError) as err:
        run(config, resume=True)
    assert err.value.problems == [
        "the train split's tokens (its data, the tokenizer, the chat template, max_length or "
        "fields)",
        "the validation split's tokens (its data, the tokenizer, the chat template, max_length "
        "or fields)",
    ]


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
