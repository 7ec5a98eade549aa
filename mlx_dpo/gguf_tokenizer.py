"""Tokenizers to and from GGUF metadata (llama.cpp's `tokenizer.ggml.*` keys).

A GGUF has no tokenizer.json: it keeps the vocabulary, the merges, the token types, the special
token ids, a pre-tokenizer name (`tokenizer.ggml.pre`) and the chat template as metadata. For
byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`: SmolLM, Llama 3, Qwen2, ...) the
pieces map one to one onto a `tokenizers` BPE model; the pre-tokenizer is the one llama.cpp
uses for that name (llama.cpp's llama-vocab.cpp). SentencePiece vocabularies (`llama`:
Llama 2, Mistral v0.1) are not rebuilt here: for those, a tokenizer folder beside the GGUF
is used (see mlx_dpo/gguf.py).

transformers can do this too, but only with PyTorch installed (its GGUF reader imports
torch), which mlx-dpo does not need anywhere else.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlx_dpo.errors import UserError

# llama.cpp's token types.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# The GPT-2 split (llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2 and tokenizers' ByteLevel regex).
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> (split regex, digits one at a time first, merges ignored for whole-word
# vocabulary hits). Names and regexes as llama.cpp's llama-vocab.cpp has them.
PRE_TOKENIZERS: dict[str, tuple[str, bool, bool]] = {
    "default": (GPT2_SPLIT, False, False),
    "gpt2": (GPT2_SPLIT, False, False),
    "smollm": (GPT2_SPLIT, True, False),
    "starcoder": (GPT2_SPLIT, True, False),
    "llama-bpe": (LLAMA3_SPLIT, False, True),
    "llama3": (LLAMA3_SPLIT, False, True),
    "qwen2": (QWEN2_SPLIT, False, False),
    "deepseek-r1-qwen": (QWEN2_SPLIT, False, False),
}


def build_bpe_tokenizer(metadata: dict[str, Any], source: str) -> Any:
    """A `tokenizers.Tokenizer` for a byte-level BPE vocabulary described by GGUF metadata.
    UserError (naming `source`) for anything else."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = metadata.get("tokenizer.ggml.model")
    pre = metadata.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise UserError(
            f"{source}: its tokenizer is of type {kind!r}, which mlx-dpo cannot rebuild from "
            "GGUF metadata (only byte-level BPE, 'gpt2': SmolLM, Llama 3, Qwen2); put the "
            "model's tokenizer files (tokenizer.json, tokenizer_config.json) beside the GGUF"
        )
    if pre not in PRE_TOKENIZERS:
        raise UserError(
            f"{source}: its tokenizer's pre-tokenizer {pre!r} is not one mlx-dpo knows "
            f"({', '.join(sorted(PRE_TOKENIZERS))}); put the model's tokenizer files "
            "(tokenizer.json, tokenizer_config.json) beside the GGUF"
        )
    split, digits, ignore_merges = PRE_TOKENIZERS[pre]
    tokens = list(metadata["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges", [])]
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    steps = [pre_tokenizers.Split(Regex(split), behavior="isolated")]
    if digits:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    types = [int(t) for t in metadata.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))]
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == USER_DEFINED
        ]
    )
    return tokenizer


def tokenizer_config_from_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json for the tokenizer described by GGUF metadata."""
    tokens = metadata["tokenizer.ggml.tokens"]
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        index = metadata.get(f"tokenizer.ggml.{key}")
        if index is not None and 0 <= int(index) < len(tokens):
            config[name] = tokens[int(index)]
    if metadata.get("tokenizer.chat_template"):
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return config


def load_gguf_tokenizer(metadata: dict[str, Any], source: str, eos_token_ids: Any = None) -> Any:
    """mlx-lm's TokenizerWrapper for the tokenizer in GGUF metadata (chat template included).

    Written as tokenizer.json + tokenizer_config.json into a temporary folder and loaded with
    mlx-lm's own loader, so it gets the same wrapper (and streaming detokenizer) as a
    tokenizer from a model folder."""
    from mlx_lm.utils import load_tokenizer

    backend = build_bpe_tokenizer(metadata, source)
    config = tokenizer_config_from_metadata(metadata)
    if config.get("add_bos_token") and "bos_token" in config:
        from tokenizers import processors

        bos = config["bos_token"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, backend.token_to_id(bos))],
        )
    with tempfile.TemporaryDirectory(prefix="mlx-dpo-gguf-tokenizer-") as folder:
        backend.save(str(Path(folder) / "tokenizer.json"))
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config))
        return load_tokenizer(Path(folder), eos_token_ids=eos_token_ids)


# ---------------------------------------------------------------------------------------------
# Writing


def _pre_tokenizer_name(backend_json: dict) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or None when it is none we know.
    (llama.cpp's converter recognises it by hashing a test tokenization; we compare shapes.)"""
    pre = backend_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    digits = bool(steps) and steps[0].get("type") == "Digits" and steps[0].get("individual_digits")
    steps = steps[1:] if digits else steps
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        regex = GPT2_SPLIT
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
    else:
        return None
    for name in ("gpt2", "smollm", "llama-bpe", "qwen2"):
        if PRE_TOKENIZERS[name][:2] == (regex, digits):
            return name
    return None


def tokenizer_metadata(
    tokenizer: Any, source: str, vocab_size: int | None = None
) -> dict[str, Any]:
    """GGUF `tokenizer.*` metadata (llama.cpp's keys) for a byte-level BPE tokenizer: tokens
    in id order, token types, merges, pre-tokenizer name, special ids, chat template.

    `tokenizer` is mlx-lm's TokenizerWrapper or a transformers fast tokenizer. `vocab_size`
    (the embedding's rows, which llama.cpp wants the token list to match) pads the list with
    unused `[PADn]` tokens, as llama.cpp's converter does (Qwen2's embedding has spare rows).
    UserError for a tokenizer llama.cpp would read differently from how it was trained."""
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    backend_json = json.loads(hf.backend_tokenizer.to_str())
    model = backend_json.get("model") or {}
    pre = _pre_tokenizer_name(backend_json)
    if model.get("type") != "BPE" or pre is None:
        raise UserError(
            f"{source}: only byte-level BPE tokenizers (SmolLM, Llama 3, Qwen2 style) can be "
            "written to GGUF; this one is "
            f"{model.get('type')} with pre-tokenizer {backend_json.get('pre_tokenizer')}"
        )
    vocab = hf.backend_tokenizer.get_vocab(with_added_tokens=True)
    size = max(max(vocab.values()) + 1, vocab_size or 0)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for token, index in vocab.items():
        tokens[index] = token
        types[index] = NORMAL
    for added in backend_json.get("added_tokens", []):
        types[added["id"]] = CONTROL if added.get("special") else USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    metadata: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.add_bos_token": bool(getattr(hf, "add_bos_token", False)),
    }
    for key, token in (
        ("bos_token_id", hf.bos_token),
        ("eos_token_id", hf.eos_token),
        ("unknown_token_id", hf.unk_token),
        ("padding_token_id", hf.pad_token),
    ):
        if token is not None and token in vocab:
            metadata[f"tokenizer.ggml.{key}"] = vocab[token]
    template = getattr(tokenizer, "chat_template", None) or getattr(hf, "chat_template", None)
    if template:
        metadata["tokenizer.chat_template"] = template
    return metadata
