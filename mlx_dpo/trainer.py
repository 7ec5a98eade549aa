"""The training loop: a compiled step with explicit state, AdamW with a schedule, clipping,
accumulation, evaluation, checkpoints, control commands and signals.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mlx_dpo import checkpoints, distributed, memory, reference
from mlx_dpo.batching import Batch, batches_per_epoch, collate, epoch_batches
from mlx_dpo.config import TrainConfig, save_config
from mlx_dpo.data import TokenizedSplit, load_splits
from mlx_dpo.errors import UserError, resource_failure
from mlx_dpo.events import (
    CONFIG_FILE,
    METRIC_NAMES,
    METRICS_FILE,
    RUN_END_STATES,
    ControlReader,
    EventWriter,
    read_events,
    truncate_events_after,
    write_status,
)
from mlx_dpo.formatting import format_duration
from mlx_dpo.grad_checkpoint import checkpoint_blocks
from mlx_dpo.health import HealthMonitor, summarize, thresholds_from_dict
from mlx_dpo.logprobs import (
    HeadSplit,
    find_head_split,
    response_logps,
    shared_prompt_logps,
    supports_prefix_sharing,
)
from mlx_dpo.losses import LossSettings, PairLogps, pair_metrics, preference_loss
from mlx_dpo.model import (
    adapter_weights,
    apply_lora,
    count_parameters,
    fingerprint_files,
    load_adapter_into,
    load_model,
    model_fingerprint,
    num_layers,
    reference_mode,
    snapshot_adapter,
)
from mlx_dpo.platform import peak_memory_gb, restore_cache_limit, set_wired_limit

REPORT_SECONDS = 30.0


class TrainingFailed(Exception):
    """The run cannot go on (non-finite loss, a health error); the message says why."""


@dataclass
class Session:
    """A loaded model with its LoRA layers, tokenizer and data: everything a run, an
    evaluation or a comparison works on."""

    model: nn.Module
    tokenizer: Any
    model_path: Path
    model_config: dict
    splits: dict[str, TokenizedSplit]
    lora_parameters: dict
    lora_layers: int
    head_split: HeadSplit | None
    weights_fingerprint: str
    frozen_adapter: dict | None = None
    init_adapter_config: dict | None = None
    prefix_sharing: bool = False
    pad_id: int = 0

    def collate(self, pairs: list) -> Batch:
        return collate(pairs, self.pad_id, shared_prompt=self.prefix_sharing)


def open_session(
    config: TrainConfig,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    adapter_path: str | None = None,
) -> Session:
    """Load the model, apply LoRA (fresh, from --init-adapter, or a trained adapter to
    evaluate) and read the data. All user errors surface here, before any training."""
    if not config.model:
        raise UserError("no model given: pass --model (a Hugging Face id or a local folder)")
    if config.data is None:
        raise UserError("no data given: pass --data (a folder with train.jsonl, or a .jsonl file)")
    model, tokenizer, path, model_config = load_model(
        config.model, config.quantize, config.trust_remote_code
    )
    data = load_splits(config.data, tokenizer, config.max_length, config.fields, splits)
    if "train" in splits and "train" not in data:
        raise UserError(f"{config.data}: no train split (train.jsonl)")
    mx.random.seed(config.seed)
    frozen = None
    init_config = None
    fingerprint_parts = [model_fingerprint(path, reference.cache_dir()), f"q{config.quantize}"]
    if adapter_path or config.init_adapter:
        source = adapter_path or config.init_adapter
        init_config = load_adapter_into(model, source)
        lora_parameters = dict(init_config["lora_parameters"])
        layers = int(init_config["num_layers"])
        if config.init_adapter and not adapter_path:
            _check_lora_matches(config, lora_parameters, layers, source)
            lora_parameters["dropout"] = config.lora_dropout
            _set_dropout(model, config.lora_dropout)
            frozen = snapshot_adapter(model)
            fingerprint_parts.append(
                fingerprint_files(sorted(Path(source).expanduser().glob("adapter*")))
            )
    else:
        layers = config.lora_layers or num_layers(model)
        lora_parameters = apply_lora(
            model,
            config.lora_rank,
            config.lora_scale,
            config.lora_dropout,
            layers,
            config.lora_keys,
        )
    mx.eval(model.parameters())
    head_split = find_head_split(model)
    sharing = config.prefix_sharing and supports_prefix_sharing(model, head_split)
    return Session(
        model=model,
        tokenizer=tokenizer,
        model_path=path,
        model_config=model_config,
        splits=data,
        lora_parameters=lora_parameters,
        lora_layers=layers,
        head_split=head_split,
        weights_fingerprint="|".join(fingerprint_parts),
        frozen_adapter=frozen,
        init_adapter_config=init_config,
        prefix_sharing=sharing,
        pad_id=pad_token_id(tokenizer),
    )


def _check_lora_matches(config: TrainConfig, params: dict, layers: int, source: str) -> None:
    defaults = TrainConfig()
    conflicts = []
    for key, value in (("lora_rank", params["rank"]), ("lora_scale", params["scale"])):
        given = getattr(config, key)
        if given != getattr(defaults, key) and given != value:
            conflicts.append(f"'{key}' is {given} but the init adapter has {value}")
    if config.lora_layers is not None and config.lora_layers != layers:
        conflicts.append(f"'lora_layers' is {config.lora_layers} but the init adapter has {layers}")
    if config.lora_keys and config.lora_keys != params.get("keys"):
        conflicts.append(f"'lora_keys' differ from the init adapter's {params.get('keys')}")
    if conflicts:
        raise UserError(
            f"{source}: training continues this adapter, so its LoRA shape is fixed", conflicts
        )


def _set_dropout(model: nn.Module, p: float) -> None:
    for _, module in model.named_modules():
        if hasattr(module, "lora_a") and hasattr(module, "dropout"):
            module.dropout = nn.Dropout(p)


# ---------------------------------------------------------------------------------------------
# Log-probs of a batch


def batch_arrays(batch: Batch) -> tuple[mx.array, ...]:
    """The model inputs of the batch's layout: 3 arrays for rows, 4 for a shared prompt."""
    return tuple(mx.array(a) for a in batch.model_inputs())


def rows_logps(session: Session, *inputs: mx.array) -> mx.array:
    """Summed response log-probs of the 2B rows, in whichever layout the batch has."""
    if len(inputs) == 4:
        return shared_prompt_logps(session.model, *inputs, session.head_split)
    return response_logps(session.model, *inputs, session.head_split)


def reference_rows_logps(session: Session, *inputs: mx.array) -> mx.array:
    with reference_mode(session.model, session.frozen_adapter):
        return mx.stop_gradient(rows_logps(session, *inputs))


def compute_reference(
    session: Session, split: TokenizedSplit
) -> Callable[[list[int]], tuple[np.ndarray, np.ndarray]]:
    def compute(positions: list[int]) -> tuple[np.ndarray, np.ndarray]:
        batch = session.collate([split.pairs[i] for i in positions])
        rows = reference_rows_logps(session, *batch_arrays(batch))
        mx.eval(rows)
        rows = np.array(rows)
        return rows[: len(positions)], rows[len(positions) :]

    return compute


def pad_token_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = tokenizer.eos_token_id
    return int(pad or 0)


def response_token_counts(batch: Batch) -> tuple[mx.array, mx.array]:
    counts = batch.response_mask.sum(axis=1)
    n = batch.num_pairs
    return mx.array(counts[:n]), mx.array(counts[n:])


# ---------------------------------------------------------------------------------------------
# Evaluation


def evaluate_split(
    session: Session,
    split: TokenizedSplit,
    config: TrainConfig,
    reference_logps: tuple[np.ndarray, np.ndarray] | None = None,
    per_pair: bool = False,
) -> dict[str, Any]:
    """Preference metrics over a whole split (means over pairs). With per_pair, also the
    per-pair log-probs and rewards (for `mlx-dpo eval --output`)."""
    settings = loss_settings(config)
    policy = np.zeros((len(split), 2), dtype=np.float32)
    ref = np.zeros((len(split), 2), dtype=np.float32)
    tokens = np.zeros((len(split), 2), dtype=np.float32)
    for start in range(0, len(split), config.batch_size):
        positions = list(range(start, min(start + config.batch_size, len(split))))
        batch = session.collate([split.pairs[i] for i in positions])
        arrays = batch_arrays(batch)
        rows = rows_logps(session, *arrays)
        ref_rows = reference_rows_logps(session, *arrays) if reference_logps is None else None
        mx.eval(rows, ref_rows)
        n = len(positions)
        rows = np.array(rows)
        policy[positions] = np.stack([rows[:n], rows[n:]], axis=1)
        if ref_rows is not None:
            ref_rows = np.array(ref_rows)
            ref[positions] = np.stack([ref_rows[:n], ref_rows[n:]], axis=1)
        counts = batch.response_mask.sum(axis=1)
        tokens[positions] = np.stack([counts[:n], counts[n:]], axis=1)
    if reference_logps is not None:
        ref = np.stack(reference_logps, axis=1)
    logps = PairLogps(
        policy_chosen=mx.array(policy[:, 0]),
        policy_rejected=mx.array(policy[:, 1]),
        reference_chosen=mx.array(ref[:, 0]),
        reference_rejected=mx.array(ref[:, 1]),
        chosen_tokens=mx.array(tokens[:, 0]),
        rejected_tokens=mx.array(tokens[:, 1]),
    )
    loss, _ = preference_loss(config.loss, logps, settings, config.sft_weight)
    metrics = {
        "loss": loss.item(),
        **{k: v.item() for k, v in pair_metrics(logps, config.beta).items()},
    }
    metrics["pairs"] = len(split)
    if per_pair:
        metrics["per_pair"] = [
            {
                "index": i,
                "source": split.pairs[i].source,
                "policy_chosen_logp": float(policy[i, 0]),
                "policy_rejected_logp": float(policy[i, 1]),
                "reference_chosen_logp": float(ref[i, 0]),
                "reference_rejected_logp": float(ref[i, 1]),
                "reward_chosen": float(config.beta * (policy[i, 0] - ref[i, 0])),
                "reward_rejected": float(config.beta * (policy[i, 1] - ref[i, 1])),
            }
            for i in range(len(split))
        ]
    return metrics


def loss_settings(config: TrainConfig) -> LossSettings:
    return LossSettings(
        beta=config.beta,
        label_smoothing=config.label_smoothing,
        simpo_gamma=0.5 if config.simpo_gamma is None else config.simpo_gamma,
    )


def make_loss_fn(session: Session, config: TrainConfig) -> Callable[..., tuple[mx.array, mx.array]]:
    """The training objective of one batch: (mean loss, the other METRIC_NAMES stacked).
    With a live reference the reference log-probs are computed inside (LoRA switched off
    inside the traced function); otherwise they are inputs from the cache."""
    settings = loss_settings(config)
    live = config.reference == "live"

    def loss_fn(inputs, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens):
        rows = rows_logps(session, *inputs)
        n = chosen_tokens.shape[0]
        if live:
            ref_rows = reference_rows_logps(session, *inputs)
            ref_chosen, ref_rejected = ref_rows[:n], ref_rows[n:]
        logps = PairLogps(
            rows[:n], rows[n:], ref_chosen, ref_rejected, chosen_tokens, rejected_tokens
        )
        loss, _ = preference_loss(config.loss, logps, settings, config.sft_weight)
        metrics = pair_metrics(logps, config.beta)
        return loss, mx.stack([metrics[k] for k in METRIC_NAMES[1:]])

    return loss_fn


def compiled_step(
    session: Session, config: TrainConfig, optimizer: optim.Optimizer
) -> tuple[Callable, Callable]:
    """The training step, compiled once with the model's, optimizer's and RNG state explicit:
    `accumulate(grads_so_far, inputs, ...)` -> (loss, metrics, summed grads), and
    `apply(grads, count)` -> grad norm (averaged over micro-batches and ranks, clipped)."""
    model = session.model
    value_and_grad = nn.value_and_grad(model, make_loss_fn(session, config))
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def accumulate(accumulated, *batch):
        (loss, metrics), grads = value_and_grad(*batch)
        if accumulated is not None:
            grads = tree_map(lambda a, b: a + b, accumulated, grads)
        return loss, metrics, grads

    @partial(mx.compile, inputs=state, outputs=state)
    def apply(grads, count):
        grads = average_gradients(tree_map(lambda g: g / count, grads))
        if config.max_grad_norm > 0:
            grads, grad_norm = optim.clip_grad_norm(grads, config.max_grad_norm)
        else:
            grad_norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in _leaves(grads)))
        optimizer.update(model, grads)
        return grad_norm

    return accumulate, apply


# ---------------------------------------------------------------------------------------------
# Optimizer and schedule


def total_steps(config: TrainConfig, num_pairs: int, world_size: int = 1) -> int:
    if config.iters is not None:
        return config.iters
    epochs = 1.0 if config.epochs is None else config.epochs
    micro = batches_per_epoch(num_pairs, config.batch_size, world_size)
    return max(1, math.ceil(epochs * micro / config.grad_accumulation))


def build_schedule(config: TrainConfig, steps: int) -> Callable | float:
    lr = config.learning_rate
    decay_steps = max(1, steps - config.warmup)
    if config.lr_schedule == "constant":
        main = lambda _: lr  # noqa: E731
    elif config.lr_schedule == "linear":
        main = optim.linear_schedule(lr, 0.0, decay_steps)
    else:
        main = optim.cosine_decay(lr, decay_steps, 0.0)
    if config.warmup:
        warm = optim.linear_schedule(lr / max(config.warmup, 1), lr, config.warmup)
        return optim.join_schedules([warm, main], [config.warmup])
    if config.lr_schedule == "constant":
        return lr
    return main


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class RunOptions:
    run_dir: Path
    resume: bool = False
    on_line: Callable[[str], None] = print
    handle_signals: bool = True


class _StopRequested:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None

    def __call__(self, signum: int, _frame: Any) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name


def train(config: TrainConfig, options: RunOptions) -> str:
    """Run (or resume) a training run in options.run_dir. Returns the final status:
    "completed", "stopped" or "failed". User errors raise UserError before the run starts."""
    run_dir = options.run_dir
    ranks = distributed.init()
    if not ranks.is_main:
        # Only rank 0 writes the run directory and prints.
        options = RunOptions(run_dir, options.resume, lambda _line: None, options.handle_signals)
    run_dir.mkdir(parents=True, exist_ok=True)
    start_time = time.time()
    resume_from = None
    if options.resume and ranks.is_main:
        checkpoints.remove_torn_writes(run_dir)
        resume_from = checkpoints.latest_checkpoint(run_dir)
        resume_step = 0
        if resume_from is not None:
            resume_step = checkpoints.load_checkpoint(resume_from)[2]["step"]
        # Steps after the checkpoint are recomputed exactly; their events go.
        truncate_events_after(run_dir, resume_step)
    if ranks.is_main and not options.resume and not (run_dir / CONFIG_FILE).exists():
        # Events of an attempt that never got as far as a run (bad input, killed while loading).
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    writer = EventWriter(run_dir, ranks.size, enabled=ranks.is_main)
    stop = _StopRequested()
    previous_handlers = {}
    if options.handle_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous_handlers[sig] = signal.signal(sig, stop)
    state: dict[str, Any] = {
        "state": "starting",
        "step": 0,
        "total_steps": None,
        "epoch": 0.0,
        "pid": os.getpid(),
        "model": config.model,
        "last_checkpoint": None,
        "error": None,
    }

    def set_state(**changes: Any) -> None:
        state.update(changes)
        if ranks.is_main:
            write_status(run_dir, **state)

    set_state()
    try:
        session = open_session(config)
    except BaseException as err:
        message = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        writer.write(
            "run_end",
            0,
            status="failed",
            error=message,
            adapter_path=None,
            last_checkpoint=None,
            final_eval=None,
            best_eval=None,
            elapsed=time.time() - start_time,
        )
        set_state(state="failed", error=message)
        writer.close()
        raise
    # `batch_size: auto` needs the model and the data; config.yaml records the chosen batch.
    config = memory.resolve_auto_batch(session, config)
    # The block class itself is patched; it is restored when the run ends so that other runs
    # in this process (tests, notebooks) get the plain blocks back.
    restore_blocks = checkpoint_blocks(session.model) if config.grad_checkpoint else None
    try:
        return _run(
            config, options, session, writer, stop, state, set_state, resume_from, start_time, ranks
        )
    finally:
        if restore_blocks is not None:
            restore_blocks()
        restore_cache_limit()
        writer.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)


def _run(
    config: TrainConfig,
    options: RunOptions,
    session: Session,
    writer: EventWriter,
    stop: _StopRequested,
    state: dict,
    set_state: Callable[..., None],
    resume_from: Path | None,
    start_time: float,
    ranks: distributed.Ranks,
) -> str:
    run_dir = options.run_dir
    say = options.on_line
    model = session.model
    train_split = session.splits["train"]
    valid_split = session.splits.get("valid")
    steps = total_steps(config, len(train_split), ranks.size)
    micro_per_epoch = batches_per_epoch(len(train_split), config.batch_size, ranks.size)
    trainable, total_params = count_parameters(model)
    if ranks.is_main:
        save_config(config, run_dir / CONFIG_FILE)
    adapter_cfg = checkpoints.adapter_config(
        session.lora_layers,
        session.lora_parameters,
        {
            **config.to_dict(),
            "base_model": config.model,
            "init_adapter_provenance": session.init_adapter_config
            and {
                "path": str(Path(config.init_adapter).expanduser().resolve()),
                "base_model": session.init_adapter_config.get("base_model")
                or session.init_adapter_config.get("model"),
            },
        },
    )
    set_wired_limit()
    memory_plan = memory.plan_for_session(session, config)
    run_start = writer.write(
        "run_start",
        0,
        model=config.model,
        data=config.data,
        run_dir=str(run_dir),
        total_steps=steps,
        epochs=steps * config.grad_accumulation / micro_per_epoch,
        train_pairs=len(train_split),
        valid_pairs=len(valid_split) if valid_split else 0,
        test_pairs=len(session.splits["test"]) if "test" in session.splits else 0,
        batch_size=config.batch_size,
        grad_accumulation=config.grad_accumulation,
        beta=config.beta,
        loss=config.loss,
        reference=config.reference,
        prefix_sharing=session.prefix_sharing,
        trainable_parameters=trainable,
        total_parameters=total_params,
        truncated={name: split.truncation for name, split in session.splits.items()},
        resumed_from=_checkpoint_step(resume_from),
        pid=os.getpid(),
        config=config.to_dict(),
        memory_plan=memory.plan_dict(memory_plan),
    )
    say(
        f"model {config.model}: {total_params / 1e6:.1f}M parameters, "
        f"{trainable / 1e6:.3f}M trainable (LoRA rank {session.lora_parameters['rank']} "
        f"on {session.lora_layers} layers)"
    )
    say(
        f"data {config.data}: {len(train_split)} train pairs"
        + (f", {len(valid_split)} valid" if valid_split else "")
        + f"; {steps} steps"
    )
    if config.prefix_sharing and not session.prefix_sharing:
        say(
            "prefix sharing off (this architecture's cache fails the check): each row computes "
            "its own prompt"
        )
    for line in memory.summary_lines(memory_plan):
        say(line)
    if memory_plan.verdict == "will not fit":
        message = (
            f"the memory plan ({memory.format_size(memory_plan.estimate.total)}) does not fit "
            f"in {memory.format_size(memory_plan.limit)}; the run stops if its peak passes "
            f"{memory.GUARD_FRACTION:.0%} of that (see mlx-dpo train --plan)"
        )
        writer.write("log", 0, level="warning", message=message)
    health = HealthMonitor.from_run_start(run_start, thresholds_from_dict(config.health))
    if resume_from is not None:
        # Rebuild the checks' windows from the kept stream; its findings are already written.
        for event in read_events(run_dir):
            health.observe(event)
    findings: list[dict] = []

    def observe(event: dict) -> None:
        """Run health checks on an event; an error-level finding stops the run."""
        for finding in health.observe(event):
            report_finding(finding)

    health_error: list[str] = []

    def report_finding(finding: dict) -> None:
        findings.append(finding)
        fields = {k: v for k, v in finding.items() if k != "step"}
        writer.write("health", finding.get("step", state["step"]), **fields)
        say(
            f"health {finding['severity']}: {finding['message']} Suggestion: {finding['suggestion']}"
        )
        if finding["severity"] == "error":
            health_error.append(finding["message"])

    def check_failures(local_failure: str | None = None) -> None:
        """Stop every rank together when one of them (or a health check) fails."""
        failure = local_failure or (health_error[0] if health_error else None)
        if ranks.any(failure is not None):
            raise TrainingFailed(failure or "another rank of this distributed run failed")

    if resume_from is None:
        chosen_lengths = np.array([len(p.chosen_ids) for p in train_split.pairs])
        rejected_lengths = np.array([len(p.rejected_ids) for p in train_split.pairs])
        for finding in health.length_bias(
            float((chosen_lengths > rejected_lengths).mean()),
            float(chosen_lengths.mean()),
            float(rejected_lengths.mean()),
            len(train_split),
        ):
            report_finding(finding)
    for name, split in session.splits.items():
        cut = split.truncation
        if cut.get("pairs"):
            message = (
                f"{name}: {cut['pairs']} pair(s) longer than max_length {config.max_length} were "
                f"cut ({cut['prompt']} prompt(s) from the left, {cut['response']} response(s) "
                "from the right)"
            )
            writer.write("log", 0, level="warning", message=message)
            say(f"warning: {message}")
        if cut.get("prefix_mismatch"):
            message = (
                f"{name}: for {cut['prefix_mismatch']} pair(s) the chat template's prompt is not a "
                "prefix of prompt + response; split at the longest common prefix"
            )
            writer.write("log", 0, level="warning", message=message)
            say(f"warning: {message}")

    # Reference log-probs, once, from the on-disk cache when possible.
    cached_reference: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if config.reference == "cached":
        set_state(state="computing_reference", total_steps=steps)
        for name, split in (("train", train_split), ("valid", valid_split)):
            if split is None:
                continue

            def progress(done: int, total: int, cached: bool, name: str = name) -> None:
                writer.write("reference", 0, split=name, done=done, total=total, cached=cached)

            tic = time.perf_counter()
            cached_reference[name] = reference.reference_logps(
                reference.cache_key(session.weights_fingerprint, split),
                split,
                compute_reference(session, split),
                config.batch_size,
                progress,
                ranks=ranks,
            )
            say(
                f"reference log-probs for {name}: {len(split)} pairs in {time.perf_counter() - tic:.1f}s"
            )

    # Optimizer, compiled step.
    schedule = build_schedule(config, steps)
    # Bias-corrected like PyTorch's AdamW, so learning rates mean what they mean in TRL.
    optimizer = optim.AdamW(
        learning_rate=schedule, weight_decay=config.weight_decay, bias_correction=True
    )
    optimizer.init(model.trainable_parameters())
    start_step = 0
    best_eval: dict | None = None
    if resume_from is not None:
        weights, optimizer_state, saved = checkpoints.load_checkpoint(resume_from)
        model.load_weights(list(weights.items()), strict=False)
        optimizer.state = optimizer_state
        start_step = int(saved["step"])
        best_eval = saved.get("best_eval")
        state["last_checkpoint"] = str(resume_from)
        writer.write("log", start_step, level="info", message=f"resumed from {resume_from}")
        say(f"resumed from {resume_from} at step {start_step}")
    if options.resume and ranks.size > 1:
        # Other ranks may not see rank 0's run directory: rank 0 sends what it loaded.
        start_step = int(ranks.sum(np.array([start_step if ranks.is_main else 0]))[0])
        if start_step:
            model.load_weights(list(ranks.broadcast(adapter_weights(model)).items()), strict=False)
            optimizer.state = tree_unflatten(
                list(ranks.broadcast(dict(tree_flatten(optimizer.state))).items())
            )
    mx.eval(model.parameters(), optimizer.state)

    live = config.reference == "live"
    accumulate, apply = compiled_step(session, config, optimizer)

    def micro_batch(k: int) -> tuple[Batch, int]:
        epoch, position = divmod(k, micro_per_epoch)
        order = epoch_cache.get(epoch)
        if order is None:
            epoch_cache.clear()
            order = epoch_cache[epoch] = epoch_batches(
                train_split.pairs,
                config.batch_size,
                config.seed,
                epoch,
                True,
                ranks.rank,
                ranks.size,
            )
        return session.collate([train_split.pairs[i] for i in order[position]]), epoch

    epoch_cache: dict[int, list[list[int]]] = {}

    def run_eval(step: int) -> dict | None:
        nonlocal best_eval
        if valid_split is None or len(valid_split) == 0:
            return None
        set_state(state="evaluating")
        writer.write("state", step, state="evaluating")
        model.eval()
        result = evaluate_split(session, valid_split, config, cached_reference.get("valid"))
        model.train()
        observe(writer.write("eval", step, split="valid", **result))
        if best_eval is None or result["loss"] < best_eval["loss"]:
            best_eval = {"step": step, **result}
        say(
            f"eval  step {step}: loss {result['loss']:.4f}, accuracy "
            f"{result['rewards/accuracies']:.3f}, margin {result['rewards/margins']:.3f}"
        )
        set_state(state="training")
        writer.write("state", step, state="training")
        return result

    def save(step: int) -> Path | None:
        if not ranks.is_main:
            return None
        weights = adapter_weights(model)
        try:
            checkpoints.save_adapters(run_dir, weights, adapter_cfg)
            path = checkpoints.save_checkpoint(
                run_dir,
                step,
                weights,
                optimizer.state,
                adapter_cfg,
                {"best_eval": best_eval, "seed": config.seed},
            )
        except Exception as err:
            if resource_failure(err) is None:
                raise
            raise TrainingFailed(_failure_message(err, f"saving step {step}", state)) from None
        writer.write("checkpoint", step, path=str(path))
        writer.sync()
        state["last_checkpoint"] = str(path)
        return path

    control = ControlReader(run_dir)
    memory.start_run_memory(memory_plan)
    model.train()
    set_state(state="training", step=start_step, total_steps=steps)
    status = "completed"
    error = None
    final_eval = None
    step = start_step
    step_times: list[float] = []
    last_report = time.time()
    report_every = max(1, steps // 20)
    paused = False
    try:
        while step < steps:
            # Commands from the dashboard, between optimizer steps.
            for command in control.poll():
                if command == "pause" and not paused:
                    paused = True
                    writer.write("state", step, state="paused")
                    set_state(state="paused")
                    say(f"paused at step {step}")
                elif command == "resume" and paused:
                    paused = False
                    writer.write("state", step, state="resumed")
                    set_state(state="training")
                    say("resumed")
                elif command == "checkpoint":
                    say(f"checkpoint saved: {save(step)}")
                elif command == "stop":
                    stop.requested = True
            if paused:
                time.sleep(0.2)
                continue
            if ranks.any(stop.requested):
                stop.requested = True
                break

            tic = time.perf_counter()
            grads = None
            metric_sums = np.zeros(len(METRIC_NAMES), dtype=np.float64)
            pairs = tokens = 0
            indices: list[int] = []
            local_failure = None
            for micro in range(config.grad_accumulation):
                k = step * config.grad_accumulation + micro
                batch, epoch = micro_batch(k)
                # Dropout noise is a function of the step, so a resumed run draws the same.
                mx.random.seed(config.seed * 1_000_003 + k)
                arrays = batch_arrays(batch)
                chosen_tokens, rejected_tokens = response_token_counts(batch)
                if live:
                    ref_chosen = ref_rejected = mx.zeros(batch.num_pairs)
                else:
                    ref_c, ref_r = cached_reference["train"]
                    ref_chosen = mx.array(ref_c[batch.pair_indices])
                    ref_rejected = mx.array(ref_r[batch.pair_indices])
                loss, metrics, grads = accumulate(
                    grads, arrays, ref_chosen, ref_rejected, chosen_tokens, rejected_tokens
                )
                mx.eval(loss, metrics, grads)
                loss_value = loss.item()
                indices += [train_split.pairs[i].index for i in batch.pair_indices]
                if not math.isfinite(loss_value):
                    local_failure = (
                        f"non-finite loss at step {step + 1} (pairs "
                        f"{_pair_list(batch, train_split)}); try a lower learning rate or check "
                        "these pairs"
                    )
                    break
                metric_sums += batch.num_pairs * np.array([loss_value, *np.array(metrics).tolist()])
                pairs += batch.num_pairs
                tokens += batch.num_tokens
            check_failures(local_failure)
            totals = ranks.sum(np.array([*metric_sums, pairs, tokens], dtype=np.float64))
            metric_sums, pairs, tokens = totals[:-2], int(totals[-2]), int(totals[-1])
            grad_norm = apply(grads, config.grad_accumulation)
            mx.eval(model.state, optimizer.state, grad_norm)
            grad_norm_value = grad_norm.item()
            if not math.isfinite(grad_norm_value):
                raise TrainingFailed(
                    f"non-finite gradients at step {step + 1} (pairs {indices[:16]}); the "
                    "adapters of the last checkpoint are kept; try a lower learning rate"
                )
            step += 1
            elapsed_step = time.perf_counter() - tic
            step_times.append(elapsed_step)
            recent = float(np.mean(step_times[-20:]))
            eta = recent * (steps - step)
            learning_rate = float(schedule(step - 1)) if callable(schedule) else float(schedule)
            epoch_progress = step * config.grad_accumulation / micro_per_epoch
            values = dict(zip(METRIC_NAMES, (metric_sums / pairs).tolist(), strict=True))
            step_event = writer.write(
                "step",
                step,
                epoch=epoch_progress,
                **values,
                grad_norm=grad_norm_value,
                learning_rate=learning_rate,
                tokens_per_second=tokens / elapsed_step,
                pairs_per_second=pairs / elapsed_step,
                peak_memory_gb=peak_memory_gb(),
                elapsed=time.time() - start_time,
                eta=eta,
            )
            set_state(step=step, epoch=epoch_progress)
            observe(step_event)
            check_failures()
            memory_problem = memory.over_limit_message(mx.get_peak_memory(), memory_plan)
            if memory_problem and not stop.requested:
                # Stop between steps with a checkpoint rather than be killed by the system.
                writer.write("log", step, level="error", message=memory_problem)
                say(f"error: {memory_problem}")
                stop.requested, stop.signal_name = True, "memory limit"
            now = time.time()
            if step % report_every == 0 or step == steps or now - last_report >= REPORT_SECONDS:
                last_report = now
                say(
                    f"step {step}/{steps} | loss {values['loss']:.4f} | accuracy "
                    f"{values['rewards/accuracies']:.2f} | margin {values['rewards/margins']:.3f} | "
                    f"{pairs / elapsed_step:.2f} pairs/s, {tokens / elapsed_step:.0f} tok/s | "
                    f"peak {peak_memory_gb():.2f} GB | ETA {format_duration(eta)}"
                )
            if config.eval_every and step % config.eval_every == 0 and step < steps:
                run_eval(step)
                check_failures()
            if config.save_every and step % config.save_every == 0 and step < steps:
                save(step)
        if not stop.requested and valid_split:
            final_eval = run_eval(step)
            check_failures()
    except TrainingFailed as err:
        status, error = "failed", str(err)
    except Exception as err:
        status, error = "failed", _failure_message(err, f"step {step + 1}", state)
        if resource_failure(err) is None:  # a bug: recorded, then the traceback
            _finish(
                writer, set_state, run_dir, step, status, error, state, None, best_eval, start_time
            )
            raise
    if status == "failed":
        say(f"error: {error}")
        _finish(writer, set_state, run_dir, step, status, error, state, None, best_eval, start_time)
        return status

    try:
        if stop.requested:
            status = "stopped"
            writer.write("state", step, state="stopping")
            set_state(state="stopping")
            reason = f" ({stop.signal_name})" if stop.signal_name else ""
            say(f"stopping after step {step}{reason}; saving")
        path = save(step)
    except Exception as err:
        # save() says a full disk as TrainingFailed; anything else here is a bug.
        error = str(err) if isinstance(err, TrainingFailed) else f"{type(err).__name__}: {err}"
        say(f"error: {error}")
        _finish(
            writer, set_state, run_dir, step, "failed", error, state, None, best_eval, start_time
        )
        if not isinstance(err, TrainingFailed):
            raise
        return "failed"
    say(f"adapters saved to {run_dir} (checkpoint {path.name})")
    say(f"run health: {summarize(findings)}")
    _finish(
        writer, set_state, run_dir, step, status, None, state, final_eval, best_eval, start_time
    )
    return status


def _leaves(tree: Any) -> list[mx.array]:
    return [v for _, v in tree_flatten(tree)]


def _checkpoint_step(path: Path | None) -> int | None:
    return None if path is None else int(path.name.split("-")[1])


def _pair_list(batch: Batch, split: TokenizedSplit) -> str:
    return ", ".join(split.pairs[i].source for i in batch.pair_indices[:8])


def _failure_message(err: Exception, doing: str, state: dict) -> str:
    """A resource failure said for a person, with what is safe on disk; a bug as it is."""
    reason = resource_failure(err)
    if reason is None:
        return f"{type(err).__name__}: {err}"
    kept = state.get("last_checkpoint")
    return f"{doing}: {reason}. " + (
        f"Last good checkpoint: {kept}" if kept else "No checkpoint was saved yet"
    )


def _finish(
    writer, set_state, run_dir, step, status, error, state, final_eval, best_eval, start_time
):
    try:
        writer.write(
            "run_end",
            step,
            status=status,
            error=error,
            adapter_path=str(run_dir),
            last_checkpoint=state.get("last_checkpoint"),
            final_eval=final_eval,
            best_eval=best_eval,
            elapsed=time.time() - start_time,
        )
        writer.sync()
        set_state(state=RUN_END_STATES[status], step=step, error=error)
    except OSError:
        # A full disk cannot take the run_end line either; the message on the console says
        # what happened, and the dashboard sees the trainer's process gone.
        pass
