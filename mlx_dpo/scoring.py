"""Log-probabilities of two answers to one prompt, exactly as training would score them.

The pair is tokenized by data.tokenize_record (the chat template, end-of-turn tokens in the
response) and scored by logprobs.response_logps: log π(y|x) is the sum over the response
tokens. `model_preference` turns this into which answer the model itself prefers:
- a model without an adapter prefers the answer it gives the higher log-probability;
- a model with an adapter prefers the answer with the higher DPO reward
  log π(y|x) − log π_ref(y|x) (the reference: LoRA switched off, or the init adapter), the
  quantity whose sign `rewards/accuracies` counts in training.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from mlx_dpo.batching import collate
from mlx_dpo.data import Message, PreferenceRecord, TokenizedPair, tokenize_record
from mlx_dpo.logprobs import HeadSplit, response_logps
from mlx_dpo.model import named_lora_modules, reference_mode


def assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def tokenize_answers(
    tokenizer: Any, prompt: list[Message], answer_a: list[Message], answer_b: list[Message]
) -> TokenizedPair:
    record = PreferenceRecord("", prompt, answer_a, answer_b)
    prompt_ids, a_ids, b_ids, mismatch = tokenize_record(record, tokenizer)
    return TokenizedPair(0, "", prompt_ids, a_ids, b_ids, prefix_mismatch=mismatch)


def pair_logps(model: Any, pair: TokenizedPair, split: HeadSplit | None) -> tuple[float, float]:
    """(log π(a|x), log π(b|x)) summed over response tokens, in one batch of two rows."""
    tokens, positions, mask = (mx.array(a) for a in collate([pair]).model_inputs())
    values = response_logps(model, tokens, positions, mask, split)
    mx.eval(values)
    a, b = values.tolist()
    return float(a), float(b)


def next_token_logps(
    model: Any, prompt_ids: list[int], candidates: list[int], split: HeadSplit | None
) -> list[float]:
    """log p(token | prompt) for each candidate token: one forward over the prompt, the LM
    head on its last position only."""
    tokens = mx.array([prompt_ids], dtype=mx.int32)
    if split is not None:
        logits = split.head(split.backbone(tokens)[:, -1])
    else:
        logits = model(tokens)[:, -1]
    logits = logits.astype(mx.float32)[0]
    logps = logits[mx.array(candidates)] - mx.logsumexp(logits)
    return [float(v) for v in logps.tolist()]


def model_preference(
    model: Any,
    tokenizer: Any,
    prompt: list[Message],
    answer_a: str,
    answer_b: str,
    split: HeadSplit | None,
    frozen_adapter: dict | None = None,
) -> dict[str, Any]:
    """Which of two answers the model prefers, and the numbers it rests on (see the module
    docstring): logp_a, logp_b, with an adapter reference_logp_a/b, basis ("logp" or
    "reward"), margin (a's score minus b's) and prefers ("a", "b" or "none" on a tie)."""
    pair = tokenize_answers(tokenizer, prompt, assistant(answer_a), assistant(answer_b))
    logp_a, logp_b = pair_logps(model, pair, split)
    result: dict[str, Any] = {"logp_a": logp_a, "logp_b": logp_b}
    if named_lora_modules(model):
        with reference_mode(model, frozen_adapter):
            reference_a, reference_b = pair_logps(model, pair, split)
        result.update(reference_logp_a=reference_a, reference_logp_b=reference_b)
        margin = (logp_a - reference_a) - (logp_b - reference_b)
        result["basis"] = "reward"
    else:
        margin = logp_a - logp_b
        result["basis"] = "logp"
    result["margin"] = margin
    result["prefers"] = "a" if margin > 0 else "b" if margin < 0 else "none"
    return result
