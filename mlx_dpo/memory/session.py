"""The memory plan's inputs read from a loaded session: the model's shape (with its LoRA
layers), the train pairs' lengths, and the run's settings that change its memory."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlx_dpo import loss_catalog
from mlx_dpo.config import TrainConfig
from mlx_dpo.data import PairsView, TokenizedPair, TokenizedSplit
from mlx_dpo.memory.arithmetic import (
    Lengths,
    ModelShape,
    Settings,
    estimate_memory,
    forward_batch_size,
)
from mlx_dpo.model import ADAPTER_LEAVES
from mlx_dpo.session import Session
from mlx_dpo.unpaired import CompletionSplit

# mlx-lm quantizes layers whose input size is a multiple of its group size.
QUANTIZATION_GROUP = 64


def _model_args(model_config: dict) -> dict:
    # Multimodal configs nest the language model's settings.
    return {**model_config, **(model_config.get("text_config") or {})}


def model_shape(
    model: nn.Module,
    model_config: dict,
    head_split: bool,
    frozen_adapter: dict | None = None,
    quantize: int | None = None,
) -> ModelShape:
    """The shape of a loaded model with its LoRA layers applied. `quantize` is what the
    config asked of the load (it says whether --quantize 4 could still change the base)."""
    params = tree_flatten(model.parameters())
    lora = [v for name, v in params if name.rsplit(".", 1)[-1] in ADAPTER_LEAVES]
    base = [v for name, v in params if name.rsplit(".", 1)[-1] not in ADAPTER_LEAVES]
    floats: dict[mx.Dtype, int] = {}
    for value in base:
        if mx.issubdtype(value.dtype, mx.floating):
            floats[value.dtype] = floats.get(value.dtype, 0) + value.size
    # The hidden states take the dtype most of the (unpacked) weights have.
    dtype = max(floats, key=floats.get) if floats else mx.float32
    args = _model_args(model_config)
    hidden = int(args.get("hidden_size") or args.get("d_model") or 0)
    heads = int(args.get("num_attention_heads") or 1)
    base_bytes = sum(v.nbytes for v in base)
    frozen_bytes = 0
    if frozen_adapter:
        frozen_bytes = sum(a.nbytes + b.nbytes for a, b in frozen_adapter.values())
    return ModelShape(
        layers=len(model.layers),
        hidden=hidden,
        intermediate=int(args.get("intermediate_size") or 4 * hidden),
        heads=heads,
        kv_heads=int(args.get("num_key_value_heads") or heads),
        head_dim=int(args.get("head_dim") or hidden // heads),
        vocab=int(args.get("vocab_size") or 0),
        activation_bytes=dtype.size,
        base_weight_bytes=base_bytes,
        lora_bytes=sum(v.nbytes for v in lora),
        head_split=head_split,
        frozen_adapter_bytes=frozen_bytes,
        base_weight_bytes_4bit=_four_bit_bytes(model, base_bytes, model_config, quantize),
    )


def _four_bit_bytes(
    model: nn.Module, base_bytes: int, model_config: dict, quantize: int | None
) -> int | None:
    """The base weights if --quantize 4 were given: mlx-lm quantizes every layer that can
    be (Linear, Embedding) whose input size is a multiple of the group size (64), to packed
    4-bit weights plus a scale and a bias per group. None where it cannot apply (a model
    saved quantized) or already has."""
    if quantize == 4 or ("quantization" in model_config and quantize is None):
        return None
    group, saved = QUANTIZATION_GROUP, 0
    for _, module in model.named_modules():
        weight = module.get("weight") if isinstance(module, nn.Module) else None
        if weight is None:
            continue
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            if module.bits == 8:  # loaded with --quantize 8: the packed weights halve
                saved += weight.nbytes // 2
        elif hasattr(module, "to_quantized") and weight.shape[-1] % group == 0:
            packed = weight.size // 2 + 2 * (weight.size // group) * weight.itemsize
            saved += weight.nbytes - packed
    return base_bytes - saved


def data_lengths(pairs: list[TokenizedPair] | PairsView) -> Lengths:
    if isinstance(pairs, PairsView):  # a TokenizedSplit's pairs: its length arrays
        prompt, chosen, rejected = pairs.lengths().astype(np.int64).T
        return Lengths(prompt=prompt, chosen=chosen, rejected=rejected)
    return Lengths(
        prompt=np.array([len(p.prompt_ids) for p in pairs], dtype=np.int64),
        chosen=np.array([len(p.chosen_ids) for p in pairs], dtype=np.int64),
        rejected=np.array([len(p.rejected_ids) for p in pairs], dtype=np.int64),
    )


def session_settings(
    session: Session, config: TrainConfig, batch_size: int | None = None
) -> Settings:
    """The plan's view of a run's settings (batch_size given where the config says auto)."""
    splits = session.splits
    # A reference-free loss has no reference pass and no cache; kto computes the reference of
    # its KL rows in every step, whatever `reference` says.
    reference = loss_catalog.needs_reference(config.loss)
    unpaired = loss_catalog.is_unpaired(config.loss)
    return Settings(
        batch_size=int(batch_size or config.batch_size),
        grad_accumulation=config.grad_accumulation,
        grad_checkpoint=config.grad_checkpoint,
        live_reference=reference and (config.reference == "live" or unpaired),
        shared_prompt=bool(session.prefix_sharing),
        max_length=config.max_length,
        quantize=config.quantize,
        reference_pairs=sum(len(splits[n]) for n in ("train", "valid") if n in splits)
        if reference
        else 0,
    )


def session_shape(session: Session, config: TrainConfig) -> ModelShape:
    return model_shape(
        session.model,
        session.model_config,
        session.head_split is not None,
        session.frozen_adapter,
        config.quantize,
    )


def session_lengths(session: Session, split: TokenizedSplit | None = None) -> Lengths:
    """The lengths of the train pairs (or of `split`'s): the plan's longest batch comes from
    them. A kto batch's second rows are KL rows, other completions of the same data: the
    completions' lengths stand for them."""
    split = session.splits["train"] if split is None else split
    lengths = data_lengths(split.pairs)
    if isinstance(split, CompletionSplit):
        lengths = Lengths(prompt=lengths.prompt, chosen=lengths.chosen, rejected=lengths.chosen)
    return lengths


def forward_batch_for(session: Session, config: TrainConfig, split: TokenizedSplit) -> int:
    """Pairs a batch for the forward-only passes over `split` (the reference precompute,
    evaluation): the most whose estimated peak stays within a training step's at
    config.batch_size on the same data (arithmetic.forward_batch_size)."""
    if len(split) == 0:
        return int(config.batch_size)
    shape = session_shape(session, config)
    lengths = session_lengths(session, split)
    settings = session_settings(session, config)
    budget = estimate_memory(shape, lengths, settings).total
    return forward_batch_size(shape, lengths, settings, budget)
