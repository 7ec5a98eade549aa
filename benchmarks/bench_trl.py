"""One TRL DPOTrainer run (PEFT LoRA, PyTorch CPU, float32) on a workload. Writes a JSON
result.

    python benchmarks/bench_trl.py --workload DIR --reference live|precomputed \\
        --steps N --warmup K --out RESULT.json
    python benchmarks/bench_trl.py --logits MODEL_DIR OUT.npy TOKEN,TOKEN,...

The reference is the PEFT model with its adapters disabled (`live`), or log-probs computed
once before training (`precomputed`, TRL's `precompute_ref_log_probs=True`; that pass is timed
separately). The data are the workload's records as conversations, so TRL applies the same
ChatML template. A trainer callback timestamps the steps; the data collator is wrapped to
count each batch's real (attention-mask) tokens. This process never imports MLX.

With a validation split (data/valid.jsonl, W4) it is the trainer's eval_dataset (no evaluation
during training) and `trainer.evaluate()` runs once after training, timed. With `precomputed`,
TRL precomputes the reference of both splits in __init__ (train first; both timed, reported
apart), as it does for any user who passes an eval_dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_workload, summarize_steps, write_result  # noqa: E402


def logits(model_dir: str, out: str, tokens: str) -> None:
    """The HF model's logits on a few tokens (compared with MLX's by run.py)."""
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([[int(t) for t in tokens.split(",")]])
    with torch.no_grad():
        np.save(out, model(ids).logits[0].numpy())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--logits":
        logits(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", required=True, type=Path)
    parser.add_argument("--reference", choices=("live", "precomputed"), required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-trl-"))
    # Precomputed log-probs are cached by `datasets`: a fresh cache, so they are computed here.
    os.environ["HF_DATASETS_CACHE"] = str(work / "datasets")
    os.environ.setdefault("TQDM_DISABLE", "1")

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, LlamaForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    spec, _ = load_workload(args.workload)
    torch.manual_seed(spec.seed)
    model_dir = str(args.workload / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def conversations(name: str) -> Dataset | None:
        path = args.workload / "data" / f"{name}.jsonl"
        if not path.exists():
            return None
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "chosen": [{"role": "assistant", "content": r["chosen"]}],
                    "rejected": [{"role": "assistant", "content": r["rejected"]}],
                }
                for r in records
            ]
        )

    dataset, eval_dataset = conversations("train"), conversations("valid")
    precompute = args.reference == "precomputed"
    config = DPOConfig(
        output_dir=str(work / "out"),
        per_device_train_batch_size=spec.batch_size,
        per_device_eval_batch_size=spec.batch_size,
        eval_strategy="no",
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_steps=args.warmup + args.steps,
        beta=spec.beta,
        loss_type=["sigmoid"],
        max_length=spec.max_length,
        precompute_ref_log_probs=precompute,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        seed=spec.seed,
        disable_tqdm=True,
        # TRL turns activation checkpointing on by default; no other tool here checkpoints.
        gradient_checkpointing=False,
    )
    peft_config = LoraConfig(
        r=spec.lora_rank,
        lora_alpha=spec.lora_scale * spec.lora_rank,  # PEFT scales by alpha / r
        lora_dropout=0.0,
        target_modules=[key.split(".")[-1] for key in spec.lora_keys],
        task_type="CAUSAL_LM",
    )

    precompute_seconds: list[float] = []
    original_precompute = DPOTrainer._precompute_ref_logps

    def timed_precompute(self, *a, **kw):
        tic = time.perf_counter()
        try:
            return original_precompute(self, *a, **kw)
        finally:
            precompute_seconds.append(time.perf_counter() - tic)

    DPOTrainer._precompute_ref_logps = timed_precompute

    marks: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *_a, **_kw):
            marks.append(time.perf_counter())

        def on_step_end(self, *_a, **_kw):
            marks.append(time.perf_counter())

    tic = time.perf_counter()
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[Timer()],
    )
    batch_work: list[tuple[int, int]] = []
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        batch_work.append((len(examples), int(batch["attention_mask"].sum())))
        return batch

    trainer.data_collator = counting_collator
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    eval_seconds = None
    if eval_dataset is not None:
        eval_tic = time.perf_counter()
        trainer.evaluate()
        eval_seconds = time.perf_counter() - eval_tic
    total = time.perf_counter() - tic

    count = args.warmup + args.steps
    if len(marks) != count + 1:
        raise SystemExit(f"expected {count} steps, got {len(marks) - 1}")
    steps = [
        {"seconds": marks[i + 1] - marks[i], "pairs": batch_work[i][0], "tokens": batch_work[i][1]}
        for i in range(count)
    ]
    train_pairs, eval_pairs = len(dataset), len(eval_dataset) if eval_dataset is not None else 0
    reference_seconds = precompute_seconds[0] if precompute_seconds else None
    write_result(
        args.out,
        {
            "tool": f"trl-{args.reference}",
            "workload": spec.name,
            "reference": args.reference,
            "reference_precompute_seconds": reference_seconds,
            "reference_precompute_pairs": train_pairs if reference_seconds is not None else None,
            "reference_precompute_seconds_per_pair": (
                reference_seconds / train_pairs if reference_seconds is not None else None
            ),
            # The validation split's precompute (TRL does it in __init__ after train's).
            "eval_reference_precompute_seconds": (
                precompute_seconds[1] if len(precompute_seconds) > 1 else None
            ),
            "eval_seconds": eval_seconds,
            "eval_pairs": eval_pairs if eval_seconds is not None else None,
            "eval_seconds_per_pair": eval_seconds / eval_pairs if eval_seconds else None,
            "trainable_parameters": trainable,
            "torch_threads": torch.get_num_threads(),
            "total_seconds": total,
            **summarize_steps(steps, args.warmup),
            "steps": steps,
        },
    )


if __name__ == "__main__":
    main()
