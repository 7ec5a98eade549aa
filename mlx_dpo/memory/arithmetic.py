"""The memory plan's arithmetic: shapes -> estimate -> plan, and the plan as text and as the
`run_start` event's dict. Pure: numbers in, numbers out, testable with hand-computed values.

The estimate counts MLX's own allocations (what `mx.get_peak_memory()` measures): the base
weights at their loaded precision, the LoRA parameters, AdamW's state, the gradients, the
activations of the longest batch and the LM-head buffers. The Python process around it (the
interpreter, tokenizers, libraries) is not counted. The activation formula is fitted to
measurements of the real training step; docs/memory.md has the formula and the table.

The memory package has three parts: this one; memory/session.py reads the shapes from a
loaded session; memory/guard.py applies a plan to a run (`--batch-size auto`, the cache limit,
the guard that stops a run near the limit).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlx_dpo.batching import round_up
from mlx_dpo.formatting import GB, format_size

# Verdicts: a plan above FITS_FRACTION of the limit is "tight", above GUARD_FRACTION it "will
# not fit", and a run whose measured peak passes GUARD_FRACTION is stopped with a checkpoint.
FITS_FRACTION = 0.7
GUARD_FRACTION = 0.9

# mlx-lm's BatchKVCache grows in steps of this many positions; with a shared prompt the keys
# and values held for the backward pass are whole steps.
KV_CACHE_STEP = 256

# AdamW keeps two moments per trainable parameter, in the parameters' dtype.
ADAM_MOMENTS = 2

# Fitted coefficients (docs/memory.md): "copies" of an array of the named size.
# Kept per layer for the backward pass, per token:
SAVED_HIDDEN_F32 = 5.5  # × hidden × 4 bytes (LoRA's float32 branch makes these float32)
SAVED_INTERMEDIATE = 5.1  # × intermediate × activation bytes (gate, up, their product...)
SAVED_KV = 2.5  # × kv heads × head dim × activation bytes, per key position held
SAVED_ATTENTION = 1.5  # × heads × key positions × activation bytes (attention weights)
# One layer's backward working set (cotangents are float32: LoRA's branch promotes them):
WORKING_HIDDEN_F32 = 14.0  # × hidden × 4 bytes
WORKING_INTERMEDIATE_F32 = 4.5  # × intermediate × 4 bytes
# With gradient checkpointing: each layer keeps its inputs; one layer is recomputed at a time.
CHECKPOINT_INPUTS = 2.7  # × hidden × activation bytes, per layer and token
CHECKPOINT_ATTENTION_F32 = 1.3  # × heads × key positions × 4 bytes, the recomputed layer
# A live reference adds one layer's forward attention weights (float32 softmax).
LIVE_REFERENCE_ATTENTION_F32 = 0.63
# The LM head, per row and response position, × vocab × 4 bytes (float32 logits): kept from
# the forward pass through the whole backward pass, and the extra its own backward needs,
# which reuses the layers' working set (the two never coincide).
LOGITS_KEPT_F32 = 1.6
LOGITS_BACKWARD_F32 = 1.4
# A model that computes in 16 bits also holds its logits (and their gradient) in its own
# dtype beside the float32 ones: × vocab × activation bytes.
LOGITS_MODEL_DTYPE = 2.0
# A forward-only pass (the reference precompute, evaluation) keeps nothing for a backward
# pass: one layer's working set at a time, the keys and values its KV cache holds for every
# layer (prefix sharing), and one chunk of the head's logits. Per position:
FORWARD_HIDDEN = 8.0  # × hidden × activation bytes (residual, norms, q/k/v/o outputs)
FORWARD_INTERMEDIATE = 3.0  # × intermediate × activation bytes (gate, up, their product)
FORWARD_ATTENTION_F32 = 2.0  # × heads × key positions × 4 bytes (scores and their softmax)
FORWARD_LOGITS_F32 = 3.0  # × the logits chunk (logits, their exponentials, the result)
# Largest float32 logits block of one head chunk (logprobs.LOGITS_BUDGET_BYTES: the
# arithmetic stays free of MLX, so the number is repeated here and a test keeps them equal).
LOGITS_CHUNK_BYTES = 1 << 28
# Pairs a forward-only batch holds at most, whatever the memory allows: taller matrices gain
# nothing measurable past this (SmolLM2-135M on a CPU: 4, 16 and 64 pairs a batch cost the
# same per pair), and a stop waits for the batch in flight.
FORWARD_BATCH_MAX = 16


# ---------------------------------------------------------------------------------------------
# Arithmetic on shapes


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a loaded model (with its LoRA layers)."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    activation_bytes: int  # bytes of one activation value (the model's compute dtype)
    base_weight_bytes: int  # the loaded base weights, quantized ones at their packed size
    lora_bytes: int  # the trainable LoRA parameters
    head_split: bool = True  # only response positions go through the LM head
    frozen_adapter_bytes: int = 0  # the --init-adapter copy the reference uses
    # The base weights if quantized to 4 bits (None where --quantize 4 does not apply).
    base_weight_bytes_4bit: int | None = None


@dataclass(frozen=True)
class Lengths:
    """Token counts of the training pairs (after cutting to max_length)."""

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray

    @property
    def pairs(self) -> int:
        return len(self.prompt)


@dataclass(frozen=True)
class Settings:
    """The choices of a run that change its memory."""

    batch_size: int
    grad_accumulation: int = 1
    grad_checkpoint: bool = False
    live_reference: bool = False
    shared_prompt: bool = False  # prefix sharing
    max_length: int = 1024
    quantize: int | None = None
    reference_pairs: int = 0  # pairs whose reference log-probs are cached (train + valid)


@dataclass(frozen=True)
class BatchShape:
    """The longest batch, as collate lays it out.

    Rows layout: 2B rows of `length` tokens (inputs are length - 1). Shared prompt: B prompt
    rows of `prompt` columns, then 2B response rows of `window` columns."""

    pairs: int
    length: int
    window: int
    prompt: int = 0
    shared_prompt: bool = False

    @property
    def rows(self) -> int:
        return 2 * self.pairs

    def passes(self) -> list[tuple[int, int, int, int]]:
        """Backbone passes as (rows, query positions, key positions, key positions held)."""
        if self.shared_prompt:
            p, w = self.prompt, self.window
            return [
                (self.pairs, p, p, round_up(p, KV_CACHE_STEP)),
                (self.rows, w, p + w, p + round_up(w, KV_CACHE_STEP)),
            ]
        t = self.length - 1
        return [(self.rows, t, t, t)]


@dataclass(frozen=True)
class Estimate:
    settings: Settings
    batch: BatchShape
    components: dict[str, int]  # name -> bytes, in COMPONENTS order
    activations_checkpointed: int  # the activations with gradient checkpointing

    @property
    def total(self) -> int:
        return sum(self.components.values())


COMPONENTS = (
    "base weights",
    "LoRA parameters",
    "optimizer state",
    "gradients",
    "activations",
    "logits",
    "reference",
)


def cut_lengths(lengths: Lengths, max_length: int) -> Lengths:
    """The lengths after cutting to a shorter max_length, as data.truncate cuts: the prompt
    from the left first (keeping one token), then the responses from the right."""
    prompt = lengths.prompt.astype(np.int64)
    longest = np.maximum(lengths.chosen, lengths.rejected)
    excess = prompt + longest - max_length
    prompt_cut = np.clip(excess, 0, np.maximum(prompt - 1, 0))
    prompt = prompt - prompt_cut
    keep = max_length - prompt
    still_over = (excess - prompt_cut) > 0
    chosen = np.where(still_over, np.minimum(lengths.chosen, keep), lengths.chosen)
    rejected = np.where(still_over, np.minimum(lengths.rejected, keep), lengths.rejected)
    return Lengths(prompt, chosen, rejected)


def longest_batch(lengths: Lengths, settings: Settings) -> BatchShape:
    """The largest padded batch any B pairs of the data can make (collate's padding)."""
    if settings.max_length < _longest_pair(lengths):
        lengths = cut_lengths(lengths, settings.max_length)
    pairs = min(settings.batch_size, max(lengths.pairs, 1))
    longest_response = int(max(lengths.chosen.max(initial=1), lengths.rejected.max(initial=1)))
    shared = settings.shared_prompt
    return BatchShape(
        pairs=pairs,
        length=round_up(_longest_pair(lengths)) + 1,
        window=round_up(longest_response, 16),
        prompt=round_up(int(lengths.prompt.max(initial=1)), 16) if shared else 0,
        shared_prompt=shared,
    )


def _longest_pair(lengths: Lengths) -> int:
    longest = lengths.prompt + np.maximum(lengths.chosen, lengths.rejected)
    return int(longest.max(initial=1))


def layer_saved_bytes(model: ModelShape, rows: int, query: int, keys: int, held: int) -> float:
    """Bytes one layer keeps for the backward pass of one backbone pass."""
    s = model.activation_bytes
    per_token = SAVED_HIDDEN_F32 * model.hidden * 4 + SAVED_INTERMEDIATE * model.intermediate * s
    return (
        rows * query * per_token
        + SAVED_KV * rows * held * model.kv_heads * model.head_dim * s
        + SAVED_ATTENTION * rows * model.heads * query * keys * s
    )


def layer_working_bytes(model: ModelShape, rows: int, query: int) -> float:
    """Bytes of one layer's backward working set (float32 cotangents)."""
    per_token = WORKING_HIDDEN_F32 * model.hidden + WORKING_INTERMEDIATE_F32 * model.intermediate
    return rows * query * per_token * 4


def activation_parts(model: ModelShape, batch: BatchShape, checkpoint: bool) -> tuple[float, float]:
    """(kept through the backward pass, one layer's transient working set) in bytes."""
    passes = batch.passes()
    working = max(layer_working_bytes(model, rows, query) for rows, query, _, _ in passes)
    if not checkpoint:
        saved = sum(layer_saved_bytes(model, *p) for p in passes)
        return model.layers * saved, working
    # Each layer keeps its input (and, with a KV cache, the keys and values it hands on); the
    # backward pass recomputes one layer at a time.
    inputs = sum(rows * query for rows, query, _, _ in passes) * model.hidden
    attention = max(rows * model.heads * query * keys for rows, query, keys, _ in passes)
    kept = CHECKPOINT_INPUTS * model.layers * inputs * model.activation_bytes
    if batch.shared_prompt:
        cached = sum(2 * rows * held for rows, _, _, held in passes)
        kept += model.layers * cached * model.kv_heads * model.head_dim * model.activation_bytes
    recomputed = max(layer_saved_bytes(model, *p) for p in passes)
    return kept, recomputed + working + CHECKPOINT_ATTENTION_F32 * attention * 4


def head_positions(model: ModelShape, batch: BatchShape) -> int:
    """Positions a row sends through the LM head: the response window with a head split,
    every position without one. logprobs.py goes through the head in chunks, but the
    measured peak does not go down with them: MLX evaluates the backward pass of every
    chunk in one graph, so the estimate counts all positions."""
    return batch.window if model.head_split else batch.length - 1


def logits_bytes(model: ModelShape, batch: BatchShape, layer_transient: float) -> int:
    values = batch.rows * head_positions(model, batch) * model.vocab
    full = values * 4
    backward = max(0.0, LOGITS_BACKWARD_F32 * full - layer_transient)
    own_dtype = (
        0 if model.activation_bytes == 4 else LOGITS_MODEL_DTYPE * values * model.activation_bytes
    )
    return round(LOGITS_KEPT_F32 * full + own_dtype + backward)


def estimate_memory(model: ModelShape, lengths: Lengths, settings: Settings) -> Estimate:
    """Peak MLX memory of a training step on the longest batch, by component."""
    batch = longest_batch(lengths, settings)
    kept, transient = activation_parts(model, batch, settings.grad_checkpoint)
    base = model.base_weight_bytes
    if settings.quantize == 4 and model.base_weight_bytes_4bit is not None:
        base = model.base_weight_bytes_4bit
    # The accumulated gradients live beside the new ones when accumulating.
    gradient_copies = 2 if settings.grad_accumulation > 1 else 1
    if settings.live_reference:
        attention = max(r * model.heads * q * k for r, q, k, _ in batch.passes())
        reference = round(LIVE_REFERENCE_ATTENTION_F32 * attention * 4)
    else:
        # Two float32 log-probs a pair, kept on the host (counted, though not MLX memory).
        reference = settings.reference_pairs * 2 * 4
    components = {
        "base weights": base,
        "LoRA parameters": model.lora_bytes,
        "optimizer state": ADAM_MOMENTS * model.lora_bytes,
        "gradients": gradient_copies * model.lora_bytes,
        "activations": round(kept + transient),
        "logits": logits_bytes(model, batch, transient),
        "reference": reference + model.frozen_adapter_bytes,
    }
    with_checkpoints = dataclasses.replace(settings, grad_checkpoint=True)
    checkpointed = sum(activation_parts(model, longest_batch(lengths, with_checkpoints), True))
    return Estimate(settings, batch, components, round(checkpointed))


def verdict(total: float, limit: float) -> str:
    if limit <= 0:
        return "fits"
    if total <= FITS_FRACTION * limit:
        return "fits"
    if total <= GUARD_FRACTION * limit:
        return "tight"
    return "will not fit"


@dataclass(frozen=True)
class Suggestion:
    change: str  # the flags, e.g. "--batch-size 2 --grad-accumulation 2"
    estimate: Estimate
    note: str = ""


@dataclass(frozen=True)
class MemoryPlan:
    estimate: Estimate
    limit: int
    limit_source: str
    suggestions: list[Suggestion] = field(default_factory=list)
    # The forward-only passes (reference precompute, evaluation): pairs a batch, and their
    # estimated peak, never above the training step's.
    forward_batch: int = 0
    forward_bytes: int = 0

    @property
    def verdict(self) -> str:
        return verdict(self.estimate.total, self.limit)


def _divisors_below(n: int, below: int) -> list[int]:
    return [b for b in range(min(n, below - 1), 0, -1) if n % b == 0]


def plan_memory(
    model: ModelShape,
    lengths: Lengths,
    settings: Settings,
    limit: int,
    limit_source: str = "",
) -> MemoryPlan:
    """The estimate, compared with the limit; when it is not a plain fit, the cheapest
    changes that make it fit, each with its new estimate."""
    estimate = estimate_memory(model, lengths, settings)
    batch = forward_batch_size(model, lengths, settings, estimate.total)
    plan = MemoryPlan(
        estimate,
        limit,
        limit_source,
        forward_batch=batch,
        forward_bytes=forward_memory(model, lengths, settings, batch),
    )
    if plan.verdict == "fits":
        return plan

    def fitting(candidate: Settings) -> Estimate | None:
        new = estimate_memory(model, lengths, candidate)
        return new if verdict(new.total, limit) == "fits" else None

    suggestions = []
    kinds = _changes(model, lengths, settings)
    for options in kinds:
        # The mildest option of each kind that fits (largest batch, longest max_length).
        for change, candidate, note in options:
            new = fitting(candidate)
            if new is not None:
                suggestions.append(Suggestion(change, new, note))
                break
    if not suggestions:
        # No single change is enough: take them together, the strongest option of each
        # kind in turn, until the run fits.
        combined, flags = settings, []
        for options in kinds:
            found = None
            for change, candidate, note in options:
                new = fitting(_merge(combined, candidate, settings))
                if new is not None:
                    found = Suggestion(" ".join([*flags, change]), new, note)
                    break
            if found is not None:
                suggestions.append(found)
                break
            if options:
                change, candidate, _ = options[-1]
                combined = _merge(combined, candidate, settings)
                flags.append(change)
    return dataclasses.replace(plan, suggestions=suggestions)


def _merge(combined: Settings, candidate: Settings, original: Settings) -> Settings:
    """`combined` with what `candidate` changed relative to `original`."""
    changes = {
        f.name: getattr(candidate, f.name)
        for f in dataclasses.fields(Settings)
        if getattr(candidate, f.name) != getattr(original, f.name)
    }
    return dataclasses.replace(combined, **changes)


Change = tuple[str, Settings, str]  # (flags, settings, note)


def _changes(model: ModelShape, lengths: Lengths, settings: Settings) -> list[list[Change]]:
    """The kinds of change, cheapest first, each as its options from mildest to strongest:
    the same training with less memory (smaller batches with accumulation, checkpointing),
    then a 4-bit base (different numerics), then shorter sequences (which cut data)."""
    effective = settings.batch_size * settings.grad_accumulation
    batches = [
        (
            f"--batch-size {b} --grad-accumulation {effective // b}",
            dataclasses.replace(settings, batch_size=b, grad_accumulation=effective // b),
            f"same effective batch of {effective}",
        )
        for b in _divisors_below(effective, settings.batch_size)
    ]
    checkpoint = [
        ("--grad-checkpoint", dataclasses.replace(settings, grad_checkpoint=True), "slower steps")
    ]
    quantize = [("--quantize 4", dataclasses.replace(settings, quantize=4), "a 4-bit base (QLoRA)")]
    pair_lengths = lengths.prompt + np.maximum(lengths.chosen, lengths.rejected)
    top = round_up(min(_longest_pair(lengths), settings.max_length))
    shorter = [
        (
            f"--max-length {m}",
            dataclasses.replace(settings, max_length=m),
            f"cuts {int((pair_lengths > m).sum())} of {lengths.pairs} pairs",
        )
        for m in range(top - 32, 31, -32)
    ]
    return [
        batches,
        checkpoint if not settings.grad_checkpoint else [],
        quantize if settings.quantize != 4 and model.base_weight_bytes_4bit is not None else [],
        shorter,
    ]


def forward_memory(model: ModelShape, lengths: Lengths, settings: Settings, pairs: int) -> int:
    """Peak MLX memory of a forward-only pass over the longest batch of `pairs` pairs: the
    weights, one layer's working set, the keys and values a KV cache keeps for every layer
    (prefix sharing: the prompts', then the responses' rows continuing from them), and the
    head's logits, one chunk at a time."""
    batch = longest_batch(lengths, dataclasses.replace(settings, batch_size=pairs))
    s = model.activation_bytes
    kv_position = 2 * model.kv_heads * model.head_dim * s
    working = 0.0
    cached = 0.0
    for rows, query, keys, held in batch.passes():
        per_position = FORWARD_HIDDEN * model.hidden + FORWARD_INTERMEDIATE * model.intermediate
        layer = rows * query * per_position * s
        layer += FORWARD_ATTENTION_F32 * rows * model.heads * query * keys * 4
        working = max(working, layer)
        if batch.shared_prompt:
            cached += model.layers * rows * held * kv_position
    logits = batch.rows * head_positions(model, batch) * model.vocab * 4
    base = model.base_weight_bytes
    if settings.quantize == 4 and model.base_weight_bytes_4bit is not None:
        base = model.base_weight_bytes_4bit
    weights = base + model.lora_bytes + model.frozen_adapter_bytes
    return round(weights + working + cached + FORWARD_LOGITS_F32 * min(logits, LOGITS_CHUNK_BYTES))


def forward_batch_size(
    model: ModelShape, lengths: Lengths, settings: Settings, budget: float
) -> int:
    """Pairs a batch of the forward-only passes: the most, up to FORWARD_BATCH_MAX, whose
    estimated peak stays within `budget` (the training step's: those passes never need more
    memory than the run's steps); never fewer than the training batch."""
    best = settings.batch_size
    for pairs in range(settings.batch_size + 1, FORWARD_BATCH_MAX + 1):
        if pairs > max(lengths.pairs, 1):
            break
        if forward_memory(model, lengths, settings, pairs) > budget:
            break
        best = pairs
    return best


def choose_batch_size(
    model: ModelShape,
    lengths: Lengths,
    settings: Settings,
    effective_batch: int,
    limit: int,
) -> tuple[int, int]:
    """(batch size, gradient accumulation) for `--batch-size auto`: the largest batch that
    divides the effective batch and that the plan says fits; failing that, the largest
    that is tight; failing that, 1."""
    tight = None
    for batch in _divisors_below(effective_batch, effective_batch + 1):
        candidate = dataclasses.replace(
            settings, batch_size=batch, grad_accumulation=effective_batch // batch
        )
        total = estimate_memory(model, lengths, candidate).total
        result = verdict(total, limit)
        if result == "fits":
            return batch, effective_batch // batch
        if result == "tight" and tight is None:
            tight = batch
    batch = tight or 1
    return batch, effective_batch // batch


# ---------------------------------------------------------------------------------------------
# Reports


def format_plan(plan: MemoryPlan) -> list[str]:
    """The full plan, as `mlx-dpo train --plan` prints it."""
    estimate, settings, batch = plan.estimate, plan.estimate.settings, plan.estimate.batch
    if batch.shared_prompt:
        shape = (
            f"{batch.pairs} prompts of {batch.prompt} tokens, then {batch.rows} responses of "
            f"{batch.window}"
        )
    else:
        shape = f"{batch.rows} rows of {batch.length - 1} tokens"
    details = {
        "base weights": "at their loaded precision"
        + (" (4-bit)" if settings.quantize == 4 else ""),
        "LoRA parameters": "trainable",
        "optimizer state": "AdamW: 2 × LoRA",
        "gradients": "LoRA" + (" + accumulated" if settings.grad_accumulation > 1 else ""),
        "activations": f"longest batch: {shape}; "
        + (
            "gradient checkpointing on"
            if settings.grad_checkpoint
            else f"{format_size(estimate.activations_checkpointed)} with --grad-checkpoint"
        ),
        "logits": f"response positions only, {batch.window} a row",
        "reference": "live: computed in the step"
        if settings.live_reference
        else f"cached log-probs of {settings.reference_pairs} pairs (host memory)"
        if settings.reference_pairs
        else "none: the loss uses no reference model",
    }
    lines = [
        f"memory plan (MLX memory, as mx.get_peak_memory() measures it; the Python process "
        f"adds its own): batch {settings.batch_size} × {settings.grad_accumulation} "
        f"accumulation, max_length {settings.max_length}",
    ]
    for name in COMPONENTS:
        lines.append(
            f"  {name:16s} {format_size(estimate.components[name]):>10s}   {details[name]}"
        )
    lines.append(f"  {'total':16s} {format_size(estimate.total):>10s}")
    if plan.forward_batch:
        lines.append(f"  {'forward passes':16s} {format_size(plan.forward_bytes):>10s}   "
                     f"{_forward_line(plan)}")  # fmt: skip
    lines.append(_verdict_line(plan))
    lines += _suggestion_lines(plan)
    return lines


def _forward_line(plan: MemoryPlan) -> str:
    return (
        f"reference and evaluation, no gradient: {plan.forward_batch} pairs a batch "
        "(at most the step's peak)"
    )


def _verdict_line(plan: MemoryPlan) -> str:
    share = plan.estimate.total / plan.limit if plan.limit else 0.0
    return (
        f"  available {format_size(plan.limit)} ({plan.limit_source}): {plan.verdict} "
        f"({share:.0%} of it; tight above {FITS_FRACTION:.0%}, stopped above "
        f"{GUARD_FRACTION:.0%})"
    )


def _suggestion_lines(plan: MemoryPlan) -> list[str]:
    if plan.verdict == "fits":
        return []
    if not plan.suggestions:
        return [
            "  no change tried here fits it (smaller batches, checkpointing, a 4-bit base and "
            "shorter sequences, together): this model needs more memory than that"
        ]
    lines = ["  to fit:"]
    for s in plan.suggestions:
        note = f" ({s.note})" if s.note else ""
        lines.append(f"    {s.change:40s} {format_size(s.estimate.total):>10s}{note}")
    return lines


def summary_lines(plan: MemoryPlan) -> list[str]:
    """A few lines for the start of a run."""
    c = plan.estimate.components
    lora_side = c["LoRA parameters"] + c["optimizer state"] + c["gradients"]
    lines = [
        f"memory plan: {format_size(plan.estimate.total)} of {format_size(plan.limit)} "
        f"({plan.limit_source}): {plan.verdict}",
        f"  weights {format_size(c['base weights'])}, LoRA + optimizer + gradients {format_size(lora_side)}, "
        f"activations {format_size(c['activations'])}, logits {format_size(c['logits'])}",
    ]
    if plan.forward_batch:
        lines.append(f"  forward passes {format_size(plan.forward_bytes)}: {_forward_line(plan)}")
    return lines + _suggestion_lines(plan)


def plan_dict(plan: MemoryPlan) -> dict[str, Any]:
    """The plan for the `run_start` event (sizes in GB, as peak_memory_gb)."""
    estimate = plan.estimate
    batch = estimate.batch
    return {
        "total_gb": estimate.total / GB,
        "limit_gb": plan.limit / GB,
        "limit_source": plan.limit_source,
        "verdict": plan.verdict,
        "components_gb": {name: value / GB for name, value in estimate.components.items()},
        "activations_checkpointed_gb": estimate.activations_checkpointed / GB,
        "batch": {
            "pairs": batch.pairs,
            "rows": batch.rows,
            "length": batch.length,
            "window": batch.window,
            "prompt": batch.prompt,
            "shared_prompt": batch.shared_prompt,
        },
        "suggestions": [
            {"change": s.change, "total_gb": s.estimate.total / GB, "note": s.note}
            for s in plan.suggestions
        ],
        "forward": {"pairs": plan.forward_batch, "total_gb": plan.forward_bytes / GB},
    }
