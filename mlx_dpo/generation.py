"""Answers sampled from a model with mlx-lm's own generation and sampler, reproducible by seed.

The prompt is formatted as training formats it (the chat template with the generation prompt,
or the plain text without a template), so a pair made from these answers tokenizes the way
it was generated. Sampling draws from MLX's global random state, seeded right before each
answer: the same (model, prompt, settings, seed) gives the same answer in any process.
Answers are drawn one after another, never interleaved, for that reason.

A trained run is loaded here too (load_policy): the base model once, the run's adapter in it,
and its reference (the base, or base + the run's init adapter), as training had them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from mlx_dpo.adapter_config import read_adapter_config
from mlx_dpo.data import Message, as_token_ids, has_chat_template, plain_text
from mlx_dpo.errors import UserError
from mlx_dpo.events import ADAPTER_FILE
from mlx_dpo.export import base_model_of
from mlx_dpo.model import load_adapter_into, load_model, named_lora_modules
from mlx_dpo.safetensors_header import check_safetensors
from mlx_dpo.sampling import Sampling


@dataclass
class Answer:
    text: str
    tokens: int  # tokens generated (the end-of-turn token not counted)
    finish_reason: str  # "stop" (the model ended its turn) or "length" (max_tokens reached)


@dataclass
class Policy:
    """A trained run ready to answer as policy and as reference (`mlx-dpo compare`,
    load_generator): a model with LoRA layers, its tokenizer and, for a run that started from
    an init adapter, that adapter (the reference). A trainer Session fits where a Policy goes."""

    model: Any
    tokenizer: Any
    frozen_adapter: dict | None = None
    reference_name: str = "base"


@dataclass
class Generator:
    """A model ready to answer: with an adapter, its reference is the adapter switched off
    (or the run's init adapter: `frozen_adapter`), as in training."""

    model: Any
    tokenizer: Any
    adapter: str | None = None
    frozen_adapter: dict | None = None
    reference_name: str = "base"


def load_generator(
    model: str | None, adapter_path: str | None = None, trust_remote_code: bool = False
) -> Generator:
    """The model (+ adapter) in evaluation mode (no LoRA dropout). Without --model, the
    adapter's recorded base model."""
    if adapter_path:
        policy = load_policy(adapter_path, model, trust_remote_code)
        generator = Generator(
            policy.model,
            policy.tokenizer,
            adapter_path,
            policy.frozen_adapter,
            policy.reference_name,
        )
    elif model:
        net, tokenizer, _, _ = load_model(model, trust_remote_code=trust_remote_code)
        generator = Generator(net, tokenizer)
    else:
        raise UserError("--model is needed (or an --adapter-path that records its model)")
    generator.model.eval()
    return generator


# ---------------------------------------------------------------------------------------------
# Loading a trained run: the policy and its reference


def _init_adapter_weights(adapter_config: dict, model: Any) -> dict | None:
    """The frozen init adapter of a run that started from one (its reference), or None."""
    provenance = adapter_config.get("init_adapter_provenance") or {}
    path = provenance.get("path")
    if not path:
        return None
    weights_file = Path(path) / ADAPTER_FILE
    if not weights_file.is_file():
        raise UserError(
            f"this run started from the init adapter {path}, which is gone: its reference "
            "(base + that adapter) cannot be rebuilt"
        )
    check_safetensors(weights_file, "the init adapter's weights")
    weights = mx.load(str(weights_file))
    frozen = {}
    for name, _ in named_lora_modules(model):
        a, b = weights.get(f"{name}.lora_a"), weights.get(f"{name}.lora_b")
        if a is None or b is None:
            raise UserError(f"{weights_file}: no LoRA weights for {name}")
        frozen[name] = (a, b)
    return frozen


def load_policy(
    adapter_path: str, model: str | None = None, trust_remote_code: bool = False
) -> Policy:
    """Load the base model once and the run's adapters into it; the reference is the run's
    own (the base, or base + its init adapter)."""
    adapter_config = read_adapter_config(adapter_path)
    base = model or base_model_of(adapter_config, adapter_path)
    net, tokenizer, _, _ = load_model(base, adapter_config.get("quantize"), trust_remote_code)
    load_adapter_into(net, adapter_path)
    frozen = _init_adapter_weights(adapter_config, net)
    net.eval()
    name = "base + init adapter" if frozen is not None else "base"
    return Policy(net, tokenizer, frozen, name)


# ---------------------------------------------------------------------------------------------
# Answers


def prompt_tokens(tokenizer: Any, messages: list[Message]) -> list[int]:
    """The prompt as training saw it (data.tokenize_record): the chat template with the
    generation prompt, or without a template the plain text."""
    if has_chat_template(tokenizer):
        return as_token_ids(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        )
    return as_token_ids(tokenizer.encode(plain_text(messages)))


def stream_answer(
    model: Any, tokenizer: Any, messages: list[Message], sampling: Sampling, seed: int
) -> Iterator[tuple[str, Answer | None]]:
    """(text piece, None) as tokens come, then ("", the whole Answer) at the end."""
    mx.random.seed(seed)
    sampler = make_sampler(temp=sampling.temp, top_p=sampling.top_p)
    yield from _stream(
        model, tokenizer, prompt_tokens(tokenizer, messages), sampling.max_tokens, sampler
    )


def _stream(
    model: Any, tokenizer: Any, prompt: list[int], max_tokens: int, sampler: Any
) -> Iterator[tuple[str, Answer | None]]:
    pieces: list[str] = []
    response = None
    for response in stream_generate(
        model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler
    ):
        if response.text:
            pieces.append(response.text)
            yield response.text, None
    assert response is not None  # stream_generate yields at least the final response
    tokens = response.generation_tokens - (response.finish_reason == "stop")
    yield "", Answer("".join(pieces), tokens, response.finish_reason or "length")


def greedy_answer(model: Any, tokenizer: Any, prompt: list[int], max_tokens: int) -> Answer:
    """The greedy answer to prompt token ids (as training formats a prompt). It draws nothing
    from MLX's random state, and seeds nothing, so a training run that generates these
    between its steps trains exactly as one that does not."""
    for _, answer in _stream(model, tokenizer, prompt, max_tokens, make_sampler(temp=0.0)):
        if answer is not None:
            return answer
    raise AssertionError("_stream ended without an answer")


def sample_answer(
    model: Any, tokenizer: Any, messages: list[Message], sampling: Sampling, seed: int
) -> Answer:
    """One answer, whole (what `stream_answer` streams)."""
    for _, answer in stream_answer(model, tokenizer, messages, sampling, seed):
        if answer is not None:
            return answer
    raise AssertionError("stream_answer ended without an answer")
