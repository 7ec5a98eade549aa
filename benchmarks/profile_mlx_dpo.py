"""Where an mlx-dpo training step's time goes, on a workload (W1 by default).

    python benchmarks/profile_mlx_dpo.py [--workload benchmarks/.work/W1] [--repeat 5]

Builds the trainer's own pieces (open_session, make_loss_fn, the compiled accumulate/apply
of mlx_dpo/trainer/step.py) on the first batch of the run, and times each part with mx.eval barriers
(the fastest of --repeat runs after a warm-up, so that a shared machine's bursts of other
work count as little as possible):

  data        collate a batch and turn it into arrays (Python, NumPy)
  backbone    forward of the transformer blocks (LoRA on), all positions
  head fwd    gather the response positions, LM head and log-softmax of the chosen token
  forward     the whole loss: backbone + head + DPO loss (compiled)
  fwd+bwd     value_and_grad of the loss (compiled, as the trainer's accumulate)
  head bwd    the LM head's backward alone (gradient w.r.t. its input)
  optimizer   gradient clipping and AdamW over the LoRA parameters (compiled apply)
  step        accumulate + apply, evaluated: the compute of one optimizer step
  graph build calling the compiled accumulate without evaluating (Python-side cost)

Run with the machine otherwise idle; a shared machine inflates every number.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from functools import partial
from pathlib import Path

import mlx_dpo  # noqa: F401  (first: the system OpenBLAS)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_workload, mlx_dpo_settings  # noqa: E402
from flops import step_flops  # noqa: E402


def timed(fn, repeat: int) -> float:
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    # The fastest run: on a shared machine the others include other people's work.
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    here = Path(__file__).resolve().parent
    parser.add_argument("--workload", type=Path, default=here / ".work" / "W1")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlx_dpo.batching import collate, epoch_batches
    from mlx_dpo.config import CONFIG_KEYS, build_config
    from mlx_dpo.logprobs import chunked_token_logps
    from mlx_dpo.session import open_session, pad_token_id
    from mlx_dpo.trainer.batch_logps import batch_arrays, response_token_counts
    from mlx_dpo.trainer.step import make_loss_fn

    spec, _ = load_workload(args.workload)
    # The row layout (each row its own prompt), where an engine also has prefix sharing.
    layout = {"prefix_sharing": False} if "prefix_sharing" in CONFIG_KEYS else {}
    config = build_config({}, {**layout, **mlx_dpo_settings(spec, args.workload)})
    session = open_session(config, splits=("train",))
    model = session.model
    split = session.splits["train"]
    pad_id = pad_token_id(session.tokenizer)
    order = epoch_batches(split.pairs, config.batch_size, config.seed, 0, True)
    pairs = [split.pairs[i] for i in order[0]]

    def make_batch():
        batch = collate(pairs, pad_id)
        return batch, batch_arrays(batch), response_token_counts(batch)

    batch, arrays, (chosen_tokens, rejected_tokens) = make_batch()
    tokens, positions, mask = arrays[:3]
    n = batch.num_pairs
    ref_chosen = mx.zeros(n) - 400.0
    ref_rejected = mx.zeros(n) - 400.0
    loss_fn = make_loss_fn(session, config)
    # The loss takes (inputs, extras, loss state) (issue 20's trainer); older trainers took
    # the model inputs grouped in one tuple, or flat.
    parameters = len(inspect.signature(loss_fn).parameters)
    if parameters == 3:
        extras = {
            "chosen_tokens": chosen_tokens,
            "rejected_tokens": rejected_tokens,
            "reference_chosen": ref_chosen,
            "reference_rejected": ref_rejected,
        }
        inputs = (arrays, extras, {})
    elif parameters == 5:
        inputs = (arrays, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
    else:
        inputs = (*arrays, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
    mx.eval(inputs)
    value_and_grad = nn.value_and_grad(model, loss_fn)
    optimizer = optim.AdamW(learning_rate=config.learning_rate, weight_decay=0.0)
    optimizer.init(model.trainable_parameters())
    state = [model.state, optimizer.state, mx.random.state]
    model.train()

    @partial(mx.compile, inputs=state, outputs=state)
    def accumulate(*batch_inputs):
        (loss, metrics), grads = value_and_grad(*batch_inputs)
        if isinstance(metrics, tuple):  # (metrics, loss state)
            metrics = metrics[0]
        return loss, metrics, grads

    @partial(mx.compile, inputs=state, outputs=state)
    def apply(grads):
        grads, grad_norm = optim.clip_grad_norm(grads, config.max_grad_norm)
        optimizer.update(model, grads)
        return grad_norm

    compiled_loss = mx.compile(loss_fn, inputs=state, outputs=state)
    backbone = session.head_split.backbone
    head = session.head_split.head

    hidden = backbone(tokens[:, :-1])
    mx.eval(hidden)
    targets = mx.take_along_axis(tokens[:, 1:], positions, axis=1)
    gathered = mx.take_along_axis(hidden, positions[..., None], axis=1)
    mx.eval(targets, gathered)

    def head_loss(h):
        return (chunked_token_logps(h, targets, head) * mask).sum()

    head_grad = mx.grad(head_loss)
    grads_holder = {}

    def run_step():
        loss, metrics, grads = accumulate(*inputs)
        mx.eval(loss, metrics, grads)
        norm = apply(grads)
        mx.eval(model.state, optimizer.state, norm)

    def run_fwd_bwd():
        loss, metrics, grads = accumulate(*inputs)
        mx.eval(loss, metrics, grads)
        grads_holder["grads"] = grads

    r = args.repeat
    parts = {
        "data": timed(lambda: mx.eval(make_batch()[1]), r),
        "backbone": timed(lambda: mx.eval(backbone(tokens[:, :-1])), r),
        "head fwd": timed(
            lambda: mx.eval(
                chunked_token_logps(
                    mx.take_along_axis(hidden, positions[..., None], axis=1), targets, head
                )
            ),
            r,
        ),
        "forward": timed(lambda: mx.eval(compiled_loss(*inputs)), r),
        "fwd+bwd": timed(run_fwd_bwd, r),
        "head fwd+bwd": timed(lambda: mx.eval(head_grad(gathered)), r),
    }
    grads = grads_holder["grads"]
    parts["optimizer"] = timed(lambda: mx.eval(apply(grads), model.state, optimizer.state), r)
    parts["step"] = timed(run_step, r)

    def build_only():
        accumulate(*inputs)

    parts["graph build"] = timed(build_only, r)
    mx.eval(model.state)

    # The step by kind of work, at this batch's shapes (all layers; compiled, fwd+bwd).
    rows_n, length = tokens.shape[0], tokens.shape[1] - 1
    head_dim = spec.hidden_size // spec.num_heads
    q = mx.random.normal((rows_n, spec.num_heads, length, head_dim))
    kv = [mx.random.normal((rows_n, spec.num_kv_heads, length, head_dim)) for _ in range(2)]
    gate = mx.random.normal((rows_n, length, spec.intermediate_size))
    mx.eval(q, kv, gate)
    attention_grad = mx.compile(
        mx.grad(
            lambda a, b, c: mx.fast.scaled_dot_product_attention(
                a, b, c, scale=head_dim**-0.5, mask="causal"
            ).sum(),
            argnums=(0, 1, 2),
        )
    )
    silu_grad = mx.compile(mx.grad(lambda a, b: (nn.silu(a) * b).sum(), argnums=(0, 1)))
    x = mx.random.normal((rows_n * length, spec.hidden_size))
    w = mx.random.normal((spec.hidden_size, spec.intermediate_size))
    mx.eval(x, w)
    matmul_seconds = timed(lambda: mx.eval(x @ w), r)
    matmul_rate = 2 * x.shape[0] * x.shape[1] * w.shape[1] / matmul_seconds
    layers = spec.num_layers
    ops = {
        "attention (sdpa fwd+bwd, all layers)": layers
        * timed(lambda: mx.eval(attention_grad(q, *kv)), r),
        "SiLU gate (fwd+bwd, all layers)": layers
        * timed(lambda: mx.eval(silu_grad(gate, gate)), r),
    }

    flops = step_flops(
        spec, [(len(p.prompt_ids), len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]
    )
    padded = tokens.shape[0] * (tokens.shape[1] - 1)
    real = int(flops["positions"])
    derived = {
        "backward (fwd+bwd − forward)": parts["fwd+bwd"] - parts["forward"],
        "head bwd (head fwd+bwd − head fwd)": parts["head fwd+bwd"] - parts["head fwd"],
        "loss + glue (forward − backbone − head fwd)": parts["forward"]
        - parts["backbone"]
        - parts["head fwd"],
    }
    step = parts["step"]
    print(
        f"{spec.name}: batch {n} pairs, tokens {tuple(tokens.shape)} "
        f"({real} real positions of {padded} computed, {100 * (1 - real / padded):.0f}% padding)"
    )
    print(f"model FLOPs of the step: {flops['total'] / 1e9:.1f} GFLOP")
    print(f"{'part':48s} {'seconds':>8s} {'% of step':>9s}")
    for name, seconds in {**parts, **derived}.items():
        print(f"{name:48s} {seconds:8.3f} {100 * seconds / step:8.0f}%")
    # Linear layers (block linears and LoRA, forward and input gradients) at the measured
    # matmul rate of the model's own shape; the LM head is measured above.
    ops["linear layers (FLOPs / matmul rate)"] = (
        (flops["linear"] + flops["lora"]) * (padded / real) / matmul_rate
    )
    ops["LM head (fwd+bwd, measured)"] = parts["head fwd+bwd"]
    ops["optimizer + graph build + data"] = (
        parts["optimizer"] + parts["graph build"] + parts["data"]
    )
    ops["rest (norms, RoPE, residuals, loss; by difference)"] = step - sum(ops.values())
    print(
        f"matmul rate at ({x.shape[0]}x{x.shape[1]}) @ ({w.shape[0]}x{w.shape[1]}): "
        f"{matmul_rate / 1e9:.0f} GFLOP/s"
    )
    print(f"{'kind of work':48s} {'seconds':>8s} {'% of step':>9s}")
    for name, seconds in ops.items():
        print(f"{name:48s} {seconds:8.3f} {100 * seconds / step:8.0f}%")
    forward_flops = flops["forward"]
    print(
        f"forward {forward_flops / parts['forward'] / 1e9:.1f} GFLOP/s, "
        f"step {flops['total'] / step / 1e9:.1f} GFLOP/s (model FLOPs)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "workload": spec.name,
                    "parts": parts,
                    "derived": derived,
                    "ops": ops,
                    "matmul_gflops": matmul_rate / 1e9,
                    "flops": flops,
                    "tokens_shape": list(tokens.shape),
                    "real_positions": real,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
