"""What the benchmark scripts share, with no MLX or PyTorch import (each tool runs in its
own process, and the PyTorch one must not load MLX's OpenBLAS)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workload:
    name: str
    vocab_size: int
    prompt_tokens: tuple[int, int]  # range of prompt tokens, chat template included
    response_tokens: tuple[int, int]  # range of response tokens, end of turn included
    description: str
    model_key: str  # workloads with the same key share one model folder
    pairs: int = 64
    hidden_size: int = 512
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 4
    intermediate_size: int = 1408
    tokenizer_vocab: int = 8192
    # Training settings shared by every tool.
    batch_size: int = 4
    lora_rank: int = 8
    lora_scale: float = 20.0  # mlx-lm's scale; PEFT's lora_alpha = scale * rank
    lora_keys: tuple[str, ...] = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
    )
    learning_rate: float = 1e-5
    beta: float = 0.1
    max_length: int = 1024
    seed: int = 0
    # "tiny": a random-weight model built here; "smollm2": SmolLM2-135M-Instruct's real
    # weights from its GGUF file, with real English data (workloads.build_real_workload).
    source: str = "tiny"
    eval_pairs: int = 0  # pairs of data/valid.jsonl (0: no validation split)


WORKLOADS = {
    "W1": Workload(
        "W1", 8192, (92, 108), (92, 108), "vocab 8192, prompt ~100, responses ~100", "v8192"
    ),
    "W2": Workload(
        "W2", 151_936, (92, 108), (92, 108), "vocab 151,936, prompt ~100, responses ~100", "v151936"
    ),
    "W3": Workload(
        "W3", 8192, (385, 415), (36, 44), "vocab 8192, prompt ~400, responses ~40", "v8192"
    ),
    "W4": Workload(
        "W4",
        49_152,
        (92, 108),
        (102, 138),
        "SmolLM2-135M-Instruct (real weights), real English text, prompt ~100, responses ~120",
        "smollm2-135m",
        pairs=200,
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        intermediate_size=1536,
        tokenizer_vocab=49_152,
        source="smollm2",
        eval_pairs=32,
    ),
}

# The 4-bit copy of a workload's model (mlx_lm.convert -q: group size 64, 4 bits), for the
# MLX tools' QLoRA rows; only real-model workloads have one.
QUANTIZED_MODEL = "model_q4"


def mlx_dpo_settings(spec: Workload, folder: Path) -> dict[str, Any]:
    """The mlx-dpo config values a profile of the workload in `folder` runs with: its model
    and data, batch, constant learning rate, LoRA, max length and seed."""
    return {
        "model": str(folder / "model"),
        "data": str(folder / "data"),
        "batch_size": spec.batch_size,
        "learning_rate": spec.learning_rate,
        "lr_schedule": "constant",
        "lora_rank": spec.lora_rank,
        "lora_scale": spec.lora_scale,
        "lora_keys": list(spec.lora_keys),
        "max_length": spec.max_length,
        "seed": spec.seed,
    }


def load_workload(folder: Path) -> tuple[Workload, dict]:
    """The workload's settings and token statistics, as build_workload wrote them."""
    saved = json.loads((Path(folder) / "workload.json").read_text())
    spec = dict(saved["spec"])
    for key in ("prompt_tokens", "response_tokens", "lora_keys"):
        spec[key] = tuple(spec[key])
    return Workload(**spec), saved["stats"]


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def summarize_steps(steps: list[dict], warmup: int) -> dict[str, Any]:
    """steps: one dict a step with seconds, pairs, tokens (in order). The first `warmup`
    steps are left out; throughput is the measured work over the measured time."""
    measured = steps[warmup:]
    if not measured:
        raise RuntimeError(f"no measured steps ({len(steps)} steps, {warmup} warm-up)")
    seconds = sum(s["seconds"] for s in measured)
    pairs = sum(s["pairs"] for s in measured)
    tokens = sum(s["tokens"] for s in measured)
    times = sorted(s["seconds"] for s in measured)
    return {
        "measured_steps": len(measured),
        "warmup_steps": warmup,
        "seconds": seconds,
        "pairs": pairs,
        "tokens": tokens,
        "pairs_per_second": pairs / seconds,
        "tokens_per_second": tokens / seconds,
        "step_seconds_mean": seconds / len(measured),
        "step_seconds_median": times[len(times) // 2],
        "step_seconds_min": times[0],
        "step_seconds_max": times[-1],
        "warmup_step_seconds": [s["seconds"] for s in steps[:warmup]],
    }


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        **result,
        "peak_rss_mb": peak_rss_mb(),
        # CPU time of the whole process: far below 2 x wall time on 2 cores means it waited.
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "pid": os.getpid(),
        "finished": time.time(),
    }
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"result written to {path}")
