"""Where a forward-only pass's time goes (the reference precompute, evaluation), against the
training step on the same pairs.

    python benchmarks/profile_forward.py [--workload benchmarks/.work/W4] [--repeat 3]

On the workload's train pairs, with the engine's defaults (prefix sharing, only response
positions through the LM head), the trainer's own pieces:

  reference pass   batch_logps.reference_row_sums (LoRA off), as the precompute runs it, at
                   the training batch and at the plan's forward batch (forward_batch_for)
  compiled         the same pass under mx.compile (retraced for every new shape)
  training step    the compiled accumulate (forward + backward of the DPO loss) and apply
  by kind          the pass again with SiLU's sigmoid left out (swiglu = gate * up) and then
                   attention left out too (the queries passed through): what is left is the
                   matrix products, norms, RoPE and the head; the differences are SiLU's and
                   attention's share. These stand-ins change the arithmetic: timing only.
  MLX peak         mx.get_peak_memory() of the pass at the forward batch, and of the step

Each figure is the fastest of --repeat runs after a warm-up, over the first few length-sorted
batches, per pair. Run with the machine otherwise idle. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import mlx_dpo  # noqa: F401  (first: the system OpenBLAS)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_workload, mlx_dpo_settings  # noqa: E402


def fastest(fn, repeat: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--workload", type=Path, default=here / ".work" / "W4")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=32, help="pairs timed (default 32)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    import mlx_lm.models.llama as llama
    import numpy as np

    from mlx_dpo.batching import length_sorted_batches
    from mlx_dpo.config import build_config
    from mlx_dpo.losses import initial_loss_state, settings_from_config
    from mlx_dpo.memory.session import forward_batch_for
    from mlx_dpo.session import open_session
    from mlx_dpo.trainer.batch_logps import batch_arrays, reference_row_sums
    from mlx_dpo.trainer.step import make_loss_fn, step_extras

    spec, _ = load_workload(args.workload)
    config = build_config({}, mlx_dpo_settings(spec, args.workload))
    session = open_session(config, splits=("train",))
    model = session.model
    split = session.splits["train"]
    forward_batch = forward_batch_for(session, config, split)
    lengths = split.pair_lengths()[: args.pairs]

    def batches_of(size: int) -> list[tuple]:
        found = []
        for positions in length_sorted_batches(lengths, size):
            batch = session.collate_split(split, positions.tolist())
            found.append((batch, batch_arrays(batch)))
        return found

    small, large = batches_of(config.batch_size), batches_of(forward_batch)
    largest = max(len(batch.pair_indices) for batch, _ in large)
    model.eval()

    def reference_pass(batches, fn=None):
        fn = fn or (lambda arrays: reference_row_sums(session, arrays).sums)
        return lambda: [mx.eval(fn(arrays)) for _, arrays in batches]

    @partial(mx.compile, inputs=model.state)
    def compiled_pass(*arrays):
        return reference_row_sums(session, arrays).sums

    r, n = args.repeat, len(lengths)
    per_pair = {
        f"reference pass, {config.batch_size} pairs a batch": fastest(reference_pass(small), r),
        f"reference pass, {largest} pairs a batch (the plan's)": fastest(reference_pass(large), r),
        f"compiled, {config.batch_size} pairs a batch": fastest(
            reference_pass(small, lambda arrays: compiled_pass(*arrays)), r
        ),
    }
    mx.reset_peak_memory()
    reference_pass(large)()
    forward_peak = mx.get_peak_memory()

    swiglu = llama.swiglu
    llama.swiglu = lambda gate, up: gate * up
    no_silu = fastest(reference_pass(large), r)
    attention = llama.scaled_dot_product_attention
    llama.scaled_dot_product_attention = lambda queries, *a, **k: queries
    neither = fastest(reference_pass(large), r)
    llama.swiglu, llama.scaled_dot_product_attention = swiglu, attention
    whole = per_pair[f"reference pass, {largest} pairs a batch (the plan's)"]
    kinds = {
        "SiLU (its sigmoid)": whole - no_silu,
        "attention (scores, softmax, weighted sum)": no_silu - neither,
        "the rest: matrix products, norms, RoPE, LM head": neither,
    }

    # The training step on the same pairs, as the trainer compiles it.
    model.train()
    loss_fn = make_loss_fn(session, config)
    value_and_grad = nn.value_and_grad(model, loss_fn)
    optimizer = optim.AdamW(learning_rate=config.learning_rate, weight_decay=0.0)
    optimizer.init(model.trainable_parameters())
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(arrays, extras):
        (loss, _), grads = value_and_grad(arrays, extras, loss_state)
        grads, _ = optim.clip_grad_norm(grads, config.max_grad_norm)
        optimizer.update(model, grads)
        return loss

    columns = {name: np.zeros(len(split), np.float32) for name in ("chosen", "rejected")}
    for batch, arrays in small:
        sums = np.array(reference_row_sums(session, arrays).sums)
        columns["chosen"][batch.pair_indices] = sums[: batch.num_pairs]
        columns["rejected"][batch.pair_indices] = sums[batch.num_pairs :]
    inputs = [(arrays, step_extras(batch, split, columns)) for batch, arrays in small]
    loss_state = initial_loss_state(settings_from_config(config))

    def training():
        for arrays, extras in inputs:
            mx.eval(step(arrays, extras), model.state, optimizer.state)

    mx.reset_peak_memory()
    step_seconds = fastest(training, r)
    step_peak = mx.get_peak_memory()

    print(f"{args.workload.name}: {n} pairs, prefix sharing {session.prefix_sharing}, "
          f"forward batch {forward_batch} (training batch {config.batch_size})")  # fmt: skip
    print(f"{'':58s} {'ms a pair':>10s} {'÷ step':>8s}")
    step_ms = step_seconds / n * 1000
    print(f"{'training step (compiled forward + backward + AdamW)':58s} {step_ms:10.0f}")
    for name, seconds in per_pair.items():
        ms = seconds / n * 1000
        print(f"{name:58s} {ms:10.0f} {ms / step_ms:8.2f}")
    print("the reference pass at the plan's batch, by kind of work:")
    for name, seconds in kinds.items():
        print(f"  {name:56s} {seconds / n * 1000:10.0f} {seconds / whole:8.0%}")
    print(f"MLX peak: forward pass {forward_peak / 1e6:.0f} MB, training step "
          f"{step_peak / 1e6:.0f} MB")  # fmt: skip
    if args.json:
        numbers = {
            "pairs": n,
            "forward_batch": forward_batch,
            "step_ms_per_pair": step_ms,
            "per_pair_ms": {k: v / n * 1000 for k, v in per_pair.items()},
            "kinds_ms_per_pair": {k: v / n * 1000 for k, v in kinds.items()},
            "forward_peak_mb": forward_peak / 1e6,
            "step_peak_mb": step_peak / 1e6,
        }
        args.json.write_text(json.dumps(numbers, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
