"""Every way a run can end badly ends cleanly: signals, non-finite numbers, kill -9 and
resume, torn writes, and arbitrary input to the loaders."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_dpo.checkpoints import latest_checkpoint
from mlx_dpo.config import build_config
from mlx_dpo.data import read_records
from mlx_dpo.errors import UserError
from mlx_dpo.events import read_events, read_status
from mlx_dpo.trainer import RunOptions, train


def train_command(model, data, run_dir, *extra) -> list[str]:
    return [
        sys.executable, "-m", "mlx_dpo.cli", "train", "--model", str(model), "--data", str(data),
        "--adapter-path", str(run_dir), "--learning-rate", "2e-3", "--beta", "0.5",
        "--lora-rank", "4", "--eval-every", "0", "--no-tui", *extra,
    ]  # fmt: skip


def wait_for_step(
    run_dir: Path, step: int, process: subprocess.Popen, timeout: float = 120
) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(e["event"] == "step" and e["step"] >= step for e in read_events(run_dir)):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout}s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_after_the_step_and_saves(llama_chatml, preference_data, tmp_path, sig):
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        train_command(llama_chatml, preference_data, run_dir, "--iters", "100000"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for_step(run_dir, 2, process)
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    events = read_events(run_dir)
    end = events[-1]
    assert end["event"] == "run_end" and end["status"] == "stopped"
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == f"step-{end['step']:07d}"
    assert read_status(run_dir)["state"] == "stopped"
    assert signal.Signals(sig).name in out
    assert "Traceback" not in err


def test_non_finite_loss_fails_cleanly_and_keeps_the_checkpoint(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    from mlx_dpo import trainer

    original = trainer.preference_loss

    def poisoned(*args, **kwargs):
        loss, per_pair = original(*args, **kwargs)
        return loss * math.nan, per_pair

    monkeypatch.setattr(trainer, "preference_loss", poisoned)
    config = build_config(
        {},
        dict(model=str(llama_chatml), data=str(preference_data), adapter_path=str(tmp_path / "run"),
             iters=5, eval_every=0, save_every=1, lora_rank=4),
    )  # fmt: skip
    lines: list[str] = []
    status = train(config, RunOptions(tmp_path / "run", on_line=lines.append, handle_signals=False))
    assert status == "failed"
    end = read_events(tmp_path / "run")[-1]
    assert end["status"] == "failed"
    assert "non-finite loss at step 1" in end["error"]
    assert "train.jsonl:" in end["error"]  # names the pairs of the batch
    assert read_status(tmp_path / "run")["state"] == "failed"
    assert not (tmp_path / "run" / "adapters.safetensors").exists()


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [2, 5])
def test_kill_9_then_resume_equals_an_uninterrupted_run(
    llama_chatml, preference_data, tmp_path, kill_at
):
    args = ("--iters", "8", "--save-every", "2", "--lora-dropout", "0.1")
    straight = tmp_path / "straight"
    subprocess.run(train_command(llama_chatml, preference_data, straight, *args), check=True,
                   capture_output=True)  # fmt: skip
    run_dir = tmp_path / "killed"
    process = subprocess.Popen(train_command(llama_chatml, preference_data, run_dir, *args),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for_step(run_dir, kill_at, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    # Nothing in the run directory is torn.
    for path in run_dir.rglob("*.json"):
        json.loads(path.read_text())
    for line in (run_dir / "metrics.jsonl").read_text().splitlines()[:-1]:
        json.loads(line)
    resumed = subprocess.run(
        train_command(llama_chatml, preference_data, run_dir, "--resume"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    a = mx.load(str(straight / "adapters.safetensors"))
    b = mx.load(str(run_dir / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), rtol=1e-6, atol=1e-7)
    assert [e["step"] for e in read_events(run_dir) if e["event"] == "step"] == list(range(1, 9))


def test_torn_checkpoint_is_ignored(tmp_path):
    (tmp_path / "checkpoints" / "step-0000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-0000004" / "state.json").write_text('{"step": 4}')
    (tmp_path / "checkpoints" / ".step-0000006.abc").mkdir()  # a write that never finished
    (tmp_path / "checkpoints" / "step-0000008").mkdir()  # no state.json: incomplete
    assert latest_checkpoint(tmp_path).name == "step-0000004"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(content=st.binary(max_size=300))
def test_data_loader_never_crashes_on_bytes(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    try:
        records = read_records(path)
    except UserError as err:
        assert str(path) in str(err)
    else:
        assert records and all(r.chosen != r.rejected for r in records)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    record=st.dictionaries(
        st.sampled_from(["prompt", "chosen", "rejected", "system", "x"]), json_values
    )
)
def test_data_loader_never_crashes_on_odd_shapes(tmp_path, record):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(record) + "\n")
    try:
        read_records(path)
    except UserError as err:
        assert f"{path}:1" in str(err)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.dictionaries(
        st.sampled_from(
            [
                "beta",
                "lora_rank",
                "label_smoothing",
                "iters",
                "loss",
                "lora_keys",
                "fields",
                "bogus",
            ]
        ),
        json_values,
        max_size=3,
    )
)
def test_config_loader_never_crashes(tmp_path, values):
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    from mlx_dpo.config import read_yaml

    try:
        build_config(read_yaml(path), {})
    except UserError as err:
        assert str(err)
