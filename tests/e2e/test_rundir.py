"""Owning a run directory (mlx_dpo/rundir.py): a run writes only into a new, empty or run
folder and never into its init adapter, holds an exclusive lock while it runs, and --resume
changes only the settings that do not change what the run trains toward."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlx_dpo import rundir
from mlx_dpo.cli import main
from mlx_dpo.config import TrainConfig, build_config, save_config
from mlx_dpo.errors import UserError
from mlx_dpo.events import CONFIG_FILE, DASHBOARD_PID_ENV, LOCK_FILE

REPO = Path(__file__).resolve().parents[2]


def train_args(model, data, run_dir, *extra) -> list[str]:
    return ["train", "--model", str(model), "--data", str(data), "--adapter-path", str(run_dir),
            "--iters", "2", "--lora-rank", "4", "--eval-every", "0", "--no-tui", *extra]  # fmt: skip


def sft_adapter(folder: Path) -> dict[str, bytes]:
    """A folder as mlx-lm's LoRA training leaves it, plus the user's own metrics.jsonl; its
    files' bytes, to check that nothing changed."""
    folder.mkdir(parents=True)
    (folder / "adapters.safetensors").write_bytes(b"the user's adapter weights")
    (folder / "adapter_config.json").write_text('{"fine_tune_type": "lora"}')
    (folder / "0000100_adapters.safetensors").write_bytes(b"an earlier save")
    (folder / "metrics.jsonl").write_text('{"their": "log"}\n')
    return snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    return err


# ---- whose folder ----------------------------------------------------------------------


def test_a_folder_that_is_not_a_run_is_refused_naming_its_files(
    llama_chatml, preference_data, tmp_path, capsys
):
    """An SFT adapter given as --adapter-path: exit 2, its files named, not one changed
    (today's code overwrote its adapters and deleted its metrics.jsonl)."""
    folder = tmp_path / "sft"
    before = sft_adapter(folder)
    assert main(train_args(llama_chatml, preference_data, folder)) == 2
    err = one_line_error(capsys)
    assert "not an mlx-dpo run" in err and "adapter_config.json, adapters.safetensors" in err
    assert snapshot(folder) == before


def test_the_library_refuses_it_too(llama_chatml, preference_data, tmp_path):
    from mlx_dpo.trainer.run import RunOptions, train

    folder = tmp_path / "sft"
    before = sft_adapter(folder)
    config = build_config({}, dict(model=str(llama_chatml), data=str(preference_data),
                                   adapter_path=str(folder), iters=1, lora_rank=4))  # fmt: skip
    with pytest.raises(UserError, match="not an mlx-dpo run"):
        train(config, RunOptions(folder, on_line=lambda _: None, handle_signals=False))
    assert snapshot(folder) == before


def test_an_empty_folder_and_a_run_folder_are_ours(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"")
    rundir.check_run_dir(tmp_path / "empty")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / LOCK_FILE).write_text("")
    (tmp_path / "run" / "adapters.safetensors").write_bytes(b"")
    rundir.check_run_dir(tmp_path / "run")
    (tmp_path / "older").mkdir()  # a run from before the lock file: config.yaml marks it
    (tmp_path / "older" / CONFIG_FILE).write_text("model: m\n")
    rundir.check_run_dir(tmp_path / "older")
    rundir.check_run_dir(tmp_path / "new" / "run")


@pytest.mark.parametrize("where", ["same", "inside"])
def test_an_init_adapter_in_the_run_directory_is_refused(
    llama_chatml, preference_data, tmp_path, capsys, where
):
    run_dir = tmp_path / "run"
    init = run_dir if where == "same" else run_dir / "sft"
    before = sft_adapter(init)
    code = main(train_args(llama_chatml, preference_data, run_dir, "--init-adapter", str(init)))
    assert code == 2
    err = one_line_error(capsys)
    expected = "is --adapter-path" if where == "same" else "is inside --adapter-path"
    assert f"--init-adapter {init} {expected}" in err and "overwrite the adapter" in err
    assert snapshot(init) == before


def test_an_adapter_path_that_is_a_file_exits_2(llama_chatml, preference_data, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(train_args(llama_chatml, preference_data, tmp_path / "notes.txt")) == 2
    assert "is a file; a run directory is a folder" in one_line_error(capsys)
    assert main(train_args(llama_chatml, preference_data, tmp_path / "notes.txt" / "run")) == 2
    assert "cannot write there (a file is in the way)" in one_line_error(capsys)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_adapter_path_that_cannot_be_written_exits_2(
    llama_chatml, preference_data, read_only_folder, capsys
):
    assert main(train_args(llama_chatml, preference_data, read_only_folder / "run")) == 2
    err = one_line_error(capsys)
    assert f"--adapter-path {read_only_folder / 'run'}: cannot write there" in err


# ---- the lock --------------------------------------------------------------------------


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    with rundir.RunLock(tmp_path / "run").acquire():
        assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(
            UserError, match=f"a trainer is running on this run \\(pid {os.getpid()}\\)"
        ):
            rundir.RunLock(tmp_path / "run").acquire()
        assert rundir.lock_holder(tmp_path / "run") == os.getpid()
    assert rundir.lock_holder(tmp_path / "run") is None
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released: the mark stays


def hold_lock(run_dir: Path, then: str = "time.sleep(60)") -> subprocess.Popen:
    """Another process that takes the run's lock, says so, then does `then`."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from mlx_dpo.rundir import RunLock
        lock = RunLock(Path({str(run_dir)!r})).acquire()
        print("locked", flush=True)
        {then}
    """)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    run_dir = tmp_path / "run"
    killed = hold_lock(run_dir, then="os.kill(os.getpid(), signal.SIGKILL)")
    killed.wait()
    assert (run_dir / LOCK_FILE).read_text().strip() == str(killed.pid)  # left behind
    lock, notes = rundir.claim_run_dir(run_dir, TrainConfig(), resume=False)
    assert lock.taken_over == killed.pid
    assert notes == [f"took over the run's lock from pid {killed.pid}, which is no longer running"]
    lock.release()


def test_a_second_train_on_a_live_run_is_refused_naming_its_pid(
    llama_chatml, preference_data, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        assert main(train_args(llama_chatml, preference_data, run_dir)) == 2
        assert f"a trainer is running on this run (pid {holder.pid})" in one_line_error(capsys)
        save_config(TrainConfig(model=str(llama_chatml), data=str(preference_data),
                                adapter_path=str(run_dir)), run_dir / CONFIG_FILE)  # fmt: skip
        before = snapshot(run_dir)
        assert main(train_args(llama_chatml, preference_data, run_dir, "--resume")) == 2
        assert f"(pid {holder.pid})" in one_line_error(capsys)
        assert snapshot(run_dir) == before  # nothing written into the live run
    finally:
        holder.kill()
        holder.wait()


def test_view_works_on_a_locked_run(tmp_path, monkeypatch):
    import mlx_dpo.tui.app as app

    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    (run_dir / "metrics.jsonl").write_text('{"event": "run_start", "step": 0, "time": 0}\n')
    opened = []
    monkeypatch.setattr(app, "run_dashboard", lambda path: opened.append(path) or 0)
    try:
        assert main(["view", str(run_dir)]) == 0
        assert opened == [run_dir]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_the_trainer_the_dashboard_launches_holds_the_lock(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    """`mlx-dpo train` with the dashboard: the trainer (the child) holds the lock, not the
    dashboard, and knows the dashboard's pid."""
    import mlx_dpo.tui.app as app

    import mlx_dpo.cli.train as cli_train
    from mlx_dpo.events import read_events

    seen = {}

    def dashboard(run_dir, trainer):
        """Waits for the trainer to take the lock and notes who holds it."""
        while trainer.poll() is None and "holder" not in seen:
            holder = rundir.lock_holder(run_dir)
            if holder is not None:
                seen["holder"] = holder
                environ = Path(f"/proc/{trainer.pid}/environ")
                seen["environ"] = environ.read_bytes().split(b"\0") if environ.exists() else None
            time.sleep(0.02)
        trainer.wait(timeout=120)
        return 0

    monkeypatch.setattr(cli_train, "is_terminal", lambda: True)
    monkeypatch.setattr(app, "run_dashboard", dashboard)
    run_dir = tmp_path / "run"
    assert main(train_args(llama_chatml, preference_data, run_dir)[:-1]) == 0
    trainer_pid = next(e["pid"] for e in read_events(run_dir) if e["event"] == "run_start")
    assert seen["holder"] == trainer_pid != os.getpid()
    if seen["environ"] is not None:  # Linux: the trainer was told its dashboard's pid
        assert f"{DASHBOARD_PID_ENV}={os.getpid()}".encode() in seen["environ"]
    assert rundir.lock_holder(run_dir) is None


# ---- --resume: the run config.yaml describes -------------------------------------------


def test_settings_that_change_the_run_are_refused_and_the_others_allowed():
    saved = TrainConfig(model="m", data="d", lora_rank=4, iters=8)
    refused = dict(model="other", data="d2", learning_rate=1e-4, lr_schedule="cosine",
                   beta=0.2, loss="ipo", lora_rank=8, lora_scale=10.0, lora_layers=2,
                   lora_keys=["self_attn.q_proj"], max_length=512, seed=3,
                   fields={"prompt": "q"})  # fmt: skip
    allowed = dict(iters=None, epochs=2.0, reference="live", grad_checkpoint=True,
                   prefix_sharing=False, eval_every=5, save_every=5, health={"patience": 3},
                   memory_limit_gb=8.0, pause_timeout_minutes=1.0)  # fmt: skip
    # 4 × 1 → 2 × 3: another effective batch, one line for both settings.
    changed = dataclasses.replace(saved, **refused, **allowed, batch_size=2, grad_accumulation=3)
    refused_lines, allowed_lines = rundir.resume_changes(saved, changed)
    assert sorted(line.split(":")[0] for line in refused_lines) == sorted(
        [*refused, "effective batch"]
    )
    assert sorted(line.split(":")[0] for line in allowed_lines) == sorted(allowed)
    assert "lora_rank: 4 → 8" in refused_lines and "iters: 8 → unset" in allowed_lines
    assert rundir.resume_changes(saved, saved) == ([], [])
    # A setting nobody listed as safe to change is the run's own.
    assert set(rundir.RESUMABLE_CHANGES) < set(TrainConfig.__dataclass_fields__)


def test_a_smaller_batch_with_the_same_effective_batch_may_continue_a_run():
    """The path out of an out-of-memory stop: the same pairs per optimizer step, split into
    smaller micro-batches, continues the run (recorded as the allowed changes are); another
    number of pairs per step is refused with the numbers."""
    saved = TrainConfig(model="m", data="d", batch_size=4, grad_accumulation=2)
    split = dataclasses.replace(saved, batch_size=2, grad_accumulation=4, grad_checkpoint=True)
    assert rundir.resume_changes(saved, split) == (
        [],
        ["batch_size: 4 → 2", "grad_accumulation: 2 → 4", "grad_checkpoint: False → True"],
    )
    assert rundir.resume_changes(saved, dataclasses.replace(saved, batch_size=8, grad_accumulation=1)) == (
        [], ["batch_size: 4 → 8", "grad_accumulation: 2 → 1"],
    )  # fmt: skip
    fewer = dataclasses.replace(saved, batch_size=2, grad_accumulation=3)
    assert rundir.resume_changes(saved, fewer) == (
        [
            "effective batch: 8 pairs per optimizer step (batch 4 × accumulation 2) → 6 "
            "(batch 2 × accumulation 3)"
        ],
        [],
    )
    assert rundir.resume_changes(saved, dataclasses.replace(saved, batch_size=2))[0] == [
        "effective batch: 8 pairs per optimizer step (batch 4 × accumulation 2) → 4 "
        "(batch 2 × accumulation 2)"
    ]
    assert rundir.resume_changes(saved, dataclasses.replace(saved, batch_size="auto"))[0] == [
        "batch_size: 4 → 'auto'"
    ]


@pytest.mark.parametrize("loss", ["kto", "bco_pair", ["sigmoid", "aot"]])
def test_a_loss_computed_over_each_micro_batch_keeps_its_split(loss):
    saved = TrainConfig(model="m", data="d", loss=loss, batch_size=4, grad_accumulation=2)
    split = dataclasses.replace(saved, batch_size=2, grad_accumulation=4)
    refused, allowed = rundir.resume_changes(saved, split)
    assert allowed == [] and len(refused) == 1
    assert refused[0].startswith(
        "batch 4 × accumulation 2 → batch 2 × accumulation 4: the same 8 pairs per optimizer "
        "step, but "
    )
    assert refused[0].endswith(
        "computes over each micro-batch, so another split trains another objective"
    )
    assert "To continue with less memory: mlx-dpo train --resume" in rundir.out_of_memory_resume(
        saved, "/runs/a"
    )


def test_smaller_split_halves_the_batch_and_keeps_the_effective_batch():
    assert rundir.smaller_split(4, 2) == (2, 4)
    assert rundir.smaller_split(2, 4) == (1, 8)
    assert rundir.smaller_split(6, 1) == (3, 2)
    assert rundir.smaller_split(3, 1) == (1, 3)
    assert rundir.smaller_split(5, 2) == (2, 5)
    assert rundir.smaller_split(1, 8) is None
    for batch, accumulation in ((4, 2), (7, 3), (16, 1), (9, 2)):
        smaller, more = rundir.smaller_split(batch, accumulation)
        assert smaller * more == batch * accumulation and smaller <= batch // 2


def test_the_out_of_memory_hint_is_a_resume_command_the_rule_allows(tmp_path):
    run_dir = tmp_path / "my run"
    config = TrainConfig(model="m", data="d", batch_size=4, grad_accumulation=2)
    hint = rundir.out_of_memory_resume(config, run_dir)
    command = (
        f"mlx-dpo train --resume --adapter-path '{run_dir}' --batch-size 2 --grad-accumulation 4"
    )
    assert hint == (
        f"To continue with the same 8 pairs per optimizer step in smaller batches: {command} "
        "(add --grad-checkpoint to use less still)"
    )
    resumed = dataclasses.replace(config, batch_size=2, grad_accumulation=4)
    assert rundir.resume_changes(config, resumed)[0] == []
    checkpointed = dataclasses.replace(config, grad_checkpoint=True)
    assert rundir.out_of_memory_resume(checkpointed, run_dir).endswith("--grad-accumulation 4")
    # Batch 1: nothing left to split; checkpointing, then what needs a new run.
    one = dataclasses.replace(config, batch_size=1, grad_accumulation=8)
    assert rundir.out_of_memory_resume(one, run_dir) == (
        f"To continue with less memory: mlx-dpo train --resume --adapter-path '{run_dir}' "
        "--grad-checkpoint"
    )
    assert rundir.out_of_memory_resume(
        dataclasses.replace(one, grad_checkpoint=True), run_dir
    ).startswith("A shorter --max-length or --quantize 4 needs a new run")


def test_check_resumed_config_lists_every_refused_change(tmp_path):
    save_config(build_config({}, dict(model="m", data="d", lora_rank=4)), tmp_path / CONFIG_FILE)
    with pytest.raises(UserError) as err:
        rundir.check_resumed_config(tmp_path, build_config({}, dict(model="m", data="d", lora_rank=8, beta=0.3)))  # fmt: skip
    assert err.value.problems == ["beta: 0.1 → 0.3", "lora_rank: 4 → 8"]
    assert rundir.check_resumed_config(
        tmp_path, build_config({}, dict(model="m", data="d", lora_rank=4, iters=9))
    ) == ["iters: unset → 9"]


def test_pid_alive():
    assert rundir.pid_alive(os.getpid())
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert not rundir.pid_alive(process.pid)
    assert not rundir.pid_alive(0)
