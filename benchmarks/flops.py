"""Model FLOPs of a DPO step with LoRA and a cached reference, and the machine's measured
float32 matmul peak (with MLX).

Counting (a multiply-add is 2 FLOPs). Per row of n = prompt + response - 1 input positions
(the model reads tokens[:-1]) and r response tokens (with prefix sharing, a pair's prompt
positions count once and each response's positions attend to the prompt):

  forward   2·P·n                   the block linears (q, k, v, o, gate, up, down), P parameters
          + 2·2·H·dh·n(n+1)/2·layers  causal attention (QKᵀ and AV, the lower triangle only)
          + 2·d·V·r                 the LM head, at response positions only
          + 2·Σ rank·(in+out)·n     the LoRA branches
  backward  activation gradients only: no weight gradient is needed for a frozen weight, so
            a frozen linear costs 2·P·n once more (not 4·P·n), except layer 0's q, k, v, whose
            input gradient would only reach the frozen embedding; attention costs 2× its
            forward (dS, dV, dQ, dK); the LM head 2·d·V·r (its input gradient); LoRA 2× its
            forward (weight gradients of A and B, and the input gradient through them)

  total ≈ 4·P·n + 3·attention + 4·d·V·r + 3·LoRA   (per row; summed over the 2B rows)

The common "6 × parameters × tokens" assumes every weight gets a gradient; with frozen
weights it overcounts by half. With the reference cached, a step does no other forward pass.
Padding is not counted: this is useful work, not what the padded kernels execute.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Workload  # noqa: E402


def _dims(spec: Workload) -> dict[str, int]:
    d = spec.hidden_size
    head_dim = d // spec.num_heads
    kv = spec.num_kv_heads * head_dim
    shapes = {
        "self_attn.q_proj": (d, d),
        "self_attn.k_proj": (d, kv),
        "self_attn.v_proj": (d, kv),
        "self_attn.o_proj": (d, d),
        "mlp.gate_proj": (d, spec.intermediate_size),
        "mlp.up_proj": (d, spec.intermediate_size),
        "mlp.down_proj": (spec.intermediate_size, d),
    }
    layer_params = sum(i * o for i, o in shapes.values())
    layer0_qkv = sum(
        shapes[f"self_attn.{p}_proj"][0] * shapes[f"self_attn.{p}_proj"][1] for p in "qkv"
    )
    lora = sum(spec.lora_rank * (i + o) for k, (i, o) in shapes.items() if k in spec.lora_keys)
    return {
        "d": d,
        "heads_dim": spec.num_heads * head_dim,
        "layer_params": layer_params,
        "layer0_qkv": layer0_qkv,
        "lora_per_layer": lora,
    }


def step_flops(
    spec: Workload, pairs: list[tuple[int, int, int]], shared_prompt: bool = False
) -> dict[str, float]:
    """FLOPs of one optimizer step over pairs of (prompt, chosen, rejected) lengths.

    Rows layout: each pair is two rows, each computing its own prompt. Shared prompt
    (prefix sharing): the prompt's positions once, then each response attends to it."""
    dims = _dims(spec)
    layers = spec.num_layers
    positions = 0.0  # positions through the blocks
    attention_pairs = 0.0  # (query, key) pairs of causal attention
    predicted = 0  # response tokens scored by the LM head
    for prompt, *responses in pairs:
        predicted += sum(responses)
        if shared_prompt:
            positions += prompt
            attention_pairs += prompt * (prompt + 1) / 2
            for r in responses:
                positions += r - 1
                attention_pairs += (r - 1) * prompt + (r - 1) * r / 2
        else:
            for r in responses:
                n = prompt + r - 1
                positions += n
                attention_pairs += n * (n + 1) / 2
    linear_f = 2 * dims["layer_params"] * layers * positions
    linear_b = 2 * (dims["layer_params"] * layers - dims["layer0_qkv"]) * positions
    attention_f = 2 * 2 * dims["heads_dim"] * attention_pairs * layers
    head_f = 2 * dims["d"] * spec.vocab_size * predicted
    lora_f = 2 * dims["lora_per_layer"] * layers * positions
    forward = linear_f + attention_f + head_f + lora_f
    backward = linear_b + 2 * attention_f + head_f + 2 * lora_f
    return {
        "forward": forward,
        "backward": backward,
        "total": forward + backward,
        "linear": linear_f + linear_b,
        "attention": 3 * attention_f,
        "head": 2 * head_f,
        "lora": 3 * lora_f,
        "positions": positions,
    }


def measure_matmul_peak(sizes=(512, 1024, 2048), windows: int = 6, window: float = 0.4) -> dict:
    """Float32 matmul GFLOP/s with MLX on this machine: square sizes and the model's own
    shapes (tokens x hidden @ hidden x MLP and back). Each shape is timed over several short
    windows and keeps its best: on a shared machine the peak is what the hardware can do
    when it gets both cores, not an average over other people's bursts."""
    import mlx_dpo  # noqa: F401  (first: the system OpenBLAS, as the trainer uses it)

    # isort: split
    import mlx.core as mx

    shapes = [(n, n, n) for n in sizes] + [(1792, 512, 1408), (1792, 1408, 512)]
    results = {}
    for m, k, n in shapes:
        a = mx.random.normal((m, k))
        b = mx.random.normal((k, n))
        mx.eval(a, b)
        for _ in range(3):
            mx.eval(a @ b)
        best = 0.0
        for _ in range(windows):
            count = 0
            tic = time.perf_counter()
            while time.perf_counter() - tic < window:
                mx.eval(a @ b)
                count += 1
            best = max(best, 2 * m * k * n * count / (time.perf_counter() - tic) / 1e9)
        results[f"{m}x{k}x{n}"] = best
    return {"gflops": max(results.values()), "by_shape": results}


if __name__ == "__main__":
    # python benchmarks/flops.py [OUT.json]
    peak = json.dumps(measure_matmul_peak(), indent=2)
    print(peak)
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(peak)
