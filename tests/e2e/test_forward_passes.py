"""The forward-only passes (the reference precompute and evaluation) take as many pairs a
batch as the memory plan allows without passing a training step's estimate
(memory.arithmetic.forward_batch_size), and give the same numbers whatever that batch."""

from __future__ import annotations

import pytest

import mlx_dpo.trainer.run as run_module
from mlx_dpo.evaluate import evaluate_command
from tests.training import config_for, run, run_start


def test_the_reference_pass_and_the_evaluation_take_the_plans_batch(
    llama_chatml, preference_data, tmp_path, monkeypatch
):
    reference_batches: list[int] = []
    evaluation_batches: list[int | None] = []
    compute_reference = run_module.compute_reference
    evaluate_split = run_module.evaluate_split

    def counted_reference(*args, **kwargs):
        compute = compute_reference(*args, **kwargs)

        def counted(positions):
            reference_batches.append(len(positions))
            return compute(positions)

        return counted

    def counted_evaluation(*args, **kwargs):
        evaluation_batches.append(kwargs.get("batch_size"))
        return evaluate_split(*args, **kwargs)

    monkeypatch.setattr(run_module, "compute_reference", counted_reference)
    monkeypatch.setattr(run_module, "evaluate_split", counted_evaluation)
    monkeypatch.setenv("MLX_DPO_CACHE", str(tmp_path / "cache"))  # nothing cached yet
    config = config_for(llama_chatml, preference_data, tmp_path / "run", iters=2, eval_every=2)
    status, events = run(config)
    assert status == "completed"
    plan = run_start(events)["memory_plan"]
    forward = plan["forward"]["pairs"]
    # The tiny model's forward pass over 16 pairs needs less than its step over 4.
    assert forward > config.batch_size
    assert plan["forward"]["total_gb"] <= plan["total_gb"]
    # Train (24 pairs) then valid (8 pairs), each in batches of the plan's size.
    assert max(reference_batches) == forward
    assert sum(reference_batches) == 24 + 8
    assert evaluation_batches and all(b == min(forward, 8) for b in evaluation_batches)


def test_the_same_numbers_whatever_the_forward_batch(llama_chatml, preference_data, tmp_path):
    status, _ = run(config_for(llama_chatml, preference_data, tmp_path / "run", iters=2))
    assert status == "completed"
    adapter = str(tmp_path / "run")
    by_plan = evaluate_command(None, adapter, str(preference_data), split="valid")
    one_by_one = evaluate_command(None, adapter, str(preference_data), split="valid", batch_size=1)
    assert by_plan.keys() == one_by_one.keys()
    for name, value in by_plan.items():
        assert one_by_one[name] == pytest.approx(value, rel=1e-4, abs=1e-5), name
