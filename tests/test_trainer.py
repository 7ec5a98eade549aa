"""The training loop on tiny models: start at the reference, exact gradients, cached equals
live, resume equals uninterrupted, and it learns."""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_dpo.batching import collate
from mlx_dpo.config import build_config
from mlx_dpo.events import METRIC_NAMES, read_events, send_command
from mlx_dpo.trainer.batch_logps import (
    batch_arrays,
    reference_rows_logps,
    response_token_counts,
    rows_logps,
)
from mlx_dpo.trainer.evaluation import evaluate_split
from mlx_dpo.trainer.run import RunOptions, train
from mlx_dpo.trainer.session import open_session
from mlx_dpo.trainer.step import make_loss_fn


def config_for(model: Path, data: Path, run_dir: Path, **overrides):
    values = dict(
        model=str(model),
        data=str(data),
        adapter_path=str(run_dir),
        iters=6,
        batch_size=4,
        learning_rate=2e-3,
        beta=0.5,
        eval_every=0,
        save_every=0,
        lora_rank=4,
    )
    values.update(overrides)
    return build_config({}, values)


def run(config, **options) -> tuple[str, list[dict]]:
    lines = []
    status = train(
        config,
        RunOptions(
            Path(config.adapter_path), on_line=lines.append, handle_signals=False, **options
        ),
    )
    return status, read_events(config.adapter_path)


def steps(events):
    return [e for e in events if e["event"] == "step"]


def adapters(run_dir: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in mx.load(str(run_dir / "adapters.safetensors")).items()}


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
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    assert events[-1]["status"] == "completed"


def test_reference_is_the_base_model_before_and_after_training(
    llama_chatml, preference_data, tmp_path
):
    from mlx_lm.utils import load

    config = config_for(llama_chatml, preference_data, tmp_path / "run", iters=4)
    session = open_session(config)
    batch = collate(session.splits["train"].pairs[:4])
    arrays = batch_arrays(batch)
    base, _ = load(str(llama_chatml))
    from mlx_dpo.logprobs import find_head_split, response_logps

    base_logps = np.array(response_logps(base, *arrays, find_head_split(base)))
    np.testing.assert_allclose(
        np.array(reference_rows_logps(session, *arrays)), base_logps, rtol=1e-5
    )
    # Train the LoRA weights away from zero, then switch them off again.
    session.model.update(tree_map(lambda p: p + 0.05, session.model.trainable_parameters()))
    policy = np.array(rows_logps(session, *arrays))
    assert np.abs(policy - base_logps).max() > 1e-3
    np.testing.assert_allclose(
        np.array(reference_rows_logps(session, *arrays)), base_logps, rtol=1e-5
    )
    # The switch is restored: the policy is unchanged after a reference pass.
    np.testing.assert_allclose(np.array(rows_logps(session, *arrays)), policy, rtol=1e-6)


@pytest.mark.parametrize("reference", ["cached", "live"])
def test_gradients_match_finite_differences(llama_chatml, preference_data, tmp_path, reference):
    config = config_for(
        llama_chatml,
        preference_data,
        tmp_path / "run",
        beta=2.0,
        reference=reference,
        lora_scale=4.0,
    )
    session = open_session(config)
    model = session.model
    # Non-zero B so both A and B have gradients; the policy then differs from the reference.
    rng = np.random.default_rng(0)
    model.update(
        tree_map(
            lambda p: p + mx.array(rng.normal(0, 0.05, p.shape).astype(np.float32)),
            model.trainable_parameters(),
        )
    )
    batch = collate(session.splits["train"].pairs[:4])
    arrays = batch_arrays(batch)
    chosen_tokens, rejected_tokens = response_token_counts(batch)
    ref = np.array(reference_rows_logps(session, *arrays))
    ref_chosen, ref_rejected = mx.array(ref[:4]), mx.array(ref[4:])
    loss_fn = make_loss_fn(session, config)
    inputs = (arrays, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
    (loss, _), grads = nn.value_and_grad(model, loss_fn)(*inputs)
    assert loss.item() != pytest.approx(math.log(2), abs=1e-3)
    grads = dict(tree_flatten(grads))
    params = dict(tree_flatten(model.trainable_parameters()))
    checked = 0
    for name in [
        n for n in params if "layers.0.self_attn.q_proj" in n or "layers.1.mlp.down_proj" in n
    ]:
        flat = np.array(params[name]).reshape(-1)
        g = np.array(grads[name]).reshape(-1)
        for index in np.argsort(-np.abs(g))[:3]:
            eps = 1e-2
            values = []
            for sign in (1, -1):
                perturbed = flat.copy()
                perturbed[index] += sign * eps
                model.update(
                    tree_unflatten([(name, mx.array(perturbed.reshape(params[name].shape)))])
                )
                values.append(loss_fn(*inputs)[0].item())
            model.update(tree_unflatten([(name, params[name])]))
            numeric = (values[0] - values[1]) / (2 * eps)
            assert numeric == pytest.approx(g[index], rel=0.05, abs=1e-4), (name, index)
            checked += 1
    assert checked >= 12


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
    assert checkpointed[0]["prefix_sharing"] is True and plain[0]["prefix_sharing"] is True
