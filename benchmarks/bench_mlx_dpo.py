"""One mlx-dpo training run on a workload, through its Python API (the same `train` the CLI
runs with --no-tui), reference cached. Writes a JSON result.

    python benchmarks/bench_mlx_dpo.py --workload DIR --steps N --warmup K --out RESULT.json
        [--loss sigmoid|orpo|simpo|...] [--reference cached|live]

    [--model model|model_q4]

A reference-free loss (orpo, simpo, cpo) runs no reference pass at all (nothing to precompute,
nothing computed in the step); `reference_pass` in the result says whether the run had one.

Step times are the intervals between consecutive `step` events of the run's metrics.jsonl
(the whole loop: data, compiled step, optimizer, event writing, health checks). The work of
each step (pairs, tokens) is the trainer's own count; the batches are rebuilt with the
trainer's batching (a pure function of seed and epoch) for the FLOP count.

With a validation split (W4's data/valid.jsonl), the run does what `mlx-dpo train` does with
one: the reference of both splits is precomputed before the first step, and the split is
evaluated once after the last (Run.evaluate: evaluate_split with the cached reference); that
evaluation is timed from its `state: evaluating` event to its `eval` event. MLX's peak memory
is recorded for each phase (the peak reset before it): the reference precompute (forward
only), the training steps, the evaluation (forward only); `mlx_peak_memory_mb` is the highest.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

# Before MLX: the system OpenBLAS.
import mlx_dpo  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_workload, summarize_steps, write_result  # noqa: E402
from flops import step_flops  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", required=True, type=Path)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--reference", choices=("cached", "live"), default="cached")
    parser.add_argument(
        "--loss",
        default="sigmoid",
        help="the loss (mlx_dpo/loss_catalog.py); reference-free ones ignore --reference",
    )
    parser.add_argument(
        "--layout",
        choices=("default", "rows"),
        default="default",
        help="rows: every row computes its own prompt (prefix sharing off, where the engine "
        "has it)",
    )
    parser.add_argument(
        "--grad-checkpoint",
        action="store_true",
        help="recompute each block's activations in the backward (memory for speed)",
    )
    parser.add_argument(
        "--model",
        default="model",
        help="the workload's model folder to train: model (float32) or model_q4 (4-bit: QLoRA)",
    )
    args = parser.parse_args()

    import mlx.core as mx

    from mlx_dpo import loss_catalog
    from mlx_dpo.config import CONFIG_KEYS, build_config
    from mlx_dpo.trainer import run as run_module
    from mlx_dpo.trainer.run import RunOptions, train

    spec, stats = load_workload(args.workload)
    reference_pass = loss_catalog.needs_reference(args.loss)
    work = Path(tempfile.mkdtemp(prefix="bench-mlx-dpo-"))
    # A fresh cache: the reference is computed (and timed) in this run.
    os.environ["MLX_DPO_CACHE"] = str(work / "cache")
    layout = {}
    if "prefix_sharing" in CONFIG_KEYS and args.layout == "rows":
        layout["prefix_sharing"] = False
    if "sample_count" in CONFIG_KEYS:
        # No greedy answers to the validation prompts at the end: no other tool generates.
        layout["sample_count"] = 0
    config = build_config(
        {},
        {
            **layout,
            "model": str(args.workload / args.model),
            "data": str(args.workload / "data"),
            "iters": args.warmup + args.steps,
            "batch_size": spec.batch_size,
            "learning_rate": spec.learning_rate,
            "lr_schedule": "constant",
            "beta": spec.beta,
            "lora_rank": spec.lora_rank,
            "lora_scale": spec.lora_scale,
            "lora_keys": list(spec.lora_keys),
            "max_length": spec.max_length,
            "loss": args.loss,
            # A reference-free loss takes no `reference` setting (the config refuses one).
            **({"reference": args.reference} if reference_pass else {}),
            "grad_checkpoint": args.grad_checkpoint,
            "eval_every": 0,
            "save_every": 0,
            "seed": spec.seed,
        },
    )
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        print(line, flush=True)

    phase_peaks = watch_phase_peaks(run_module.Run, mx)
    run_dir = work / "run"
    tic = time.perf_counter()
    status = train(config, RunOptions(run_dir, on_line=on_line, handle_signals=False))
    total = time.perf_counter() - tic
    if status != "completed":
        raise SystemExit(f"mlx-dpo run {status}")

    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_events = [e for e in events if e["event"] == "step"]
    run_start = next(e for e in events if e["event"] == "run_start")
    # The first step's start: the last event written before it (reference done, state).
    before_first = [
        e for e in events if e["event"] != "step" and e["time"] <= step_events[0]["time"]
    ]
    previous = before_first[-1]["time"]
    batches = rebuild_batches(config, len(step_events))
    # The run says which layout it used; engines from before that field are checked here.
    shared = run_start.get("prefix_sharing")
    if shared is None:
        shared = prefix_sharing_used(config)
    steps = []
    for event, pairs in zip(step_events, batches, strict=True):
        inside = spec.batch_size / event["pairs_per_second"]  # the trainer's own step time
        steps.append(
            {
                "seconds": event["time"] - previous,
                "inside_seconds": inside,
                "pairs": round(event["pairs_per_second"] * inside),
                "tokens": round(event["tokens_per_second"] * inside),
                "flops": step_flops(spec, pairs, shared)["total"],
            }
        )
        previous = event["time"]
    summary = summarize_steps(steps, args.warmup)
    measured = steps[args.warmup :]
    summary["model_flops_per_second"] = sum(s["flops"] for s in measured) / summary["seconds"]
    summary["inside_step_seconds_mean"] = sum(s["inside_seconds"] for s in measured) / len(measured)
    reference_seconds = None
    for line in lines:
        match = re.search(r"reference log-probs for train: \d+ pairs in ([0-9.]+)s", line)
        if match:
            reference_seconds = float(match.group(1))
    train_pairs = run_start.get("train_pairs") or stats.get("pairs")
    eval_seconds, eval_pairs = final_eval_seconds(events), run_start.get("valid_pairs") or 0
    peaks_mb = {k: v / 2**20 for k, v in phase_peaks.items()}
    write_result(
        args.out,
        {
            "tool": "mlx-dpo"
            + ("" if args.loss == "sigmoid" else f"-{args.loss}")
            + ("-live" if args.reference == "live" and reference_pass else "")
            + ("-rows" if args.layout == "rows" else "")
            + ("-gc" if args.grad_checkpoint else "")
            + ("-q4" if args.model == "model_q4" else ""),
            "model": args.model,
            "prefix_sharing": shared,
            "workload": spec.name,
            "loss": args.loss,
            "reference": args.reference if reference_pass else None,
            "reference_pass": reference_pass,
            "reference_precompute_seconds": reference_seconds,
            "reference_precompute_pairs": train_pairs if reference_seconds is not None else None,
            "reference_precompute_seconds_per_pair": (
                reference_seconds / train_pairs if reference_seconds and train_pairs else None
            ),
            "eval_seconds": eval_seconds,
            "eval_pairs": eval_pairs if eval_seconds is not None else None,
            "eval_seconds_per_pair": eval_seconds / eval_pairs
            if eval_seconds and eval_pairs
            else None,
            "mlx_peak_reference_mb": peaks_mb.get("reference"),
            "mlx_peak_training_mb": peaks_mb.get("training"),
            "mlx_peak_eval_mb": peaks_mb.get("eval"),
            "trainable_parameters": run_start["trainable_parameters"],
            "total_parameters": run_start["total_parameters"],
            # The highest of the phases (the peak is reset between them).
            "mlx_peak_memory_mb": max([mx.get_peak_memory() / 2**20, *peaks_mb.values()]),
            "total_seconds": total,
            **summary,
            "steps": steps,
        },
    )


def watch_phase_peaks(run_class, mx) -> dict[str, int]:
    """MLX's peak memory of each phase of the run, by wrapping the trainer's Run methods:
    the reference precompute (reset before it), the training steps (from its end to the final
    evaluation, or the end of the run) and the evaluation. Filled in as the run goes."""
    peaks: dict[str, int] = {}
    reset = getattr(mx, "reset_peak_memory", None)
    original_reference, original_evaluate = run_class.reference_logps, run_class.evaluate

    def reference_logps(self):
        if reset:
            reset()
        try:
            return original_reference(self)
        finally:
            peaks["reference"] = mx.get_peak_memory()
            if reset:
                reset()

    def evaluate(self):
        if "eval" not in peaks:
            peaks["training"] = mx.get_peak_memory()
            if reset:
                reset()
        try:
            return original_evaluate(self)
        finally:
            peaks["eval"] = mx.get_peak_memory()

    run_class.reference_logps, run_class.evaluate = reference_logps, evaluate
    return peaks


def final_eval_seconds(events: list[dict]) -> float | None:
    """The seconds of the run's last evaluation: from its `state: evaluating` event to its
    `eval` event (None without one)."""
    evals = [e for e in events if e["event"] == "eval"]
    if not evals:
        return None
    started = [
        e
        for e in events
        if e["event"] == "state"
        and e.get("state") == "evaluating"
        and e["time"] <= evals[-1]["time"]
    ]
    return evals[-1]["time"] - started[-1]["time"] if started else None


def rebuild_batches(config, count: int) -> list[list[tuple[int, int, int]]]:
    """(prompt, chosen, rejected) lengths of the pairs of the first `count` batches, as the
    trainer's batching orders them."""
    from mlx_lm.utils import load_tokenizer

    from mlx_dpo.batching import batches_per_epoch, epoch_batches
    from mlx_dpo.data import load_splits

    tokenizer = load_tokenizer(Path(config.model))
    pairs = load_splits(config.data, tokenizer, config.max_length, splits=("train",))["train"].pairs
    per_epoch = batches_per_epoch(len(pairs), config.batch_size)
    out = []
    for k in range(count):
        epoch, position = divmod(k, per_epoch)
        order = epoch_batches(pairs, config.batch_size, config.seed, epoch, True)
        out.append(
            [
                (len(pairs[i].prompt_ids), len(pairs[i].chosen_ids), len(pairs[i].rejected_ids))
                for i in order[position]
            ]
        )
    return out


def prefix_sharing_used(config) -> bool:
    """Whether the run computed each prompt once (engines with prefix sharing turn it on
    when asked and the architecture passes their check)."""
    if not getattr(config, "prefix_sharing", False) or getattr(config, "grad_checkpoint", False):
        return False  # engines without the run_start field turned sharing off under checkpointing
    from mlx_dpo import logprobs

    check = getattr(logprobs, "supports_prefix_sharing", None)
    if check is None:
        return False
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(config.model))
    return bool(check(model, logprobs.find_head_split(model)))


if __name__ == "__main__":
    main()
