"""The benchmark workloads, built offline and deterministically.

W1  Llama architecture, random weights: hidden 512, 8 layers, 8 heads, 4 KV heads, MLP 1408,
    vocabulary 8192, ChatML template, float32; 64 pairs, prompts ~100 tokens, responses
    ~100 tokens.
W2  W1 with a 151,936-entry vocabulary (embedding and LM head), for memory. The tokenizer is
    W1's (8192 tokens, so the data are token for token the same); the model's vocabulary is
    larger than the tokenizer's, as Qwen2.5's is (151,936 rows for 151,665 tokens).
W3  W1's model with prompts ~400 tokens and responses ~40 tokens.

Each workload is a folder: `model/` (an mlx-lm folder that is also a Hugging Face folder:
mlx-lm's llama weight names are the HF names, so `LlamaForCausalLM.from_pretrained` loads it),
`data/train.jsonl` (prompt, chosen, rejected strings: one user turn, one assistant turn) and
`workload.json` (the settings every tool uses, and token statistics).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict
from pathlib import Path

from common import WORKLOADS, Workload

# Imported for its side effect first: loads the system OpenBLAS before MLX.
import mlx_dpo  # noqa: F401

BUILD_VERSION = 1  # bump when anything below changes what is built

SYLLABLES = [
    "ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa",
    "do", "fe", "gu", "bi", "ho", "ju", "ly", "wa", "xe", "qo",
]  # fmt: skip


def corpus(seed: int = 0) -> tuple[list[str], list[str]]:
    """(words, lines): synthetic words made of syllables, and sentences of them."""
    rng = random.Random(seed)
    words = sorted(
        {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(30_000)}
    )
    lines = [
        " ".join(rng.choice(words) for _ in range(rng.randint(6, 20))) + "." for _ in range(20_000)
    ]
    return words, lines


class _WideVocabulary:
    """A trained tokenizer that reports a larger vocabulary, so tiny.build_model makes an
    embedding and LM head of that size while the tokenizer files stay the small ones."""

    def __init__(self, tokenizer, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size

    def get_vocab_size(self) -> int:
        return self._vocab_size

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _text_of_tokens(rng: random.Random, words: list[str], tokenizer, target: int) -> str:
    """A sentence of random words whose tokenization is `target` tokens long (±1)."""
    out: list[str] = []
    while True:
        candidate = out + [rng.choice(words)]
        n = len(tokenizer.encode(" ".join(candidate) + ".").ids)
        if n > target:
            break
        out = candidate
        if n >= target - 1:
            break
    return " ".join(out) + "."


def build_data(spec: Workload, tokenizer, words: list[str], path: Path) -> None:
    """spec.pairs records whose chat-templated prompt and responses have lengths drawn from
    spec.prompt_tokens and spec.response_tokens."""
    # ChatML around the texts: "<|im_start|>user\n" ... "<|im_end|>\n<|im_start|>assistant\n"
    # for the prompt, ... "<|im_end|>\n" after each response.
    prompt_overhead = len(
        tokenizer.encode("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n").ids
    )
    response_overhead = len(tokenizer.encode("<|im_end|>\n").ids)
    # W1 and W2 share their data: the seed depends on the lengths only.
    rng = random.Random(_stable_seed(f"{spec.seed}|{spec.prompt_tokens}|{spec.response_tokens}"))
    path.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(spec.pairs):
        prompt = _text_of_tokens(
            rng, words, tokenizer, rng.randint(*spec.prompt_tokens) - prompt_overhead
        )
        chosen, rejected = (
            _text_of_tokens(
                rng, words, tokenizer, rng.randint(*spec.response_tokens) - response_overhead
            )
            for _ in range(2)
        )
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    with open(path / "train.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _stable_seed(text: str) -> int:
    import hashlib

    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def token_stats(model_dir: Path, data_dir: Path) -> dict:
    """Token counts as mlx-dpo tokenizes the data (chat template, exact split)."""
    from mlx_lm.utils import load_tokenizer

    from mlx_dpo.data import load_splits

    tokenizer = load_tokenizer(model_dir)
    split = load_splits(data_dir, tokenizer, 100_000, splits=("train",))["train"]
    prompts = [len(p.prompt_ids) for p in split.pairs]
    responses = [len(p.chosen_ids) for p in split.pairs] + [
        len(p.rejected_ids) for p in split.pairs
    ]
    per_pair = [
        2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in split.pairs
    ]
    return {
        "pairs": len(split.pairs),
        "prompt_tokens_mean": sum(prompts) / len(prompts),
        "prompt_tokens_range": [min(prompts), max(prompts)],
        "response_tokens_mean": sum(responses) / len(responses),
        "response_tokens_range": [min(responses), max(responses)],
        # What one pair costs: the prompt goes through the model twice (chosen and rejected rows).
        "tokens_per_pair_mean": sum(per_pair) / len(per_pair),
    }


def build_workload(spec: Workload, root: Path, force: bool = False) -> Path:
    """Build (or reuse) the workload folder root/<name>; returns it."""
    from mlx_dpo.tiny import TEMPLATES, build_model, train_tokenizer

    folder = root / spec.name
    marker = folder / "workload.json"
    expected = {"build_version": BUILD_VERSION, "spec": asdict(spec)}
    if not force and marker.exists():
        saved = json.loads(marker.read_text())
        if {k: saved.get(k) for k in expected} == json.loads(json.dumps(expected)):
            return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)

    words, lines = corpus(spec.seed)
    tokenizer = train_tokenizer(lines, spec.tokenizer_vocab, TEMPLATES["chatml"][1])
    model_dir = root / "models" / spec.model_key
    model_marker = model_dir / "built.json"
    model_expected = {"build_version": BUILD_VERSION, "vocab_size": spec.vocab_size}
    if force or not model_marker.exists() or json.loads(model_marker.read_text()) != model_expected:
        if model_dir.exists():
            shutil.rmtree(model_dir)
        wide = (
            tokenizer
            if spec.vocab_size == tokenizer.get_vocab_size()
            else _WideVocabulary(tokenizer, spec.vocab_size)
        )
        build_model(
            model_dir,
            model_type="llama",
            hidden_size=spec.hidden_size,
            num_layers=spec.num_layers,
            num_heads=spec.num_heads,
            num_kv_heads=spec.num_kv_heads,
            intermediate_size=spec.intermediate_size,
            template="chatml",
            dtype="float32",
            seed=spec.seed,
            tokenizer=wide,
        )
        _make_hf_compatible(model_dir, tokenizer)
        model_marker.write_text(json.dumps(model_expected))
    (folder / "model").symlink_to(model_dir.resolve(), target_is_directory=True)

    build_data(spec, tokenizer, words, folder / "data")
    stats = token_stats(model_dir, folder / "data")
    marker.write_text(json.dumps({**expected, "stats": stats}, indent=2))
    return folder


def _make_hf_compatible(model_dir: Path, tokenizer) -> None:
    """Add what transformers wants beside mlx-lm's files: the architecture name, and the
    special token ids (the weights need nothing: same names, same layouts)."""
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["LlamaForCausalLM"]
    config["pad_token_id"] = tokenizer.token_to_id("<|endoftext|>")
    config["bos_token_id"] = None
    config_path.write_text(json.dumps(config, indent=4, sort_keys=True))


def mlx_logits(model_dir: Path, tokens: list[int]):
    """Logits of the MLX model on tokens, as a numpy array (for the torch comparison)."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.utils import load_model

    model, _ = load_model(model_dir)
    logits = model(mx.array([tokens]))
    mx.eval(logits)
    return np.array(logits[0])


def main() -> None:
    import argparse

    import numpy as np

    parser = argparse.ArgumentParser(description="Build the benchmark workloads.")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build (or reuse) workload folders")
    build.add_argument("--root", required=True, type=Path)
    build.add_argument("--force", action="store_true")
    build.add_argument("names", nargs="+", choices=sorted(WORKLOADS))
    logits = sub.add_parser("logits", help="MLX logits of a model on a few tokens (.npy)")
    logits.add_argument("model_dir", type=Path)
    logits.add_argument("out")
    logits.add_argument("tokens", help="comma-separated token ids")
    args = parser.parse_args()
    if args.command == "build":
        for name in args.names:
            folder = build_workload(WORKLOADS[name], args.root, args.force)
            print(f"{name}: {folder}")
    else:
        tokens = [int(t) for t in args.tokens.split(",")]
        np.save(args.out, mlx_logits(args.model_dir, tokens))


if __name__ == "__main__":
    main()
