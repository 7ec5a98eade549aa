"""A session: a loaded model with its LoRA layers, its tokenizer and the tokenized data.

A training run, an evaluation, a comparison and the memory plan all work on one. Every user
error (no model, no data, an init adapter whose LoRA shape the config contradicts) surfaces
while it opens, before anything is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from mlx_dpo import loss_catalog, reference
from mlx_dpo.batching import Batch, collate
from mlx_dpo.config import TrainConfig
from mlx_dpo.data import TokenizedSplit
from mlx_dpo.errors import UserError
from mlx_dpo.events import Progress
from mlx_dpo.logprobs import HeadSplit, find_head_split, supports_prefix_sharing
from mlx_dpo.model import (
    apply_lora,
    fingerprint_files,
    load_adapter_into,
    load_model,
    model_fingerprint,
    num_layers,
    snapshot_adapter,
)
from mlx_dpo.sources import load_data
from mlx_dpo.unpaired import CompletionSplit, kl_pairs, load_completion_data


@dataclass
class Session:
    """A loaded model with its LoRA layers, tokenizer and data: everything a run, an
    evaluation or a comparison works on."""

    model: nn.Module
    tokenizer: Any
    model_path: Path
    model_config: dict
    splits: dict[str, TokenizedSplit]  # CompletionSplit for kto (unpaired completions)
    lora_parameters: dict
    lora_layers: int
    head_split: HeadSplit | None
    weights_fingerprint: str
    frozen_adapter: dict | None = None
    init_adapter_config: dict | None = None
    prefix_sharing: bool = False
    pad_id: int = 0
    data_notes: list[str] = field(default_factory=list)  # sources.LoadedData.notes
    data_info: dict = field(default_factory=dict)  # sources.LoadedData.info (run_start)

    max_length: int = 0  # the config's: a KTO batch's KL rows are cut to it

    def collate(self, pairs: list) -> Batch:
        return collate(pairs, self.pad_id, shared_prompt=self.prefix_sharing)

    def collate_split(self, split: TokenizedSplit, positions: list[int]) -> Batch:
        """The batch of these entries of a split: pairs as they are; completions
        (CompletionSplit) with their KL rows (unpaired.kl_pairs)."""
        pairs = [split.pairs[i] for i in positions]
        if isinstance(split, CompletionSplit):
            pairs = kl_pairs(pairs, self.max_length)
        return self.collate(pairs)


def open_session(
    config: TrainConfig,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    adapter_path: str | None = None,
    progress: Progress | None = None,
) -> Session:
    """Load the model, apply LoRA (fresh, from --init-adapter, or a trained adapter to
    evaluate) and read the data. All user errors surface here, before any training.
    `progress` hears the long phases: "loading" the weights, "tokenizing" each split."""
    if not config.model:
        raise UserError("no model given: pass --model (a Hugging Face id or a local folder)")
    if config.data is None:
        raise UserError("no data given: pass --data (a file, a folder or a Hugging Face id)")
    model, tokenizer, path, model_config = load_model(
        config.model, config.quantize, config.trust_remote_code, progress=progress
    )
    if loss_catalog.is_unpaired(config.loss):
        loaded = load_completion_data(config, tokenizer, splits)
    else:
        loaded = load_data(config, tokenizer, splits, progress)
    data = loaded.splits
    if "train" in splits and "train" not in data:
        raise UserError(f"{config.data}: no train split (train.jsonl)")
    mx.random.seed(config.seed)
    frozen = None
    init_config = None
    fingerprint_parts = [
        model_fingerprint(path, reference.writable_cache_dir()),
        f"q{config.quantize}",
    ]
    if adapter_path or config.init_adapter:
        source = adapter_path or config.init_adapter
        init_config = load_adapter_into(model, source)
        lora_parameters = dict(init_config["lora_parameters"])
        layers = int(init_config["num_layers"])
        if config.init_adapter and not adapter_path:
            _check_lora_matches(config, lora_parameters, layers, source)
            lora_parameters["dropout"] = config.lora_dropout
            _set_dropout(model, config.lora_dropout)
            frozen = snapshot_adapter(model)
            fingerprint_parts.append(
                fingerprint_files(sorted(Path(source).expanduser().glob("adapter*")))
            )
    else:
        layers = config.lora_layers or num_layers(model)
        lora_parameters = apply_lora(
            model,
            config.lora_rank,
            config.lora_scale,
            config.lora_dropout,
            layers,
            config.lora_keys,
        )
    mx.eval(model.parameters())
    head_split = find_head_split(model)
    sharing = config.prefix_sharing and supports_prefix_sharing(model, head_split)
    return Session(
        model=model,
        tokenizer=tokenizer,
        model_path=path,
        model_config=model_config,
        splits=data,
        lora_parameters=lora_parameters,
        lora_layers=layers,
        head_split=head_split,
        weights_fingerprint="|".join(fingerprint_parts),
        frozen_adapter=frozen,
        init_adapter_config=init_config,
        prefix_sharing=sharing,
        pad_id=pad_token_id(tokenizer),
        data_notes=loaded.notes,
        data_info=loaded.info,
        max_length=config.max_length,
    )


def _check_lora_matches(config: TrainConfig, params: dict, layers: int, source: str) -> None:
    """Training continues an init adapter, so a LoRA setting the config changed from its
    default must agree with the adapter's."""
    conflicts = []
    for key, value in (("lora_rank", params["rank"]), ("lora_scale", params["scale"])):
        given = getattr(config, key)
        if given != getattr(TrainConfig, key) and given != value:
            conflicts.append(f"'{key}' is {given} but the init adapter has {value}")
    if config.lora_layers is not None and config.lora_layers != layers:
        conflicts.append(f"'lora_layers' is {config.lora_layers} but the init adapter has {layers}")
    if config.lora_keys and config.lora_keys != params.get("keys"):
        conflicts.append(f"'lora_keys' differ from the init adapter's {params.get('keys')}")
    if conflicts:
        raise UserError(
            f"{source}: training continues this adapter, so its LoRA shape is fixed", conflicts
        )


def _set_dropout(model: nn.Module, p: float) -> None:
    for _, module in model.named_modules():
        if hasattr(module, "lora_a") and hasattr(module, "dropout"):
            module.dropout = nn.Dropout(p)


def pad_token_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS, else 0."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.eos_token_id
    return int(pad or 0)
