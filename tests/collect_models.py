"""Helpers for the collect, pairs, generation and judge tests: an adapter folder with random
LoRA weights (no training needed), and independent computations straight from mlx-lm's
model (full logits, numpy log-softmax), never through mlx-dpo's own scoring."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_dpo.checkpoints import adapter_config, save_adapters
from mlx_dpo.model import adapter_weights, apply_lora, load_model, named_lora_modules

# A judging prompt for the tiny judge of balanced_judge: plain text (no chat template)
# ending with the second answer, so what it says depends on the answers.
TEMPLATE = "Which is better, A or B? Request: {prompt}\nA: {answer_a}\nB: {answer_b}"


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def comparable(path: Path) -> list[str]:
    """The file's records without their times and order numbers, in a fixed order."""

    def strip(record: dict) -> dict:
        record = {k: v for k, v in record.items() if k != "time"}
        if "meta" in record:
            record["meta"] = {k: v for k, v in record["meta"].items() if k not in ("time", "seq")}
        return record

    return sorted(json.dumps(strip(r), sort_keys=True) for r in lines_of(path))


def random_adapter(model_path: Path, folder: Path, seed: int = 0) -> Path:
    """An mlx-lm adapter folder for `model_path` whose LoRA B matrices are random (so the
    policy differs from the base), recording its base model."""
    model, _, _, _ = load_model(str(model_path))
    params = apply_lora(model, rank=4, scale=10.0, dropout=0.0)
    mx.random.seed(seed)
    for _, module in named_lora_modules(model):
        module.lora_b = 0.05 * mx.random.normal(module.lora_b.shape)
    weights = adapter_weights(model)
    mx.eval(weights)
    config = adapter_config(len(model.layers), params, {"base_model": str(model_path)})
    folder.mkdir(parents=True, exist_ok=True)
    save_adapters(folder, weights, config)
    return folder


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def full_logps(model, tokens: list[int]) -> np.ndarray:
    """log p(next token | prefix) at every position: (len(tokens), vocab), float64."""
    logits = model(mx.array([tokens]))[0].astype(mx.float32)
    mx.eval(logits)
    return log_softmax(np.array(logits))


def response_logp(model, prompt_ids: list[int], full_ids: list[int]) -> float:
    """Sum over full_ids[len(prompt_ids):] of log p(token | all before it)."""
    assert full_ids[: len(prompt_ids)] == prompt_ids
    logps = full_logps(model, full_ids[:-1])
    return float(sum(logps[t - 1, full_ids[t]] for t in range(len(prompt_ids), len(full_ids))))


def chat_logp(model, tokenizer, prompt: list[dict], answer: str) -> float:
    """log π(answer | prompt) through the chat template, computed from full logits."""
    prompt_ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True))
    full_ids = list(
        tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}])
    )
    return response_logp(model, prompt_ids, full_ids)


def mlx_lm_sample(model, tokenizer, messages: list[dict], sampling, seed: int) -> str:
    """What mlx-lm itself samples for this prompt, settings and seed."""
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    mx.random.seed(seed)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return mlx_lm.generate(
        model,
        tokenizer,
        prompt,
        max_tokens=sampling.max_tokens,
        sampler=make_sampler(temp=sampling.temp, top_p=sampling.top_p),
    )


def balanced_judge(model_path: Path, folder: Path, noise: float = 0.5, seed: int = 0) -> Path:
    """A copy of a tiny model (untied LM head) whose head rows for the labels "A" and "B"
    differ only in a direction orthogonal to its mean final hidden state: its label
    log-odds carry no fixed preference for a letter, only what the context gives, so
    swapping two answers flips some verdicts and not others (a random tiny model otherwise
    says the same letter whatever it is shown)."""
    import shutil

    import mlx_lm

    shutil.copytree(model_path, folder)
    model, tokenizer = mlx_lm.load(str(folder))
    (label_a,) = tokenizer.encode("A", add_special_tokens=False)
    (label_b,) = tokenizer.encode("B", add_special_tokens=False)
    rng = np.random.default_rng(seed)
    vocab = len(tokenizer.vocab)
    hidden = []
    for _ in range(32):  # final hidden states at the end of random contexts
        tokens = mx.array([rng.integers(0, vocab, size=int(rng.integers(8, 64))).tolist()])
        hidden.append(np.array(model.model(tokens)[0, -1].astype(mx.float32)))
    mean = np.mean(hidden, axis=0)
    delta = rng.standard_normal(mean.shape)
    delta -= (delta @ mean) / (mean @ mean) * mean
    weights = dict(mx.load(str(folder / "model.safetensors")))
    head = np.array(weights["lm_head.weight"])
    head[label_b] = head[label_a] + noise * delta / np.linalg.norm(delta)
    weights["lm_head.weight"] = mx.array(head)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    return folder
