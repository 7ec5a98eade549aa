"""Measure the peak MLX memory of mlx-dpo's training step on tiny models of many shapes, and
compare it with the memory plan (mlx_dpo/memory/). The table in docs/memory.md comes from
this script; the activation coefficients in memory/arithmetic.py were fitted to its measurements.

    python benchmarks/memory_calibration.py              # the shapes of docs/memory.md
    python benchmarks/memory_calibration.py "d=128,layers=4,B=2,prompt=64,resp=64"

A shape is comma-separated key=value: d (hidden), f (MLP, default 2d), layers, heads, kv,
V (vocabulary; above 2048 the
embedding and head are widened past the synthetic tokenizer's), B (pairs), prompt and resp (tokens of every pair), dtype
(float32 | bfloat16), ckpt=1 (gradient checkpointing), live=1 (live reference), share=1
(prefix sharing), q=4 (4-bit base).

Each shape runs in its own process: gradient checkpointing patches the layer class
for the whole process. In it, the trainer's own pieces (open_session, make_loss_fn, and the
compiled accumulate/apply of trainer/step.py's compiled_step) run three steps on a batch of
synthetic pairs of exact lengths; the measured peak is mx.get_peak_memory() of the last
step, reset when it starts, which also counts the weights, LoRA and optimizer state already
resident. It is MLX's own memory: the process RSS is larger (Python, the libraries).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx_dpo  # noqa: F401  (first: the system OpenBLAS)

SHAPES = [
    "B=1,prompt=16,resp=16",
    "B=8,prompt=16,resp=16",
    "B=4,prompt=64,resp=64,layers=2",
    "B=4,prompt=64,resp=64,layers=8",
    "B=4,prompt=64,resp=64,d=128,heads=8,kv=8",
    "B=4,prompt=64,resp=64,d=256,heads=4,kv=4,f=1024",
    "B=4,prompt=64,resp=64,d=512,heads=8,kv=2",
    "B=2,prompt=448,resp=64,d=256,heads=4,kv=2",
    "B=2,prompt=256,resp=256,d=128,heads=4,kv=2,layers=4",
    "B=1,prompt=16,resp=496,d=128,heads=4,kv=2,V=2048",
    "B=8,prompt=128,resp=128,d=128,heads=4,kv=2,layers=4",
    "B=8,prompt=32,resp=32,d=512,heads=8,kv=4,layers=4",
    "B=4,prompt=128,resp=64,d=256,heads=4,kv=2,layers=8",
    "B=4,prompt=64,resp=64,layers=8,dtype=bfloat16",
    "B=8,prompt=32,resp=32,d=512,heads=8,kv=4,layers=4,dtype=bfloat16",
    "B=4,prompt=32,resp=96,V=2048,layers=4,dtype=bfloat16",
    "B=4,prompt=64,resp=64,layers=8,ckpt=1",
    "B=2,prompt=448,resp=64,d=256,heads=4,kv=2,ckpt=1",
    "B=8,prompt=32,resp=32,d=512,heads=8,kv=4,layers=4,ckpt=1",
    "B=2,prompt=448,resp=64,d=256,heads=4,kv=2,ckpt=1,share=1",
    "B=4,prompt=64,resp=64,layers=8,ckpt=1,share=1",
    "B=8,prompt=32,resp=32,d=512,heads=8,kv=4,layers=4,ckpt=1,share=1",
    "B=2,prompt=448,resp=64,d=256,heads=4,kv=2,live=1",
    "B=4,prompt=64,resp=64,layers=4,q=4",
    "B=8,prompt=16,resp=16,share=1",
    "B=4,prompt=64,resp=64,layers=8,share=1",
    "B=4,prompt=64,resp=64,d=512,heads=8,kv=2,share=1",
    "B=2,prompt=448,resp=64,d=256,heads=4,kv=2,share=1",
    "B=8,prompt=128,resp=128,d=128,heads=4,kv=2,layers=4,share=1",
    "B=4,prompt=64,resp=64,d=256,heads=4,kv=4,f=1024,dtype=bfloat16,share=1",
    "V=65536,B=4,prompt=32,resp=64",
    "V=65536,B=4,prompt=32,resp=192",
    "V=65536,B=2,prompt=32,resp=512",
    "V=65536,B=8,prompt=32,resp=512",
    "V=65536,B=4,prompt=32,resp=128,share=1",
    "V=32768,B=4,prompt=256,resp=256,d=256,heads=4,kv=2,layers=4,dtype=bfloat16",
]

DEFAULTS = {"d": 64, "layers": 2, "heads": 4, "kv": 2, "V": 512, "B": 4, "prompt": 32}
DEFAULTS |= {"resp": 32, "dtype": "float32", "ckpt": 0, "live": 0, "share": 0, "q": 0}


def parse(spec: str) -> dict:
    shape = dict(DEFAULTS)
    for part in spec.split(","):
        key, value = part.split("=")
        shape[key] = value if key == "dtype" else int(value)
    shape.setdefault("f", 2 * shape["d"])
    return shape


def measure(spec: str, work: Path) -> dict:
    """One shape, in this process: the planned and the measured peak, in bytes."""
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np

    from mlx_dpo.config import build_config
    from mlx_dpo.data import TokenizedPair, TokenizedSplit
    from mlx_dpo.grad_checkpoint import checkpoint_blocks
    from mlx_dpo.memory.arithmetic import plan_memory
    from mlx_dpo.memory.session import data_lengths, session_settings, session_shape
    from mlx_dpo.session import open_session
    from mlx_dpo.tiny import TEMPLATES, build_model, default_texts, train_tokenizer
    from mlx_dpo.trainer.batch_logps import batch_arrays, response_token_counts
    from mlx_dpo.trainer.step import compiled_step

    s = parse(spec)
    name = f"d{s['d']}-f{s['f']}-l{s['layers']}-h{s['heads']}-kv{s['kv']}-V{s['V']}-{s['dtype']}"
    model_dir = work / "models" / name
    if not (model_dir / "config.json").exists():
        # The synthetic texts give a tokenizer of a few thousand tokens at most; a larger
        # vocabulary only widens the embedding and the head (the pairs are token ids).
        tokenizer = train_tokenizer(default_texts(), min(s["V"], 2048), TEMPLATES["chatml"][1])
        build_model(
            model_dir,
            hidden_size=s["d"],
            num_layers=s["layers"],
            num_heads=s["heads"],
            num_kv_heads=s["kv"],
            intermediate_size=s["f"],
            tokenizer=tokenizer,
            dtype=s["dtype"],
        )
        if s["V"] > 2048:
            widen_vocabulary(model_dir, s["V"])
    data = work / "data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    config = build_config(
        {},
        {
            "model": str(model_dir),
            "data": str(data),
            "batch_size": s["B"],
            "lora_rank": 8,
            "grad_checkpoint": bool(s["ckpt"]),
            "reference": "live" if s["live"] else "cached",
            "quantize": s["q"] or None,
            "prefix_sharing": bool(s["share"]),
        },
    )
    session = open_session(config, splits=("train",))
    model = session.model
    vocab = session.model_config["vocab_size"]
    rng = np.random.default_rng(0)

    def ids(n: int) -> list[int]:
        return rng.integers(1, vocab, n).tolist()

    pairs = [
        TokenizedPair(i, "", ids(s["prompt"]), ids(s["resp"]), ids(s["resp"]))
        for i in range(s["B"])
    ]
    session.splits["train"] = TokenizedSplit.from_pairs("train", "calibration", pairs)
    plan = plan_memory(
        session_shape(session, config),
        data_lengths(pairs),
        session_settings(session, config),
        limit=0,
    )

    # The trainer's own compiled step.
    optimizer = optim.AdamW(learning_rate=1e-4)
    optimizer.init(model.trainable_parameters())
    if config.grad_checkpoint:
        checkpoint_blocks(model)
    accumulate, apply = compiled_step(session, config, optimizer)

    batch = session.collate(pairs)
    arrays = batch_arrays(batch)
    chosen_tokens, rejected_tokens = response_token_counts(batch)
    reference = mx.zeros(batch.num_pairs)
    extras = {
        "chosen_tokens": chosen_tokens,
        "rejected_tokens": rejected_tokens,
        "reference_chosen": reference,
        "reference_rejected": reference,
    }
    mx.eval(model.parameters(), optimizer.state)
    for _ in range(3):
        mx.reset_peak_memory()
        loss, metrics, grads, _ = accumulate(None, arrays, extras, {})
        mx.eval(loss, metrics, grads)
        grad_norm = apply(grads, mx.array(float(batch.num_pairs)))
        mx.eval(model.state, optimizer.state, grad_norm)
        del grads
        measured = mx.get_peak_memory()
    return {"spec": spec, "planned": plan.estimate.total, "measured": measured}


def widen_vocabulary(model_dir: Path, vocab: int) -> None:
    import mlx.core as mx
    from mlx_lm.utils import _get_classes, save_config, save_model

    config = json.loads((model_dir / "config.json").read_text())
    config["vocab_size"] = vocab
    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    if config.get("torch_dtype", "float32") != "float32":
        model.set_dtype(getattr(mx, config["torch_dtype"]))
    mx.eval(model.parameters())
    save_model(model_dir, model)
    save_config(config, model_dir / "config.json")


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--one":
        print(json.dumps(measure(argv[1], Path(argv[2]))))
        return
    shapes = argv or SHAPES
    print("| shape | planned MB | measured MB | error |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        for spec in shapes:
            done = subprocess.run(
                [sys.executable, __file__, "--one", spec, work],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(f"| {spec} | failed: {done.stderr.strip().splitlines()[-1]} | | |")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            planned, measured = row["planned"], row["measured"]
            error = (planned - measured) / measured
            print(
                f"| {spec} | {planned / 1e6:.1f} | {measured / 1e6:.1f} | {error:+.0%} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
