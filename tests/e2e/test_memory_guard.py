"""Applying the memory plan (mlx_dpo/memory/guard.py): the limit, `--batch-size auto`, the
cache limit at the start of a run, the guard's message and a run it stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from mlx_dpo.cli import main
from mlx_dpo.config import build_config
from mlx_dpo.memory import guard
from mlx_dpo.memory.arithmetic import Lengths, ModelShape, Settings, plan_memory
from mlx_dpo.memory.guard import (
    memory_limit,
    over_limit_message,
    start_run_memory,
    will_not_fit_message,
)
from mlx_dpo.platform import device_memory_limit
from tests.training import run_with_lines

MODEL = ModelShape(
    layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, vocab=512,
    activation_bytes=4, base_weight_bytes=600_000, lora_bytes=10_000,
    base_weight_bytes_4bit=150_000,
)  # fmt: skip
LENGTHS = Lengths(np.array([10, 20, 40]), np.array([5, 30, 10]), np.array([8, 3, 12]))


def test_the_limit_is_the_configs_or_the_devices():
    assert memory_limit(0.5) == (500_000_000, "memory_limit_gb")
    assert memory_limit(None) == (device_memory_limit(), "physical memory")  # Linux: no Metal


def test_the_guard_speaks_only_past_90_percent_of_the_limit():
    plan = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 5_000_000, "memory_limit_gb")
    assert over_limit_message(4_500_000, plan) is None
    message = over_limit_message(4_500_001, plan)
    assert message.startswith("out of memory: MLX's peak 4.5 MB passed 90% of the 5.0 MB")
    assert "(memory_limit_gb; the plan estimated 5.6 MB)" in message
    assert message.endswith("To fit, change: --batch-size 1 --grad-accumulation 2; --max-length 32")
    # No suggestion that fits: the general ways down, those that apply.
    hopeless = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 1_000_000, "physical memory")
    assert over_limit_message(2_000_000, hopeless).endswith(
        "To fit, change: a smaller --batch-size with --grad-accumulation, --grad-checkpoint, "
        "a shorter --max-length, --quantize 4"
    )
    then = "To continue with the same 2 pairs per optimizer step in smaller batches: mlx-dpo ..."
    assert over_limit_message(4_500_001, plan, then).endswith(f"--max-length 32. {then}")
    no_limit = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 0)
    assert over_limit_message(10**12, no_limit) is None


def test_a_plan_that_will_not_fit_is_said_at_the_start():
    fits = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 10**9)
    assert will_not_fit_message(fits) is None
    too_big = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 5_000_000)
    assert will_not_fit_message(too_big) == (
        "the memory plan (5.6 MB) does not fit in 5.0 MB; the run stops if its peak passes 90% "
        "of that (see mlx-dpo train --plan)"
    )


def test_the_cache_holds_one_steps_transients_and_no_more_than_the_room(monkeypatch):
    limits: list[int] = []
    monkeypatch.setattr(guard, "set_cache_limit", limits.append)
    roomy = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 10**9)
    c = roomy.estimate.components
    start_run_memory(roomy)
    tight = plan_memory(MODEL, LENGTHS, Settings(batch_size=2), 6_000_000)
    start_run_memory(tight)
    assert limits == [
        int(1.1 * (c["activations"] + c["logits"])),
        6_000_000 - tight.estimate.total,
    ]


def test_batch_size_auto_picks_a_batch_the_plan_accepts(
    llama_chatml, preference_data, tmp_path, capsys
):
    values = {
        "model": str(llama_chatml),
        "data": str(preference_data),
        "adapter_path": str(tmp_path / "run"),
        "iters": 1,
        "eval_every": 0,
        "save_every": 0,
        "batch_size": "auto",
        "grad_accumulation": 4,  # effective batch 4 × 4 = 16
        "memory_limit_gb": 0.02,
    }
    status, events, _ = run_with_lines(build_config({}, values))
    assert status == "completed"
    start = next(e for e in events if e["event"] == "run_start")
    batch, accumulation = start["batch_size"], start["grad_accumulation"]
    assert batch * accumulation == 16 and batch < 16
    assert start["memory_plan"]["verdict"] == "fits"
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["batch_size"], saved["grad_accumulation"]) == (batch, accumulation)
    # The next larger batch would not fit.
    capsys.readouterr()
    code = main(
        ["train", "--model", str(llama_chatml), "--data", str(preference_data), "--plan"]
        + ["--batch-size", str(batch * 2), "--memory-limit-gb", "0.02"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "memory_limit_gb): fits" not in out


def test_memory_guard_stops_the_run_with_a_checkpoint(llama_chatml, preference_data, tmp_path):
    config = build_config(
        {},
        {
            "model": str(llama_chatml),
            "data": str(preference_data),
            "adapter_path": str(tmp_path / "run"),
            "iters": 5,
            "eval_every": 0,
            "save_every": 0,
            "memory_limit_gb": 0.001,
        },
    )
    status, events, lines = run_with_lines(config)
    assert status == "stopped"
    errors = [e for e in events if e["event"] == "log" and e["level"] == "error"]
    assert errors and "out of memory" in errors[0]["message"]
    assert "memory_limit_gb" in errors[0]["message"]
    end = events[-1]
    assert end["event"] == "run_end" and end["status"] == "stopped" and end["step"] == 1
    assert Path(end["last_checkpoint"]).is_dir()
    assert (tmp_path / "run" / "adapters.safetensors").is_file()
    assert any("memory plan" in line for line in lines)
