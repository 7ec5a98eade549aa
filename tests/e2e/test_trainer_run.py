"""The run (mlx_dpo/trainer/run.py) on tiny models: it starts at the reference, cached equals
live, prefix sharing and checkpointing change nothing, it learns; the dashboard's commands
between steps; a run that cannot start leaves its end in the run directory; a stop is
honoured while paused, evaluating and computing the reference, and a paused run nobody
watches stops itself."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.events import (
    METRIC_NAMES,
    PREFERENCE_METRIC_NAMES,
    read_events,
    read_status,
    send_command,
)
from mlx_dpo.session import open_session
from mlx_dpo.trainer.evaluation import evaluate_split
from mlx_dpo.trainer.run import RunOptions, train
from tests.training import adapters, config_for, run, run_start, steps


def test_first_step_starts_at_the_reference(llama_chatml, preference_data, tmp_path):
    status, events = run(config_for(llama_chatml, preference_data, tmp_path / "run", iters=2))
    assert status == "completed"
    first = steps(events)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-5)
    assert first["rewards/rejected"] == pytest.approx(0, abs=1e-5)
    assert first["kl"] == pytest.approx(0, abs=1e-5)
    names = {
        *METRIC_NAMES,
        "grad_norm",
        "learning_rate",
        "epoch",
        "tokens_per_second",
        "pairs_per_second",
        "peak_memory_gb",
    }
    assert names <= set(first)
    # Loading and tokenizing come first (their progress), then the run.
    started = next(i for i, e in enumerate(events) if e["event"] != "progress")
    assert events[started]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert events[-1]["status"] == "completed"


def test_cached_and_live_reference_give_the_same_run(llama_chatml, preference_data, tmp_path):
    _, cached = run(
        config_for(llama_chatml, preference_data, tmp_path / "cached", reference="cached")
    )
    _, live = run(config_for(llama_chatml, preference_data, tmp_path / "live", reference="live"))
    cached_loss = [e["loss"] for e in steps(cached)]
    live_loss = [e["loss"] for e in steps(live)]
    assert len(cached_loss) == 6
    np.testing.assert_allclose(cached_loss, live_loss, rtol=1e-4, atol=1e-5)
    a, b = adapters(tmp_path / "cached"), adapters(tmp_path / "live")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-5)


def test_reference_cache_is_reused(llama_chatml, preference_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "fresh-cache"))
    _, first = run(config_for(llama_chatml, preference_data, tmp_path / "a", iters=1))
    _, second = run(config_for(llama_chatml, preference_data, tmp_path / "b", iters=1, beta=0.2))
    computed = [e for e in first if e["event"] == "reference"]
    reused = [e for e in second if e["event"] == "reference"]
    assert computed and not any(e["cached"] for e in computed)
    assert reused and all(e["cached"] for e in reused)


def test_training_learns_the_train_set(llama_chatml, preference_data, tmp_path):
    config = config_for(
        llama_chatml,
        preference_data,
        tmp_path / "run",
        iters=24,
        learning_rate=5e-3,
        beta=0.5,
        lora_rank=8,
        lr_schedule="constant",
    )
    status, events = run(config)
    assert status == "completed"
    session = open_session(config, adapter_path=str(tmp_path / "run"))
    result = evaluate_split(session, session.splits["train"], config)
    assert result["rewards/accuracies"] >= 0.9
    assert result["rewards/margins"] > 0


def test_reference_mismatch_stops_the_run(llama_chatml, preference_data, tmp_path, monkeypatch):
    """A reference that is not the policy's starting point is an error, not a warning."""
    from mlx_dpo import reference

    original = reference.reference_logps

    def shifted(*args, **kwargs):
        chosen, rejected = original(*args, **kwargs)
        return chosen + 3.0, rejected - 3.0

    monkeypatch.setattr(reference, "reference_logps", shifted)
    status, events = run(config_for(llama_chatml, preference_data, tmp_path / "run", iters=4))
    assert status == "failed"
    errors = [e for e in events if e["event"] == "health" and e["severity"] == "error"]
    assert [h["kind"] for h in errors] == ["reference_mismatch"]
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "failed"
    assert len(steps(events)) == 1


def test_prefix_sharing_run_equals_plain_run(llama_chatml, preference_data, tmp_path):
    _, shared = run(config_for(llama_chatml, preference_data, tmp_path / "shared"))
    _, plain = run(
        config_for(llama_chatml, preference_data, tmp_path / "plain", prefix_sharing=False)
    )
    np.testing.assert_allclose(
        [e["loss"] for e in steps(shared)], [e["loss"] for e in steps(plain)], rtol=1e-4
    )
    a, b = adapters(tmp_path / "shared"), adapters(tmp_path / "plain")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-5)


def test_grad_checkpoint_run_restores_the_blocks(llama_chatml, preference_data, tmp_path):
    """Checkpointed and plain runs agree, and a later prefix-sharing run still works."""
    _, checkpointed = run(
        config_for(llama_chatml, preference_data, tmp_path / "ckpt", grad_checkpoint=True)
    )
    _, plain = run(config_for(llama_chatml, preference_data, tmp_path / "plain"))
    np.testing.assert_allclose(
        [e["loss"] for e in steps(checkpointed)], [e["loss"] for e in steps(plain)], rtol=1e-4
    )
    # Checkpointing keeps prefix sharing (tests/unit/test_grad_checkpoint.py checks the gradients).
    assert run_start(checkpointed)["prefix_sharing"] is True
    assert run_start(plain)["prefix_sharing"] is True


def test_pause_checkpoint_and_resume_commands_between_steps(
    llama_chatml, preference_data, tmp_path
):
    """Commands sent during step 2 are taken before step 3, in order: paused, a checkpoint of
    step 2 while paused, resumed; then the run goes on to its end."""
    run_dir = tmp_path / "run"
    config = config_for(llama_chatml, preference_data, run_dir, iters=4)
    lines: list[str] = []

    def steer(line: str) -> None:
        lines.append(line)
        if line.startswith("step 2/"):
            for command in ("pause", "checkpoint", "resume"):
                send_command(run_dir, command)

    status = train(config, RunOptions(run_dir, on_line=steer, handle_signals=False))
    assert status == "completed"
    events = read_events(run_dir)
    after_step_2 = [
        (e["event"], e.get("state")) for e in events if e["step"] == 2 and e["event"] != "step"
    ]
    assert after_step_2 == [("state", "paused"), ("checkpoint", None), ("state", "resumed")]
    assert [e["step"] for e in steps(events)] == [1, 2, 3, 4]
    assert (run_dir / "checkpoints" / "step-0000002").is_dir()
    assert "paused at step 2" in lines and "resumed" in lines
    assert any(line.startswith("checkpoint saved: ") and "step-0000002" in line for line in lines)
    assert read_status(run_dir)["state"] == "finished"


def test_a_stop_command_ends_the_run_stopped_with_a_checkpoint(
    llama_chatml, preference_data, tmp_path
):
    run_dir = tmp_path / "run"
    config = config_for(llama_chatml, preference_data, run_dir, iters=6)

    def stop_at_step_2(line: str) -> None:
        if line.startswith("step 2/"):
            send_command(run_dir, "stop")

    assert train(config, RunOptions(run_dir, on_line=stop_at_step_2, handle_signals=False)) == (
        "stopped"
    )
    events = read_events(run_dir)
    assert [e.get("state") for e in events if e["event"] == "state"] == ["stopping"]
    end = events[-1]
    assert end["event"] == "run_end" and end["status"] == "stopped" and end["step"] == 2
    assert end["last_checkpoint"].endswith("step-0000002") and end["final_eval"] is None
    assert read_status(run_dir)["state"] == "stopped"


def test_evaluations_and_checkpoints_on_their_schedule(llama_chatml, preference_data, tmp_path):
    run_dir = tmp_path / "run"
    config = config_for(llama_chatml, preference_data, run_dir, iters=5, eval_every=2, save_every=2)
    status, events = run(config)
    assert status == "completed"
    # Every 2 steps before the last, and the last step's own (the final eval, the last save).
    assert [e["step"] for e in events if e["event"] == "eval"] == [2, 4, 5]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [2, 4, 5]
    evals = [e for e in events if e["event"] == "eval"]
    assert set(METRIC_NAMES) <= set(evals[0]) and evals[0]["pairs"] == 8
    assert set(PREFERENCE_METRIC_NAMES) <= set(evals[0])  # the policy's own preference
    end = events[-1]
    assert end["final_eval"]["loss"] == evals[-1]["loss"]
    best = min(evals, key=lambda e: e["loss"])
    assert end["best_eval"]["step"] == best["step"] and end["best_eval"]["loss"] == best["loss"]


def test_a_run_that_cannot_open_its_session_records_its_end(preference_data, tmp_path):
    run_dir = tmp_path / "run"
    config = config_for(tmp_path / "no-model", preference_data, run_dir)
    with pytest.raises(UserError):
        train(config, RunOptions(run_dir, on_line=lambda _: None, handle_signals=False))
    (end,) = read_events(run_dir)
    assert end["event"] == "run_end" and end["status"] == "failed" and end["step"] == 0
    assert "no-model" in end["error"] and end["adapter_path"] is None
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["error"] == end["error"]
    assert not (run_dir / "config.yaml").exists()


# ---- a stop is honoured in every state ---------------------------------------------------


class Steering:
    """on_line for a run: pauses it at its first step line (step 2 of 50), then does
    `when_paused` once the pause is said. A watchdog resumes the run after 20 s so that a stop
    that is not honoured fails the test instead of hanging it."""

    def __init__(self, run_dir, when_paused, pid=None):
        self.run_dir, self.when_paused, self.pid = run_dir, when_paused, pid
        self.lines: list[str] = []
        self.watchdog = threading.Timer(20, lambda: send_command(run_dir, "resume"))

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith("step ") and not self.watchdog.is_alive():
            fields = {} if self.pid is None else {"pid": self.pid}
            send_command(self.run_dir, "pause", **fields)
            self.watchdog.start()
        elif line.startswith("paused at step"):
            self.when_paused()

    def done(self) -> None:
        self.watchdog.cancel()


def signal_later(sig: int, seconds: float, sent: list[float]) -> None:
    def send():
        sent.append(time.monotonic())
        os.kill(os.getpid(), sig)

    threading.Timer(seconds, send).start()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "stop command"])
def test_a_paused_run_stops_at_once_with_a_checkpoint(llama_chatml, preference_data, tmp_path, how):
    """Today's pause loop never looked at the stop request: a signal or the dashboard's
    stop waited for ever. Now the run stops within a poll (0.2 s), saved."""
    run_dir = tmp_path / "run"
    sent: list[float] = []
    if how == "stop command":

        def when_paused():
            threading.Timer(0.5, lambda: (sent.append(time.monotonic()),
                                          send_command(run_dir, "stop"))).start()  # fmt: skip
    else:

        def when_paused():
            signal_later(getattr(signal, how), 0.5, sent)

    steering = Steering(run_dir, when_paused)
    config = config_for(llama_chatml, preference_data, run_dir, iters=50)
    status = train(config, RunOptions(run_dir, on_line=steering, handle_signals=True))
    latency = time.monotonic() - sent[0]
    steering.done()
    assert status == "stopped" and latency < 2.0, latency
    events = read_events(run_dir)
    paused_at = next(e["step"] for e in events if e.get("state") == "paused")
    assert [e["step"] for e in steps(events)][-1] == paused_at  # no step after the pause
    assert events[-1]["event"] == "run_end" and events[-1]["status"] == "stopped"
    assert events[-1]["last_checkpoint"].endswith(f"step-{paused_at:07d}")
    assert read_status(run_dir)["state"] == "stopped"


def test_a_paused_run_with_no_dashboard_saves_and_stops_after_its_timeout(
    llama_chatml, preference_data, tmp_path
):
    """Paused by a process that is gone, with pause_timeout_minutes 0.01 (0.6 s): status.json
    says when it will stop, and then it saves and ends stopped."""
    run_dir = tmp_path / "run"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    seen: dict = {}

    def when_paused():
        seen["paused"] = time.time()

        def watch():
            while "auto_stop_at" not in seen:
                status = read_status(run_dir)
                if status.get("auto_stop_at"):
                    seen["auto_stop_at"] = status["auto_stop_at"]
                time.sleep(0.02)

        threading.Thread(target=watch, daemon=True).start()

    steering = Steering(run_dir, when_paused, pid=gone.pid)
    config = config_for(llama_chatml, preference_data, run_dir, iters=50,
                        pause_timeout_minutes=0.01)  # fmt: skip
    status = train(config, RunOptions(run_dir, on_line=steering, handle_signals=False))
    ended = time.time()
    steering.done()
    assert status == "stopped"
    assert seen["auto_stop_at"] == pytest.approx(seen["paused"] + 0.6, abs=0.5)
    assert seen["auto_stop_at"] <= ended < seen["auto_stop_at"] + 2
    assert any("paused 0.01 min with no dashboard attached" in line for line in steering.lines)
    final = read_status(run_dir)
    assert final["state"] == "stopped" and final["auto_stop_at"] is None
    assert read_events(run_dir)[-1]["last_checkpoint"].endswith(f"step-{final['step']:07d}")


def test_a_stop_during_an_evaluation_comes_between_its_batches(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    from mlx_dpo.trainer import evaluation
    from mlx_dpo.trainer import run as run_module

    row_sums = evaluation.row_sums
    batches: list[str] = []

    def signalling_rows(*args, **kwargs):
        batches.append("batch")
        if len(batches) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # during the first of its two batches
        return row_sums(*args, **kwargs)

    monkeypatch.setattr(evaluation, "row_sums", signalling_rows)
    # Batches of 4: the plan's forward batch would take the tiny model's 8 pairs in one.
    monkeypatch.setattr(run_module, "forward_batch_for", lambda *args: 4)
    run_dir = tmp_path / "run"
    config = config_for(llama_chatml, preference_data, run_dir, iters=6, eval_every=2)
    lines: list[str] = []
    status = train(config, RunOptions(run_dir, on_line=lines.append, handle_signals=True))
    assert status == "stopped" and batches == ["batch"]  # the second batch never ran
    events = read_events(run_dir)
    assert not [e for e in events if e["event"] == "eval"]
    assert [e.get("state") for e in events if e["event"] == "state"] == ["evaluating", "stopping"]
    assert "stopped during the evaluation at step 2" in lines
    assert events[-1]["last_checkpoint"].endswith("step-0000002")


def test_a_stop_command_during_the_reference_pass_then_resume_continues_it(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    """The dashboard's stop was not read before the first step (its reader did not exist
    yet); now the precompute stops after the batch in progress, and the resumed run computes
    only the pairs left."""
    from mlx_dpo.trainer import run as run_module

    compute_reference = run_module.compute_reference
    computed: list[int] = []
    resumed: list[bool] = []
    run_dir = tmp_path / "run"

    def counting(*args, **kwargs):
        compute = compute_reference(*args, **kwargs)

        def batch(positions):
            computed.append(len(positions))
            if len(computed) == 2 and not resumed:
                send_command(run_dir, "stop")
            return compute(positions)

        return batch

    monkeypatch.setattr(run_module, "compute_reference", counting)
    # Batches of 4: the plan's forward batch would take 16 of the tiny model's pairs at once.
    monkeypatch.setattr(run_module, "forward_batch_for", lambda *args: 4)
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))  # nothing cached yet
    config = config_for(llama_chatml, preference_data, run_dir, iters=2, batch_size=4)
    lines: list[str] = []
    assert (
        train(config, RunOptions(run_dir, on_line=lines.append, handle_signals=False)) == "stopped"
    )
    assert sum(computed) == 8 and any(
        "stopped during the reference log-probs (8/24" in line for line in lines
    )
    assert read_status(run_dir)["state"] == "stopped"
    computed.clear()
    resumed.append(True)
    status, events = run(config, resume=True)
    assert status == "completed"
    assert sum(computed) == 16 + 8  # the 16 train pairs left, then the valid split's 8


def test_what_a_dashboard_shows_is_in_the_stream(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    """A tiny run's events end to end: the long phases' progress before run_start (each from
    0 to its total), the reference precompute's, answers at the start and each evaluation,
    the checks that are off (an 8-pair validation split, 4 steps), quantized_base."""
    from mlx_dpo.trainer import samples

    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "fresh-cache"))  # nothing cached
    monkeypatch.setattr(samples, "MAX_SHARE", math.inf)  # tiny steps: no round skipped
    config = config_for(
        llama_chatml, preference_data, tmp_path / "run", iters=4, eval_every=2, sample_max_tokens=8
    )
    status, events = run(config)
    assert status == "completed"
    start = next(i for i, e in enumerate(events) if e["event"] == "run_start")
    before = events[:start]
    assert {e["event"] for e in before} == {"progress"}
    phases: dict[tuple[str, str], list[float]] = {}
    for event in before:
        phases.setdefault((event["phase"], event["unit"]), []).append(event["done"])
    assert list(phases) == [
        ("loading", "MB"),
        ("tokenizing", "train pairs"),
        ("tokenizing", "valid pairs"),
        ("tokenizing", "test pairs"),
    ]
    totals = {(e["phase"], e["unit"]): e["total"] for e in before}
    assert (
        totals[("tokenizing", "train pairs")] == 24 and totals[("tokenizing", "valid pairs")] == 8
    )
    for key, done in phases.items():
        assert done[0] == 0 and done[-1] == totals[key] and done == sorted(done), key
    reference = [e for e in events if e["event"] == "reference"]
    for split, pairs in (("train", 24), ("valid", 8)):
        done = [e["done"] for e in reference if e["split"] == split]
        assert done[0] == 0 and done[-1] == pairs and done == sorted(done)

    answers = [e for e in events if e["event"] == "samples"]
    assert [e["step"] for e in answers] == [0, 2, 4]
    assert all(len(e["prompts"]) == 4 for e in answers)
    assert all("reference" in p for p in answers[0]["prompts"])
    assert all("policy" in p for e in answers[1:] for p in e["prompts"])

    off = {e["kind"]: e for e in events if e["event"] == "health" and e["severity"] == "off"}
    assert set(off) == {
        "orientation",
        "chosen_logp_collapse",
        "kl_drift",
        "not_learning",
        "overfitting",
    }
    assert (
        "the validation split has 8 pairs, under health.valid_min_pairs (20)"
        in off["overfitting"]["message"]
    )
    assert all(e["step"] == 0 for e in off.values())
    assert events[start]["quantized_base"] is False
    assert events[-1]["event"] == "run_end"


def test_paused_time_is_left_out_of_elapsed(llama_chatml, preference_data, tmp_path):
    """A pause between steps 2 and 3: its state events carry the times of the pause, and the
    step events' elapsed leaves it out (the dashboard's seconds per step reads elapsed)."""
    run_dir = tmp_path / "run"
    config = config_for(llama_chatml, preference_data, run_dir, iters=4)

    def pause_at_step_2(line: str) -> None:
        if line.startswith("step 2/"):
            send_command(run_dir, "pause")
            threading.Timer(1.0, send_command, (run_dir, "resume")).start()

    assert train(config, RunOptions(run_dir, on_line=pause_at_step_2, handle_signals=False)) == (
        "completed"
    )
    events = read_events(run_dir)
    paused, resumed = (
        e for e in events if e["event"] == "state" and e["state"] in ("paused", "resumed")
    )
    assert (paused["state"], resumed["state"]) == ("paused", "resumed")
    assert paused["step"] == resumed["step"] == 2
    pause = resumed["time"] - paused["time"]
    assert pause >= 0.9
    by_step = {e["step"]: e for e in steps(events)}
    wall = by_step[3]["time"] - by_step[2]["time"]
    assert wall >= pause
    assert by_step[3]["elapsed"] - by_step[2]["elapsed"] == pytest.approx(wall - pause, abs=0.05)
    end = events[-1]
    assert end["elapsed"] - by_step[4]["elapsed"] == pytest.approx(
        end["time"] - by_step[4]["time"], abs=0.05
    )


def test_a_stop_while_paused_stops_the_run(llama_chatml, preference_data, tmp_path):
    """The dashboard's stop (or Ctrl-C, SIGTERM) on a paused run: it stops and saves, rather
    than staying paused for ever; the pause ends at the stop."""
    run_dir = tmp_path / "run"
    config = config_for(llama_chatml, preference_data, run_dir, iters=6)

    def pause_then_stop(line: str) -> None:
        if line.startswith("step 2/"):
            send_command(run_dir, "pause")
            threading.Timer(0.5, send_command, (run_dir, "stop")).start()

    done: list[str] = []
    runner = threading.Thread(
        target=lambda: done.append(
            train(config, RunOptions(run_dir, on_line=pause_then_stop, handle_signals=False))
        ),
        daemon=True,
    )
    runner.start()
    runner.join(60)
    assert done == ["stopped"]
    events = read_events(run_dir)
    states = [(e["state"], e["step"]) for e in events if e["event"] == "state"]
    assert states == [("paused", 2), ("stopping", 2)]
    assert events[-1]["event"] == "run_end" and events[-1]["last_checkpoint"].endswith(
        "step-0000002"
    )
    assert read_status(run_dir)["state"] == "stopped"


# ---------------------------------------------------------------------------------------------
# Losses beyond DPO (issue 20): what each family runs, and what it skips


def reference_files(cache: Path) -> list[str]:
    folder = cache / "reference"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("loss", ["orpo", "simpo"])
def test_reference_free_runs_skip_the_reference_pass(
    llama_chatml, preference_data, tmp_path, monkeypatch, loss
):
    """No reference pass, no reference events, nothing in the reference cache; kl is null,
    the checks that need a reference say they are off; orpo streams its extras."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLX_DPO_CACHE", str(cache))
    config = config_for(
        llama_chatml, preference_data, tmp_path / "run", loss=loss, iters=4, eval_every=2
    )
    status, events = run(config)
    assert status == "completed"
    assert not [e for e in events if e["event"] == "reference"]
    assert reference_files(cache) == []
    states = [e.get("state") for e in events if e["event"] == "state"]
    assert "computing_reference" not in states
    evals = [e for e in events if e["event"] == "eval"]
    assert len(evals) == 2 and all(e["kl"] is None for e in steps(events) + evals)
    extras = {"nll_loss", "log_odds_ratio", "log_odds_chosen"}
    for event in steps(events) + evals:
        assert (extras <= set(event)) == (loss == "orpo")
        assert all(math.isfinite(event[k]) for k in METRIC_NAMES if k != "kl")
    off = {e["kind"]: e for e in events if e["event"] == "health" and e["severity"] == "off"}
    # A 4-step run turns the trend checks off too; these two are off for the loss itself.
    for kind in ("reference_mismatch", "kl_drift"):
        assert f"the {loss} loss uses no reference model" in off[kind]["message"]
    if loss == "orpo":
        # The NLL term is the chosen answers' token-mean NLL: -logps/chosen over their tokens.
        first = steps(events)[0]
        assert first["nll_loss"] > 0 and first["loss"] > first["nll_loss"]
    assert steps(events)[-1]["loss"] < steps(events)[0]["loss"]


def test_kto_run_trains_on_rated_completions(llama_chatml, thumbs_data, tmp_path, monkeypatch):
    """KTO end to end: it starts at λ/2 with zero rewards, the reference cache holds the
    completions' log-probs only (the KL rows' reference is computed in each step), every
    step counts its desirable and undesirable completions, and the right-side share rises."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLX_DPO_CACHE", str(cache))
    config = config_for(
        llama_chatml, thumbs_data, tmp_path / "run", loss="kto", iters=8, eval_every=4,
        learning_rate=5e-3, lr_schedule="constant",
    )  # fmt: skip
    status, events = run(config)
    assert status == "completed"
    first = steps(events)[0]
    assert first["loss"] == pytest.approx(0.5, abs=1e-5)
    assert first["kl"] == pytest.approx(0, abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected"):
        assert first[name] is None or first[name] == pytest.approx(0, abs=1e-5)
    for event in steps(events):
        assert event["count/desirable"] + event["count/undesirable"] == 4
        assert event["kl"] >= 0
    done = [e for e in events if e["event"] == "reference" and e["done"] == e["total"]]
    assert {(e["split"], e["total"]) for e in done} == {("train", 40), ("valid", 12)}
    assert not [e for e in events if e["event"] == "health" and e["severity"] == "error"]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["pairs"] for e in evals] == [12, 12]
    assert evals[0]["count/desirable"] + evals[0]["count/undesirable"] == 12
    assert evals[-1]["rewards/accuracies"] > 0.5 and evals[-1]["rewards/margins"] > 0
    files = [f for f in reference_files(cache) if f.endswith(".ref")]
    assert len(files) == 2
    for name in files:
        header = json.loads((cache / "reference" / name).read_bytes().partition(b"\n")[0])
        assert header["arrays"] == ["completion"]
    start = next(e for e in events if e["event"] == "run_start")
    assert start["event"] == "run_start" and start["loss"] == "kto" and start["train_pairs"] == 40


@pytest.mark.slow
def test_ld_dpo_caches_its_tail_sums_and_cached_equals_live(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLX_DPO_CACHE", str(cache))
    options = dict(loss="sigmoid", ld_alpha=0.3, use_weighting=True, iters=3)
    _, cached = run(config_for(llama_chatml, preference_data, tmp_path / "cached", **options))
    _, live = run(
        config_for(llama_chatml, preference_data, tmp_path / "live", reference="live", **options)
    )
    np.testing.assert_allclose(
        [e["loss"] for e in steps(cached)], [e["loss"] for e in steps(live)], rtol=1e-4
    )
    entries = [f for f in reference_files(cache) if f.endswith(".ref")]
    assert entries
    for name in entries:
        header = json.loads((cache / "reference" / name).read_bytes().partition(b"\n")[0])
        assert set(header["arrays"]) == {"chosen", "rejected", "chosen_tail", "rejected_tail"}
