"""Small models built offline: a BPE tokenizer trained on given text, random weights from
mlx-lm's own model classes, and a chat template, saved as an ordinary mlx-lm model folder.

The demo, the tests and the benchmarks use these; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import mlx.core as mx
from mlx_lm.utils import save_config, save_model

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# A Llama-3-style template: header tokens around the role, <|eot_id|> ends a turn.
LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

TEMPLATES = {
    "chatml": (CHATML_TEMPLATE, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>"),
    "llama3": (
        LLAMA3_TEMPLATE,
        [
            "<|end_of_text|>",
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "<|eot_id|>",
    ),
    # No chat template: plain prompt then response then EOS.
    "none": (None, ["</s>", "<s>"], "</s>"),
}


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, special_tokens: list[str]
) -> tokenizers.Tokenizer:  # noqa: F821
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    return tokenizer


def save_tokenizer(path: Path, tokenizer, template: str) -> None:
    chat_template, special_tokens, eos_token = TEMPLATES[template]
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos_token,
        "pad_token": special_tokens[0],
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    if template == "none":
        config["bos_token"] = "<s>"
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def default_texts() -> list[str]:
    """Synthetic words and sentences to train a tokenizer when no corpus is given."""
    import random

    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "do", "fe", "gu"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(4000)]
    common = [
        "the",
        "a",
        "is",
        "of",
        "and",
        "to",
        "in",
        "what",
        "which",
        "how",
        "answer",
        "question",
        "yes",
        "no",
        "city",
        "river",
    ]
    lines = []
    for _ in range(3000):
        lines.append(" ".join(rng.choice(words + common) for _ in range(rng.randint(4, 16))) + ".")
    return lines


def build_model(
    path: str | Path,
    *,
    model_type: str = "llama",
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    template: str = "chatml",
    tie_word_embeddings: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    tokenizer=None,
) -> Path:
    """Write a randomly initialised mlx-lm model folder (config.json, model.safetensors,
    tokenizer files) and return its path. `tokenizer` reuses an already trained one."""
    import mlx.nn as nn
    from mlx.utils import tree_map
    from mlx_lm.utils import _get_classes

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _, special_tokens, eos_token = TEMPLATES[template]
    if tokenizer is None:
        tokenizer = train_tokenizer(
            texts if texts is not None else default_texts(), vocab_size, special_tokens
        )
    save_tokenizer(path, tokenizer, template)
    actual_vocab = tokenizer.get_vocab_size()

    config = {
        "model_type": model_type,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "intermediate_size": intermediate_size,
        "vocab_size": actual_vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": tie_word_embeddings,
        "eos_token_id": tokenizer.token_to_id(eos_token),
        "torch_dtype": dtype,
    }
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    # Small weights keep the random model's logits tame (near-uniform predictions).
    model.update(tree_map(lambda p: p * 0.5, model.parameters()))
    if dtype != "float32":
        model.set_dtype(getattr(mx, dtype))
    mx.eval(model.parameters())
    assert isinstance(model, nn.Module)
    save_model(path, model)
    save_config(config, path / "config.json")
    return path
