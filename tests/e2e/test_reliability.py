"""Every way a run can end badly ends cleanly: signals, non-finite numbers, kill -9 and
resume, torn writes, and arbitrary input to the loaders."""

from __future__ import annotations

import json
import math
import os
import re
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
from mlx_dpo.config import TrainConfig, build_config
from mlx_dpo.data import read_records
from mlx_dpo.errors import UserError
from mlx_dpo.events import read_events, read_status
from mlx_dpo.trainer.run import RunOptions, train
from tests.shared import json_values


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
    from mlx_dpo.trainer import step

    original = step.pair_objective

    def poisoned(*args, **kwargs):
        result = original(*args, **kwargs)
        result.loss = result.loss * math.nan
        return result

    monkeypatch.setattr(step, "pair_objective", poisoned)
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
        np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), **SAME_WEIGHTS)
    assert [e["step"] for e in read_events(run_dir) if e["event"] == "step"] == list(range(1, 9))


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


# kill -9 at exact points of the real code path (tests/faults.py), and at random moments.

REPO = Path(__file__).resolve().parents[2]
FAULT_ARGS = (
    "--iters", "8", "--batch-size", "2", "--save-every", "2", "--eval-every", "2",
    "--lora-dropout", "0.1",
)  # fmt: skip


@pytest.fixture(scope="module")
def fault_data(tmp_path_factory) -> Path:
    from tests.conftest import preference_rows, write_jsonl

    folder = tmp_path_factory.mktemp("fault_data")
    write_jsonl(folder / "train.jsonl", preference_rows(16))
    write_jsonl(folder / "valid.jsonl", preference_rows(8, seed=1, start=100))
    return folder


@pytest.fixture(scope="module")
def uninterrupted(llama_chatml, fault_data, tmp_path_factory) -> tuple[Path, float]:
    """The run every interrupted one must end up equal to, and how long it took."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    tic = time.time()
    subprocess.run(train_command(llama_chatml, fault_data, run_dir, *FAULT_ARGS), check=True,
                   capture_output=True)  # fmt: skip
    return run_dir, time.time() - tic


def assert_nothing_torn(run_dir: Path) -> None:
    """Every file a reader or --resume would open is whole (temporary files are not read)."""
    visible = [p for p in run_dir.rglob("*") if not any(part.startswith(".") for part in
               p.relative_to(run_dir).parts)]  # fmt: skip
    for path in visible:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            mx.load(str(path))
    metrics = run_dir / "metrics.jsonl"  # none yet when killed while loading
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for line in lines[:-1]:  # the last line may be torn; readers skip it
        json.loads(line)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is not None:
        from mlx_dpo.checkpoints import load_checkpoint

        load_checkpoint(checkpoint)


# Equal up to float noise: OpenBLAS's AVX-512 kernels (mlx_dpo/platform.py picks them) do
# not give bit-identical products from one process to the next, and a 1e-7 difference grows
# over the steps; a lost or repeated step, or another order of pairs, differs by ~1e-2.
SAME_WEIGHTS = {"rtol": 1e-5, "atol": 1e-6}


def assert_same_adapters(expected_dir: Path, run_dir: Path) -> None:
    a = mx.load(str(expected_dir / "adapters.safetensors"))
    b = mx.load(str(run_dir / "adapters.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(np.array(a[name]), np.array(b[name]), **SAME_WEIGHTS)


def resume_to_the_end(model, data, run_dir: Path) -> None:
    command = train_command(model, data, run_dir, *FAULT_ARGS, "--resume")
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in run_dir.rglob(".*") if p.name != ".launch.yaml"], "temporaries left"
    events = read_events(run_dir)
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, 9))
    assert [e["step"] for e in events if e["event"] == "eval"] == [2, 4, 6, 8]
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "completed"


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [
        "eval:2",  # the evaluation after step 4, between its batches
        "write:adapters:3",  # the run directory's adapters.safetensors at step 4, half written
        "write:optimizer:3",  # checkpoint step 6's optimizer state, half written
    ],
)
def test_kill_9_at_a_fault_point_then_resume(
    llama_chatml, fault_data, uninterrupted, tmp_path, point
):
    run_dir = tmp_path / "run"
    command = train_command(llama_chatml, fault_data, run_dir, *FAULT_ARGS)
    killed = subprocess.run([sys.executable, "-m", "tests.faults", point, "--", *command[3:]],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    events = read_events(run_dir)
    assert events[-1]["event"] != "run_end"
    assert_nothing_torn(run_dir)
    if point == "eval:2":
        assert [e["step"] for e in events if e["event"] == "eval"] == [2]
        assert max(e["step"] for e in events if e["event"] == "step") == 4
    elif point == "write:adapters:3":
        # The previous adapters stay whole and are step 2's, beside a torn temporary.
        assert list(run_dir.glob(".adapters.*.safetensors"))
        saved = mx.load(str(run_dir / "adapters.safetensors"))
        at_step_2 = mx.load(str(run_dir / "checkpoints" / "step-0000002" / "adapters.safetensors"))
        assert all(mx.array_equal(saved[k], at_step_2[k]) for k in saved)
    else:
        assert list((run_dir / "checkpoints").glob(".step-0000006.*"))
        assert latest_checkpoint(run_dir).name == "step-0000004"
    resume_to_the_end(llama_chatml, fault_data, run_dir)
    assert_same_adapters(uninterrupted[0], run_dir)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(
    llama_chatml, fault_data, uninterrupted, tmp_path, record_property
):
    """Killed up to six times at seeded random moments over a run's length (loading, steps,
    evaluations, checkpoint writes); after each kill the same command, with --resume once a
    run has started, takes it on. The end equals the uninterrupted run."""
    rng = np.random.default_rng(7)
    run_dir = tmp_path / "run"
    kills = 0
    while True:
        resume = ("--resume",) if (run_dir / "config.yaml").exists() else ()
        process = subprocess.Popen(
            train_command(llama_chatml, fault_data, run_dir, *FAULT_ARGS, *resume),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            _, err = process.communicate(
                timeout=rng.uniform(0.3, 0.8 * uninterrupted[1]) if kills < 6 else 300
            )
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.communicate()
            kills += 1
            if run_dir.exists():
                assert_nothing_torn(run_dir)
            continue
        assert process.returncode == 0, err
        break
    # A resumed run is shorter than a whole one, so a drawn moment can come after its end.
    record_property("kills", kills)
    assert kills >= 3
    events = read_events(run_dir)
    assert [e["step"] for e in events if e["event"] == "step"] == list(range(1, 9))
    assert_same_adapters(uninterrupted[0], run_dir)


# Out of disk, out of memory: the message says what ran out, nothing half-written stays.

MLX_SHORT_WRITE = "[write] Unable to write 297692 bytes to file."  # MLX's words on a full disk


class FullDiskAt:
    """Stands in for mlx.core inside mlx_dpo.checkpoints: the n-th safetensors write stops
    half-way with MLX's own error, as on a full disk (measured on a 100 KB tmpfs)."""

    def __init__(self, nth: int):
        self.nth, self.writes = nth, 0

    def __getattr__(self, name):
        return getattr(mx, name)

    def save_safetensors(self, path, arrays, metadata=None):
        self.writes += 1
        mx.save_safetensors(path, arrays, metadata=metadata)
        if self.writes == self.nth:
            os.truncate(path, os.path.getsize(path) // 2)
            raise RuntimeError(MLX_SHORT_WRITE)


def small_run(model, data, run_dir, **overrides) -> TrainConfig:
    values = dict(model=str(model), data=str(data), adapter_path=str(run_dir), iters=6,
                  eval_every=0, save_every=2, lora_rank=4, batch_size=2, **overrides)  # fmt: skip
    return build_config({}, values)


@pytest.mark.parametrize("nth_write", [4, 6])  # step 4's run-directory adapters / optimizer state
def test_disk_full_during_a_save_keeps_the_last_good_checkpoint(
    llama_chatml, preference_data, tmp_path, monkeypatch, nth_write
):
    from mlx_dpo import checkpoints

    monkeypatch.setattr(checkpoints, "mx", FullDiskAt(nth_write))
    run_dir = tmp_path / "run"
    lines: list[str] = []
    config = small_run(llama_chatml, preference_data, run_dir)
    status = train(config, RunOptions(run_dir, on_line=lines.append, handle_signals=False))
    assert status == "failed"
    end = read_events(run_dir)[-1]
    assert end["event"] == "run_end" and end["status"] == "failed"
    assert "disk full" in end["error"] and "--resume" in end["error"]
    assert "Last good checkpoint" in end["error"] and "step-0000002" in end["error"]
    assert any(line.startswith("error: saving step 4: disk full") for line in lines)
    assert not list(run_dir.rglob(".*")), "a half-written temporary was left"
    assert latest_checkpoint(run_dir).name == "step-0000002"
    saved = mx.load(str(run_dir / "adapters.safetensors"))  # whole: step 2's or step 4's
    assert saved.keys() == mx.load(str(latest_checkpoint(run_dir) / "adapters.safetensors")).keys()


@pytest.mark.parametrize(
    "error",
    [
        MemoryError("std::bad_alloc"),
        RuntimeError(
            "[metal::malloc] Attempting to allocate 21474836480 bytes which is greater than the "
            "maximum allowed buffer size of 17179869184 bytes."
        ),
    ],
    ids=["cpu", "metal"],
)
def test_out_of_memory_fails_with_what_to_do_and_keeps_the_checkpoint(
    llama_chatml, preference_data, tmp_path, monkeypatch, capsys, error
):
    from mlx_dpo.cli import main
    from mlx_dpo.trainer import step

    compiled_step = step.compiled_step

    def step_that_runs_out(*args, **kwargs):
        accumulate, apply = compiled_step(*args, **kwargs)
        calls = {"n": 0}

        def apply_or_run_out(*inner, **kw):
            calls["n"] += 1
            if calls["n"] == 3:
                raise error
            return apply(*inner, **kw)

        return accumulate, apply_or_run_out

    monkeypatch.setattr(step, "compiled_step", step_that_runs_out)
    run_dir = tmp_path / "run"
    argv = ["train", "--model", str(llama_chatml), "--data", str(preference_data),
            "--adapter-path", str(run_dir), "--iters", "6", "--save-every", "2",
            "--eval-every", "0", "--lora-rank", "4", "--no-tui"]  # fmt: skip
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "error: step 3: out of memory" in out and "--plan" in out
    end = read_events(run_dir)[-1]
    assert end["status"] == "failed" and "out of memory" in end["error"]
    assert "step-0000002" in end["error"]
    assert latest_checkpoint(run_dir).name == "step-0000002"


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    if os.geteuid() != 0 or sys.platform != "linux":
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)  # fmt: skip
    return done.returncode == 0


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_run_then_resume(
    llama_chatml, fault_data, uninterrupted, tmp_path
):
    """A real full disk (a small tmpfs, root only): another program fills it after step 2.
    The run fails saying so, leaves nothing torn, and once space is freed --resume finishes it
    equal to the uninterrupted run."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "8m"):
        pytest.skip("needs root on Linux to mount a small tmpfs")
    try:
        run_dir = disk / "run"
        process = subprocess.Popen(
            train_command(llama_chatml, fault_data, run_dir, *FAULT_ARGS),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for_step(run_dir, 2, process)
        filler = disk / "filler"
        with open(filler, "wb") as handle, pytest.raises(OSError):
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        out, err = process.communicate(timeout=120)
        assert process.returncode == 1, err
        assert "disk full" in out and "Traceback" not in out + err
        assert_nothing_torn(run_dir)
        filler.unlink()
        resume_to_the_end(llama_chatml, fault_data, run_dir)
        assert_same_adapters(uninterrupted[0], run_dir)
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# A stop in every state, from outside: the latency from the signal to the process's exit.


def with_fault(point: str, command: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.faults", point, "--", *command[3:]],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def wait_for_event(run_dir: Path, process: subprocess.Popen, found, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(found(e) for e in read_events(run_dir)):
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError(f"not seen within {timeout}s")


def stop_and_time(process: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[float, str]:
    sent = time.monotonic()
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "Traceback" not in out + err
    return time.monotonic() - sent, out


@pytest.mark.slow
def test_sigterm_during_the_reference_precompute_then_resume_continues_it(
    llama_chatml, fault_data, tmp_path, monkeypatch, record_property
):
    """Each batch of the precompute takes 1 s more: SIGTERM in the middle of it ends the run
    within seconds, stopped; the next start computes only the pairs left."""
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))  # nothing cached yet
    run_dir = tmp_path / "run"
    command = train_command(llama_chatml, fault_data, run_dir, *FAULT_ARGS)
    process = with_fault("slow:reference:1", command)
    wait_for_event(run_dir, process, lambda e: e["event"] == "reference" and e["done"] >= 2)
    latency, out = stop_and_time(process)
    record_property("stop_latency_s", round(latency, 2))
    assert latency < 4, latency  # the batch in progress (1 s) and the exit
    events = read_events(run_dir)
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "stopped"
    assert not [e for e in events if e["event"] == "step"]
    assert read_status(run_dir)["state"] == "stopped"
    # `reference` events come every few seconds; the console line says what was kept.
    kept = re.search(r"stopped during the reference log-probs \((\d+)/16 pairs kept", out)
    assert kept is not None, out
    done = int(kept.group(1))
    assert done >= 2
    resumed = subprocess.run(train_command(llama_chatml, fault_data, run_dir, *FAULT_ARGS,
                                           "--resume"), capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    events = read_events(run_dir)
    second_start = max(i for i, e in enumerate(events) if e["event"] == "run_start")
    computed = [e for e in events[second_start:] if e["event"] == "reference" and not e["cached"]]
    # The resumed pass starts where the stopped one left off (its first event says so).
    assert computed[0]["split"] == "train" and computed[0]["done"] == done
    assert events[-1]["status"] == "completed"


@pytest.mark.slow
def test_sigterm_during_an_evaluation_then_resume_equals_an_uninterrupted_run(
    llama_chatml, fault_data, uninterrupted, tmp_path, record_property
):
    """Each evaluation batch takes 1 s more: SIGTERM in the evaluation after step 2 stops it
    between batches with step 2's checkpoint; --resume redoes that evaluation first and ends
    equal to the uninterrupted run."""
    run_dir = tmp_path / "run"
    command = train_command(llama_chatml, fault_data, run_dir, *FAULT_ARGS)
    process = with_fault("slow:eval:1", command)
    wait_for_event(run_dir, process, lambda e: e.get("state") == "evaluating")
    latency, out = stop_and_time(process)
    record_property("stop_latency_s", round(latency, 2))
    assert latency < 4, latency
    assert "stopped during the evaluation at step 2" in out
    events = read_events(run_dir)
    assert events[-1]["status"] == "stopped" and events[-1]["last_checkpoint"].endswith(
        "step-0000002"
    )
    assert not [e for e in events if e["event"] == "eval"]
    resume_to_the_end(llama_chatml, fault_data, run_dir)  # evals at 2, 4, 6, 8
    assert_same_adapters(uninterrupted[0], run_dir)


@pytest.mark.slow
def test_sigterm_while_paused_stops_at_once(llama_chatml, fault_data, tmp_path, record_property):
    from mlx_dpo.events import send_command

    run_dir = tmp_path / "run"
    command = train_command(llama_chatml, fault_data, run_dir, "--iters", "100000")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(run_dir, 1, process)
    send_command(run_dir, "pause")
    wait_for_event(run_dir, process, lambda e: e.get("state") == "paused")
    time.sleep(1)  # well inside the pause
    latency, _ = stop_and_time(process)
    record_property("stop_latency_s", round(latency, 2))
    assert latency < 3, latency
    end = read_events(run_dir)[-1]
    assert end["status"] == "stopped" and end["last_checkpoint"].endswith(f"step-{end['step']:07d}")


@pytest.mark.slow
def test_a_second_trainer_on_a_live_run_is_refused(llama_chatml, fault_data, tmp_path):
    run_dir = tmp_path / "run"
    command = train_command(llama_chatml, fault_data, run_dir, "--iters", "100000")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(run_dir, 1, process)
        for extra in ((), ("--resume",)):
            second = subprocess.run(train_command(llama_chatml, fault_data, run_dir, *extra),
                                    capture_output=True, text=True)  # fmt: skip
            assert second.returncode == 2
            assert f"a trainer is running on this run (pid {process.pid})" in second.stderr
        assert process.poll() is None  # the live run goes on
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    assert read_events(run_dir)[-1]["status"] == "stopped"
