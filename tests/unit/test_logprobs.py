"""Per-pair log-probs against an independent computation: plain mlx-lm forward, a numpy
log-softmax, gather, sum over the response tokens."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.utils import load

from mlx_dpo import logprobs
from mlx_dpo.batching import collate
from mlx_dpo.data import load_splits
from mlx_dpo.logprobs import find_head_split, response_logps
from tests.conftest import preference_rows, write_jsonl


def independent_logp(model, tokenizer, messages_prompt, messages_response) -> float:
    prompt = tokenizer.apply_chat_template(messages_prompt, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages_prompt + messages_response)
    assert full[: len(prompt)] == prompt
    logits = np.array(model(mx.array([full])).astype(mx.float32))[0]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(sum(log_probs[t - 1, full[t]] for t in range(len(prompt), len(full))))


def as_messages(row):
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
        if row.get("system"):
            prompt = [{"role": "system", "content": row["system"]}, *prompt]
    response = lambda r: r if isinstance(r, list) else [{"role": "assistant", "content": r}]  # noqa: E731
    return prompt, response(row["chosen"]), response(row["rejected"])


@pytest.mark.parametrize("fixture", ["llama_chatml", "qwen2_llama3"])
def test_logps_match_independent_computation(fixture, request, tmp_path):
    model_path = request.getfixturevalue(fixture)
    model, tokenizer = load(str(model_path))
    rows = preference_rows(6)  # standard, with system prompt, and conversational records
    write_jsonl(tmp_path / "train.jsonl", rows)
    split = load_splits(tmp_path, tokenizer, max_length=1024)["train"]
    batch = collate(split.pairs, pad_id=0)
    split_head = find_head_split(model)
    assert split_head is not None
    rows_logps = np.array(
        response_logps(
            model,
            mx.array(batch.tokens),
            mx.array(batch.response_positions),
            mx.array(batch.response_mask),
            split_head,
        )
    )
    n = len(rows)
    for i, row in enumerate(rows):
        prompt, chosen, rejected = as_messages(row)
        assert rows_logps[i] == pytest.approx(
            independent_logp(model, tokenizer, prompt, chosen), rel=1e-4, abs=1e-4
        )
        assert rows_logps[n + i] == pytest.approx(
            independent_logp(model, tokenizer, prompt, rejected), rel=1e-4, abs=1e-4
        )


def test_full_logits_fallback_and_chunking_agree(llama_chatml, tmp_path, monkeypatch):
    model, tokenizer = load(str(llama_chatml))
    write_jsonl(tmp_path / "train.jsonl", preference_rows(4))
    batch = collate(load_splits(tmp_path, tokenizer, 1024)["train"].pairs)
    arrays = [mx.array(a) for a in (batch.tokens, batch.response_positions, batch.response_mask)]
    split_head = find_head_split(model)
    whole = np.array(response_logps(model, *arrays, split_head))
    fallback = np.array(response_logps(model, *arrays, None))
    # A tiny budget forces one response position per checkpointed chunk.
    monkeypatch.setattr(logprobs, "LOGITS_BUDGET_BYTES", 1)
    chunked = np.array(response_logps(model, *arrays, split_head))
    np.testing.assert_allclose(whole, fallback, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(whole, chunked, rtol=1e-5, atol=1e-5)

    # Gradients (with respect to LoRA parameters: the head is frozen) through checkpointed
    # chunks equal the plain ones.
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map

    from mlx_dpo.model import apply_lora

    apply_lora(model, rank=4, scale=2.0, dropout=0.0)
    model.update(tree_map(lambda p: p + 0.01, model.trainable_parameters()))

    def gradients():
        split = find_head_split(model)
        return tree_flatten(
            nn.value_and_grad(model, lambda: response_logps(model, *arrays, split).sum())()[1]
        )

    monkeypatch.setattr(logprobs, "LOGITS_BUDGET_BYTES", 1)
    grad_chunked = gradients()
    monkeypatch.setattr(logprobs, "LOGITS_BUDGET_BYTES", 1 << 28)
    grad_whole = gradients()
    assert grad_whole and all(name.endswith(("lora_a", "lora_b")) for name, _ in grad_whole)
    for (name, a), (_, b) in zip(grad_chunked, grad_whole, strict=True):
        assert np.abs(np.array(b)).max() > 0, name
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("fixture", ["llama_chatml", "qwen2_llama3"])
def test_prefix_sharing_gives_the_same_logps_and_gradients(fixture, request, tmp_path):
    """Each prompt computed once (batch KV cache) equals each row computed whole."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map

    from mlx_dpo.logprobs import shared_prompt_token_logps, supports_prefix_sharing
    from mlx_dpo.model import apply_lora

    model, tokenizer = load(str(request.getfixturevalue(fixture)))
    apply_lora(model, rank=4, scale=2.0, dropout=0.0)
    model.update(tree_map(lambda p: p + 0.01, model.trainable_parameters()))
    write_jsonl(tmp_path / "train.jsonl", preference_rows(6))  # prompts of several lengths
    pairs = load_splits(tmp_path, tokenizer, 1024)["train"].pairs
    assert len({len(p.prompt_ids) for p in pairs}) > 1
    split = find_head_split(model)
    assert supports_prefix_sharing(model, split)
    rows_inputs = [mx.array(a) for a in collate(pairs).model_inputs()]
    shared_inputs = [mx.array(a) for a in collate(pairs, shared_prompt=True).model_inputs()]

    def rows():
        return response_logps(model, *rows_inputs, split)

    def shared():
        return shared_prompt_token_logps(model, *shared_inputs, split)[0].sum(axis=-1)

    np.testing.assert_allclose(np.array(shared()), np.array(rows()), rtol=1e-5, atol=1e-4)
    weights = mx.array(np.linspace(-1, 1, 2 * len(pairs)).astype(np.float32))
    grad_rows = tree_flatten(nn.value_and_grad(model, lambda: (rows() * weights).sum())()[1])
    grad_shared = tree_flatten(nn.value_and_grad(model, lambda: (shared() * weights).sum())()[1])
    for (name, a), (_, b) in zip(grad_rows, grad_shared, strict=True):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("budget", [1 << 28, 1], ids=["whole", "chunked"])
def test_per_token_log_probs_and_wpo_terms(llama_chatml, tmp_path, monkeypatch, budget):
    """The masked per-token log-probs (R, W) that sum to response_logps, and WPO's per-token
    terms log p(y_t) − log Σ_v p(v)² from the same logits, against numpy on the full
    logits; zero past each response; in one pass or in checkpointed chunks."""
    from mlx_dpo.logprobs import response_token_logps, shared_prompt_token_logps

    model, tokenizer = load(str(llama_chatml))
    write_jsonl(tmp_path / "train.jsonl", preference_rows(3))
    pairs = load_splits(tmp_path, tokenizer, 1024)["train"].pairs
    batch = collate(pairs)
    arrays = [mx.array(a) for a in (batch.tokens, batch.response_positions, batch.response_mask)]
    split = find_head_split(model)
    monkeypatch.setattr(logprobs, "LOGITS_BUDGET_BYTES", budget)
    values, terms = response_token_logps(model, *arrays, split, wpo=True)
    logits = np.array(model(arrays[0][:, :-1]).astype(mx.float32), dtype=np.float64)
    mask = batch.response_mask
    for row in range(mask.shape[0]):
        for t in range(mask.shape[1]):
            if not mask[row, t]:
                assert values[row, t].item() == 0 and terms[row, t].item() == 0
                continue
            position = batch.response_positions[row, t]
            z = logits[row, position]
            target = batch.tokens[row, position + 1]
            lse = np.logaddexp.reduce(z)
            assert values[row, t].item() == pytest.approx(z[target] - lse, rel=1e-4, abs=1e-4)
            wpo = z[target] + lse - np.logaddexp.reduce(2 * z)
            assert terms[row, t].item() == pytest.approx(wpo, rel=1e-4, abs=1e-4)
    np.testing.assert_allclose(
        np.array(values.sum(axis=-1)), np.array(response_logps(model, *arrays, split)), rtol=1e-6
    )
    shared = collate(pairs, shared_prompt=True)
    shared_values, shared_terms = shared_prompt_token_logps(
        model, *[mx.array(a) for a in shared.model_inputs()], split, wpo=True
    )
    np.testing.assert_allclose(
        np.array(shared_terms.sum(-1)), np.array(terms.sum(-1)), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        np.array(shared_values.sum(-1)), np.array(values.sum(-1)), rtol=1e-4, atol=1e-4
    )
