"""Applying a memory plan to a run: the limit it is held to, `--batch-size auto`, MLX's buffer
cache, and the guard that stops a run with a checkpoint when its measured peak nears the limit
(rather than let the system kill it)."""

from __future__ import annotations

import dataclasses

import mlx.core as mx

from mlx_dpo.config import TrainConfig
from mlx_dpo.formatting import GB, format_size
from mlx_dpo.memory.arithmetic import (
    GUARD_FRACTION,
    MemoryPlan,
    choose_batch_size,
    plan_memory,
)
from mlx_dpo.memory.session import session_lengths, session_settings, session_shape
from mlx_dpo.platform import device_memory_limit, is_metal, set_cache_limit
from mlx_dpo.session import Session


def memory_limit(limit_gb: float | None) -> tuple[int, str]:
    """(bytes, where the number comes from): memory_limit_gb when given, else the device's."""
    if limit_gb is not None:
        return int(limit_gb * GB), "memory_limit_gb"
    source = "Metal's recommended working set" if is_metal() else "physical memory"
    return device_memory_limit(), source


def plan_for_session(session: Session, config: TrainConfig) -> MemoryPlan:
    """The plan of a loaded session (model, LoRA and data) and its configuration."""
    limit, source = memory_limit(config.memory_limit_gb)
    return plan_memory(
        session_shape(session, config),
        session_lengths(session),
        session_settings(session, config),
        limit,
        source,
    )


def resolve_auto_batch(session: Session, config: TrainConfig) -> TrainConfig:
    """The config with `batch_size: auto` replaced by the largest batch the plan says fits,
    with the gradient accumulation that keeps the effective batch (the default batch size
    times the configured accumulation)."""
    if config.batch_size != "auto":
        return config
    effective = TrainConfig.batch_size * config.grad_accumulation
    limit, _ = memory_limit(config.memory_limit_gb)
    batch, accumulation = choose_batch_size(
        session_shape(session, config),
        session_lengths(session),
        session_settings(session, config, batch_size=effective),
        effective,
        limit,
    )
    return dataclasses.replace(config, batch_size=batch, grad_accumulation=accumulation)


def start_run_memory(plan: MemoryPlan) -> None:
    """Before the first step: count the peak from here, and let MLX's buffer cache hold at
    most one step's transient buffers (activations and logits, which it reuses) and never
    more than the room the plan leaves under the limit."""
    c = plan.estimate.components
    transient = int(1.1 * (c["activations"] + c["logits"]))
    room = max(0, plan.limit - plan.estimate.total) if plan.limit else transient
    set_cache_limit(min(transient, room))
    mx.reset_peak_memory()


def will_not_fit_message(plan: MemoryPlan) -> str | None:
    """The warning a run starts with when its plan says it will not fit; None otherwise."""
    if plan.verdict != "will not fit":
        return None
    return (
        f"the memory plan ({format_size(plan.estimate.total)}) does not fit "
        f"in {format_size(plan.limit)}; the run stops if its peak passes "
        f"{GUARD_FRACTION:.0%} of that (see mlx-dpo train --plan)"
    )


def over_limit_message(peak_bytes: int, plan: MemoryPlan, then: str | None = None) -> str | None:
    """A message naming what ran out and what to change, once the measured peak passes
    GUARD_FRACTION of the limit, ending with `then` (how to go on from the checkpoint the stop
    saves: rundir.out_of_memory_resume); None while it is inside."""
    if not plan.limit or peak_bytes <= GUARD_FRACTION * plan.limit:
        return None
    fixes = "; ".join(s.change for s in plan.suggestions) or _default_fixes(plan)
    return (
        f"out of memory: MLX's peak {format_size(peak_bytes)} passed {GUARD_FRACTION:.0%} of the "
        f"{format_size(plan.limit)} it may use ({plan.limit_source}; the plan estimated "
        f"{format_size(plan.estimate.total)}). Stopped with a checkpoint instead of being "
        f"killed. To fit, change: {fixes}" + (f". {then}" if then else "")
    )


def _default_fixes(plan: MemoryPlan) -> str:
    settings = plan.estimate.settings
    fixes = []
    if settings.batch_size > 1:
        fixes.append("a smaller --batch-size with --grad-accumulation")
    if not settings.grad_checkpoint:
        fixes.append("--grad-checkpoint")
    fixes.append("a shorter --max-length")
    if settings.quantize != 4:
        fixes.append("--quantize 4")
    return ", ".join(fixes)
