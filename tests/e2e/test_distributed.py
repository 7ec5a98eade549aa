"""Data parallelism with MLX's ring backend over loopback: 2 ranks of batch B equal 1 rank of
batch 2B on the same data order."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from mlx_dpo.batching import epoch_batches
from mlx_dpo.events import read_events
from tests.conftest import preference_rows
from tests.training import run_start


def run_job(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Like subprocess.run, but a timeout takes down the launcher's ranks too (a hung ring
    keeps its ranks spinning after the launcher alone is killed)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"timed out after {timeout}s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def command(model, data, run_dir, batch_size: int) -> list[str]:
    return [
        sys.executable, "-m", "mlx_dpo.cli", "train", "--model", str(model), "--data", str(data),
        "--adapter-path", str(run_dir), "--iters", "5", "--batch-size", str(batch_size),
        "--learning-rate", "2e-3", "--beta", "0.5", "--lora-rank", "4", "--lora-dropout", "0",
        "--eval-every", "0", "--no-tui",
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch not installed")
@pytest.mark.parametrize("loss", [[], ["--loss", "bco_pair"]], ids=["sigmoid", "bco_pair"])
def test_two_ranks_equal_one_rank_with_twice_the_batch(
    llama_chatml, preference_data, tmp_path, loss
):
    """bco_pair too: its running reward mean takes the mean over the ranks' batches (the
    global batch's, as TRL gathers it)."""
    single = run_job(command(llama_chatml, preference_data, tmp_path / "one", 4) + loss)
    assert single.returncode == 0, single.stderr
    launch = [shutil.which("mlx.launch"), "-n", "2", "--backend", "ring"]
    double = run_job(launch + command(llama_chatml, preference_data, tmp_path / "two", 2) + loss)
    assert double.returncode == 0, double.stderr + double.stdout
    one, two = read_events(tmp_path / "one"), read_events(tmp_path / "two")
    assert run_start(two)["world_size"] == 2 and run_start(one)["world_size"] == 1
    loss_one = [e["loss"] for e in one if e["event"] == "step"]
    loss_two = [e["loss"] for e in two if e["event"] == "step"]
    assert len(loss_two) == 5
    np.testing.assert_allclose(loss_one, loss_two, rtol=1e-4, atol=1e-5)
    if loss:
        shift_one = [e["bco_reward_shift"] for e in one if e["event"] == "step"]
        shift_two = [e["bco_reward_shift"] for e in two if e["event"] == "step"]
        assert shift_one[-1] != 0
        np.testing.assert_allclose(shift_one, shift_two, rtol=1e-4, atol=1e-6)
    a = mx.load(str(tmp_path / "one" / "adapters.safetensors"))
    b = mx.load(str(tmp_path / "two" / "adapters.safetensors"))
    for name in a:
        np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), rtol=1e-3, atol=1e-5)
    # Only rank 0 wrote: one run_start, one run_end.
    assert [e["event"] for e in two].count("run_start") == 1
    assert [e["event"] for e in two].count("run_end") == 1


def test_ranks_read_disjoint_shards_of_the_same_global_batches():
    from mlx_dpo.data import TokenizedPair

    pairs = [
        TokenizedPair(i, "", [1] * (i % 7 + 1), [2] * 3, [3] * 2)
        for i in range(len(preference_rows(23)))
    ]
    whole = epoch_batches(pairs, 4, seed=3, epoch=1)
    shards = [epoch_batches(pairs, 2, seed=3, epoch=1, rank=r, world_size=2) for r in (0, 1)]
    for global_batch, part0, part1 in zip(whole, *shards, strict=False):
        assert not set(part0) & set(part1)
        assert sorted(part0 + part1) == sorted(global_batch)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch not installed")
def test_distributed_run_killed_then_resumed_equals_an_uninterrupted_run(
    llama_chatml, preference_data, tmp_path
):
    extra = ["--iters", "8", "--save-every", "2"]
    straight = run_job(command(llama_chatml, preference_data, tmp_path / "one", 4) + extra)
    assert straight.returncode == 0, straight.stderr
    launch = [shutil.which("mlx.launch"), "-n", "2", "--backend", "ring"]
    run_dir = tmp_path / "two"
    # The launcher and both ranks share a new session, so one killpg takes the whole job down.
    process = subprocess.Popen(
        launch + command(llama_chatml, preference_data, run_dir, 2) + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 240
    try:
        while not any(e["event"] == "step" and e["step"] >= 5 for e in read_events(run_dir)):
            assert process.poll() is None and time.time() < deadline, "no step 5 from 2 ranks"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    resumed = run_job(
        launch + command(llama_chatml, preference_data, run_dir, 2) + extra + ["--resume"]
    )
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout
    assert "resumed from" in resumed.stdout
    events = read_events(run_dir)
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, 9))
    one = [e["loss"] for e in read_events(tmp_path / "one") if e["event"] == "step"]
    np.testing.assert_allclose(one, [e["loss"] for e in events if e["event"] == "step"],
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    a = mx.load(str(tmp_path / "one" / "adapters.safetensors"))
    b = mx.load(str(run_dir / "adapters.safetensors"))
    for name in a:
        np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), rtol=1e-3, atol=1e-5)
