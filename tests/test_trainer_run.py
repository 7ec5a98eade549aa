"""The run (mlx_dpo/trainer/run.py) on tiny models: it starts at the reference, cached equals
live, prefix sharing and checkpointing change nothing, it learns; the dashboard's commands
between steps; a run that cannot start leaves its end in the run directory."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.events import METRIC_NAMES, read_events, read_status, send_command
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
    # Checkpointing keeps prefix sharing (tests/test_grad_checkpoint.py checks the gradients).
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
