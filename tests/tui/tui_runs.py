"""Recorded event streams for the dashboard tests: run directories written with the same
`mlx_dpo.events` writer the trainer uses, with fixed times so screens are reproducible."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from mlx_dpo.events import ADAPTER_FILE, METRIC_NAMES, RUN_END_STATES, EventWriter, write_status

START_TIME = 1_700_000_000.0
SECONDS_PER_STEP = 2.0
MODEL = "mlx-community/SmolLM2-135M-Instruct-4bit"
DATA = "demo"


def step_metrics(step: int) -> dict[str, Any]:
    """Smooth, plausible DPO numbers: rewards part, accuracy and margin rise, loss falls."""
    progress = 1 - math.exp(-step / 30)
    wiggle = 0.05 * math.sin(step)
    return {
        "loss": round(math.log(2) * (1 - 0.6 * progress) + wiggle / 5, 6),
        "rewards/chosen": round(0.8 * progress + wiggle, 6),
        "rewards/rejected": round(-1.2 * progress - wiggle, 6),
        "rewards/margins": round(2.0 * progress + 2 * wiggle, 6),
        "rewards/accuracies": round(min(1.0, 0.5 + 0.45 * progress + wiggle), 6),
        "logps/chosen": round(-120.0 + 8 * progress, 6),
        "logps/rejected": round(-130.0 - 12 * progress, 6),
        "kl": round(0.02 * step, 6),
        "grad_norm": round(1.5 - progress, 6),
        "learning_rate": 5e-6 if step > 5 else 1e-6 * step,
        "tokens_per_second": 850.0 + step,
        "pairs_per_second": 3.5,
        "peak_memory_gb": round(1.2 + 0.01 * min(step, 10), 4),
    }


def noisy_step_metrics(step: int, batch_size: int = 4) -> dict[str, Any]:
    """What a real run's step events look like: the same trends with per-batch noise (a batch
    of 4 pairs has accuracy 0, 25, 50, 75 or 100%). Seeded by the step: reproducible."""
    rng = random.Random(step)
    smooth = step_metrics(step)
    chosen = smooth["rewards/chosen"] + rng.gauss(0, 0.35)
    rejected = smooth["rewards/rejected"] + rng.gauss(0, 0.35)
    share = smooth["rewards/accuracies"]
    wins = sum(rng.random() < share for _ in range(batch_size))
    margin = chosen - rejected
    return {
        **smooth,
        "loss": round(max(0.05, smooth["loss"] + rng.gauss(0, 0.09)), 6),
        "rewards/chosen": round(chosen, 6),
        "rewards/rejected": round(rejected, 6),
        "rewards/margins": round(margin, 6),
        "rewards/accuracies": wins / batch_size,
        "logps/chosen": round(smooth["logps/chosen"] + rng.gauss(0, 12), 6),
        "logps/rejected": round(smooth["logps/rejected"] + rng.gauss(0, 12), 6),
        "kl": round(smooth["kl"] + rng.gauss(0, 0.15), 6),
        "grad_norm": round(abs(smooth["grad_norm"] + rng.gauss(0, 0.3)), 6),
        "pairs_per_second": round(3.5 + rng.gauss(0, 0.2), 4),
    }


def eval_metrics(step: int) -> dict[str, Any]:
    metrics = step_metrics(step)
    return {name: metrics[name] + (0.02 if name == "loss" else -0.01) for name in METRIC_NAMES}


def for_loss(metrics: dict[str, Any], loss: str) -> dict[str, Any]:
    """A step's or eval's numbers as a run with this loss writes them: a reference-free loss
    has no kl (null) and orpo its NLL extras; kto counts its desirable and undesirable
    completions and its kl is its reference point (>= 0)."""
    out = dict(metrics)
    if loss in ("orpo", "simpo", "cpo"):
        out["kl"] = None
    if loss == "orpo":
        out["nll_loss"] = round(2.5 - 0.5 * out["rewards/accuracies"], 6)
        out["log_odds_ratio"] = round(-0.7 + 0.3 * out["rewards/accuracies"], 6)
        out["log_odds_chosen"] = round(out["rewards/margins"], 6)
    if loss == "kto":
        out["kl"] = round(abs(out["kl"] or 0.0), 6)
        out["count/desirable"], out["count/undesirable"] = 2.0, 2.0
    return out


def at(step: float) -> float:
    return START_TIME + 10.0 + step * SECONDS_PER_STEP


def write_run(
    run_dir: str | Path,
    *,
    steps: int = 40,
    total_steps: int = 100,
    eval_every: int = 10,
    checkpoint_every: int = 20,
    end: str | None = None,
    paused: bool = False,
    health: bool = False,
    truncated: bool = True,
    pid: int | None = None,
    resumed_from: int | None = None,
    first_step: int = 1,
    noisy: bool = False,
    start_time: float = START_TIME,
    loss: str = "sigmoid",
) -> Path:
    """Write a run directory with `steps` step events (and evals/checkpoints), ending as
    `end` ("completed" | "stopped" | "failed") or still going, as a run with `loss` writes
    them (for_loss)."""
    run_dir = Path(run_dir)
    writer = EventWriter(run_dir)
    chosen = noisy_step_metrics if noisy else step_metrics

    def metrics(step: int) -> dict[str, Any]:
        return for_loss(chosen(step), loss)

    offset = start_time - START_TIME
    writer.write(
        "run_start",
        first_step - 1,
        time=start_time,
        model=MODEL,
        data=DATA,
        run_dir=str(run_dir),
        total_steps=total_steps,
        epochs=2,
        train_pairs=200,
        valid_pairs=20,
        test_pairs=0,
        batch_size=4,
        grad_accumulation=1,
        beta=0.1,
        loss=loss,
        reference="cached",
        trainable_parameters=1_000_000,
        total_parameters=135_000_000,
        truncated={"train": {"pairs": 3, "prompt": 2, "response": 1}} if truncated else {},
        resumed_from=resumed_from,
        pid=pid,
        config={},
    )
    writer.write(
        "reference", 0, time=start_time + 5, split="train", done=200, total=200, cached=False
    )
    last_checkpoint = None
    for step in range(first_step, steps + 1):
        writer.write(
            "step",
            step,
            time=at(step) + offset,
            epoch=round(step * 2 / total_steps, 4),
            elapsed=10.0 + step * SECONDS_PER_STEP,
            eta=(total_steps - step) * SECONDS_PER_STEP,
            **metrics(step),
        )
        if eval_every and step % eval_every == 0:
            writer.write(
                "eval",
                step,
                time=at(step + 0.5) + offset,
                split="valid",
                pairs=20,
                **for_loss(eval_metrics(step), loss),
            )
        if checkpoint_every and step % checkpoint_every == 0:
            last_checkpoint = str(run_dir / "checkpoints" / f"{step:07d}")
            writer.write("checkpoint", step, time=at(step + 0.6) + offset, path=last_checkpoint)
            (run_dir / ADAPTER_FILE).write_bytes(b"adapters")
        if health and step == 25:
            writer.write(
                "health",
                step,
                time=at(step + 0.7) + offset,
                kind="kl_drift",
                severity="warning",
                message="KL to the reference grows fast",
                suggestion="lower the learning rate or raise beta",
                values={"kl": 0.5},
            )
    state = "training"
    if paused:
        writer.write("state", steps, time=at(steps + 0.8) + offset, state="paused")
        state = "paused"
    if end is not None:
        final_eval = {"split": "valid", "step": steps, **eval_metrics(steps)}
        best_eval = {"split": "valid", "step": steps - eval_every, **eval_metrics(steps - 10)}
        error = f"RuntimeError: NaN loss at step {steps}" if end == "failed" else None
        if end != "failed":
            (run_dir / ADAPTER_FILE).write_bytes(b"adapters")
        writer.write(
            "run_end",
            steps,
            time=at(steps + 1) + offset,
            status=end,
            error=error,
            adapter_path=str(run_dir),
            last_checkpoint=last_checkpoint,
            final_eval=final_eval if end != "failed" else None,
            best_eval=best_eval if end != "failed" else None,
            elapsed=10.0 + (steps + 1) * SECONDS_PER_STEP,
        )
        state = RUN_END_STATES[end]
    writer.close()
    write_status(
        run_dir,
        state=state,
        step=steps,
        total_steps=total_steps,
        epoch=round(steps * 2 / total_steps, 4),
        pid=pid,
        model=MODEL,
        last_checkpoint=last_checkpoint,
        error=None,
        updated=at(steps + 1) + offset,
    )
    return run_dir


def make_round(run_dir: Path, number: int, rounds: int, earlier: list[dict] | None = None) -> Path:
    """Make a written run round `number` of `rounds` of `train --rounds`: its run_start gains
    what the trainer copies from round.json (mlx_dpo/rounds.py round_fields)."""
    import json

    path = Path(run_dir) / "metrics.jsonl"
    first, *rest = path.read_text().splitlines()
    start = json.loads(first)
    start.update(round=number, rounds=rounds, earlier_rounds=earlier or [])
    path.write_text("\n".join([json.dumps(start), *rest]) + "\n")
    return Path(run_dir)


def earlier_round(number: int, loss: float, accuracy: float) -> dict[str, Any]:
    """An earlier round's result as rounds.round_result gives it."""
    final_eval = {**eval_metrics(20), "loss": loss, "rewards/accuracies": accuracy, "pairs": 20}
    return {"round": number, "status": "completed", "step": 20, "train_pairs": 180,
            "valid_pairs": 20, "final_eval": final_eval, "best_eval": final_eval}  # fmt: skip
