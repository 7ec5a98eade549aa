"""One mlx-lm-lora DPO run (its own CLI entry, `mlx_lm_lora.train.run`) on a workload.
Writes a JSON result.

    python benchmarks/bench_mlx_lm_lora.py --workload DIR --steps N --warmup K --out RESULT.json
        [--model model|model_q4]

What this wrapper changes, without editing the installed package:
- Linux guards: mlx-lm-lora calls `mx.set_wired_limit(mx.device_info()[
  "max_recommended_working_set_size"])` at the start of training, which fails without Metal.
  Here `device_info()` gains that key (physical memory) and `set_wired_limit` is a no-op
  unless Metal is available. Nothing else about its trainer changes.
- LoRA targets: its CLI wraps every linear layer and takes no `keys`; the wrapper passes
  q/k/v/o (as the other tools use) to the same `linear_to_lora_layers` call.
- Measurement hooks: a training callback (report every step) timestamps the steps, and the
  batch iterator is wrapped to count each batch's real (non-pad) tokens.
- Evaluation: with a validation split (W4), its trainer would evaluate it inside the loop at
  steps 1 and `iters` (in the measured step times); the wrapper gives the training loop no
  validation split and, after training, runs its own `evaluate_dpo` once over the whole split
  (the call its loop makes, with the trained model and its reference model), timed.
It loads a second full model as its reference and runs four forward passes a step
(policy and reference, chosen and rejected), as it does on macOS.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# Before MLX: the system OpenBLAS (as for mlx-dpo; MLX's bundled BLAS is ~35x slower).
import mlx_dpo  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_workload, summarize_steps, write_result  # noqa: E402


def guard_metal_calls() -> None:
    import mlx.core as mx

    if mx.metal.is_available():
        return
    device_info = mx.device_info

    def cpu_device_info():
        info = dict(device_info())
        if "max_recommended_working_set_size" not in info:
            info["max_recommended_working_set_size"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf(
                "SC_PHYS_PAGES"
            )
        return info

    mx.device_info = cpu_device_info
    mx.set_wired_limit = lambda *_args, **_kwargs: 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--model",
        default="model",
        help="the workload's model folder: model (float32) or model_q4 (4-bit: QLoRA)",
    )
    args = parser.parse_args()

    import mlx.core as mx

    guard_metal_calls()

    import mlx_lm_lora.utils as lora_utils
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm_lora import train as lora_train
    from mlx_lm_lora.trainer import dpo_trainer

    spec, _ = load_workload(args.workload)
    keys = list(spec.lora_keys)
    original_to_lora = lora_utils.linear_to_lora_layers

    def to_lora_with_keys(model, num_layers, config, use_dora=False):
        return original_to_lora(model, num_layers, {**config, "keys": keys}, use_dora=use_dora)

    lora_utils.linear_to_lora_layers = to_lora_with_keys

    batch_work: list[tuple[int, int]] = []
    original_batches = dpo_trainer.iterate_dpo_batches
    counting = [True]  # off for the evaluation after training

    def counting_batches(*a, **kw):
        for batch in original_batches(*a, **kw):
            if counting[0]:
                chosen, rejected = batch[0], batch[1]
                tokens = int((chosen != 0).sum().item() + (rejected != 0).sum().item())
                batch_work.append((chosen.shape[0], tokens))
            yield batch

    dpo_trainer.iterate_dpo_batches = counting_batches

    marks: list[float] = []

    class Timer(TrainingCallback):
        def on_train_loss_report(self, train_info):
            marks.append(time.perf_counter())

    work = Path(tempfile.mkdtemp(prefix="bench-mlx-lm-lora-"))
    cli_args = lora_train.build_parser().parse_args([])
    for key, value in lora_train.CONFIG_DEFAULTS.items():
        if getattr(cli_args, key, None) is None:
            setattr(cli_args, key, value)
    settings = {
        "model": str(args.workload / args.model),
        "data": str(args.workload / "data"),
        "train": True,
        "train_mode": "dpo",
        "train_type": "lora",
        "batch_size": spec.batch_size,
        "iters": args.warmup + args.steps,
        "learning_rate": spec.learning_rate,
        "optimizer": "adamw",
        "optimizer_config": {"adamw": {"weight_decay": 0.0}},
        "lora_parameters": {"rank": spec.lora_rank, "dropout": 0.0, "scale": spec.lora_scale},
        "num_layers": -1,  # every layer
        "beta": spec.beta,
        "dpo_cpo_loss_type": "sigmoid",
        "max_seq_length": spec.max_length,
        "steps_per_report": 1,
        "steps_per_eval": 10**9,
        "save_every": 10**9,
        "adapter_path": str(work / "adapters"),
        "fuse": False,
        "seed": spec.seed,
    }
    for key, value in settings.items():
        setattr(cli_args, key, value)

    tic = time.perf_counter()
    start_marks: list[float] = []
    original_train_dpo = lora_train.train_dpo

    evaluation: dict = {}

    def timed_train_dpo(*a, **kw):
        val_dataset = kw.pop("val_dataset", None)
        start_marks.append(time.perf_counter())
        out = original_train_dpo(*a, **kw, val_dataset=None)
        if val_dataset is not None and len(val_dataset) > 0:
            counting[0] = False
            eval_tic = time.perf_counter()
            dpo_trainer.evaluate_dpo(
                model=kw["model"],
                ref_model=kw["ref_model"],
                dataset=val_dataset,
                batch_size=cli_args.batch_size,
                num_batches=-1,
                max_seq_length=cli_args.max_seq_length,
                beta=cli_args.beta,
                delta=cli_args.delta,
                loss_type=cli_args.dpo_cpo_loss_type,
            )
            evaluation["seconds"] = time.perf_counter() - eval_tic
            evaluation["pairs"] = len(val_dataset)
        return out

    lora_train.train_dpo = timed_train_dpo
    trainable: list[int] = []
    original_print_trainable = lora_train.print_trainable_parameters

    def count_trainable(model):
        from mlx.utils import tree_flatten

        trainable.append(sum(v.size for _, v in tree_flatten(model.trainable_parameters())))
        return original_print_trainable(model)

    lora_train.print_trainable_parameters = count_trainable
    lora_train.run(cli_args, training_callback=Timer())
    total = time.perf_counter() - tic

    if len(marks) != args.warmup + args.steps:
        raise SystemExit(f"expected {args.warmup + args.steps} step reports, got {len(marks)}")
    steps = []
    previous = start_marks[0]
    for mark, (pairs, tokens) in zip(marks, batch_work, strict=True):
        steps.append({"seconds": mark - previous, "pairs": pairs, "tokens": tokens})
        previous = mark
    write_result(
        args.out,
        {
            "tool": "mlx-lm-lora" + ("-q4" if args.model == "model_q4" else ""),
            "model": args.model,
            "workload": spec.name,
            "reference": "live (second model)",
            "reference_precompute_seconds": None,
            "eval_seconds": evaluation.get("seconds"),
            "eval_pairs": evaluation.get("pairs"),
            "eval_seconds_per_pair": (
                evaluation["seconds"] / evaluation["pairs"] if evaluation else None
            ),
            "lora_keys": keys,
            "trainable_parameters": trainable[0] if trainable else None,
            "mlx_peak_memory_mb": mx.get_peak_memory() / 2**20,
            "total_seconds": total,
            **summarize_steps(steps, args.warmup),
            "steps": steps,
        },
    )


if __name__ == "__main__":
    main()
