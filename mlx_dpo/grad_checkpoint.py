"""Gradient checkpointing of the transformer blocks that also works with prefix sharing.

mlx-lm's `grad_checkpoint` wraps a block's call in `mx.checkpoint`, which re-runs the call in
the backward pass. A block handed a KV cache updates that cache as a side effect, so the re-run
would append the keys and values a second time (and the cache's arrays would be closed over,
so no gradient would reach the prompt through them). Here the cache's arrays go in and come out
of the checkpointed function explicitly: the re-run works on a private copy, and gradients flow
from the responses back into the prompt's computation as without checkpointing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache


def checkpoint_blocks(model: nn.Module) -> Callable[[], None]:
    """Recompute every block's activations in the backward pass (all instances of the block
    class, as mlx-lm does). Returns the function that puts the plain blocks back."""
    block_class = type(model.layers[0])
    block_call = block_class.__call__

    def checkpointed_call(block: nn.Module, x: mx.array, mask: Any = None, cache: Any = None):
        if cache is not None and not isinstance(cache, BatchKVCache):
            # Generation's caches (answers a run writes between steps): no gradient, no re-run.
            return block_call(block, x, mask, cache)
        if cache is None:

            def plain(params: dict, x: mx.array) -> mx.array:
                block.update(params)
                return block_call(block, x, mask)

            return mx.checkpoint(plain)(block.trainable_parameters(), x)
        return _checkpointed_with_cache(block, block_call, x, mask, cache)

    block_class.__call__ = checkpointed_call

    def restore() -> None:
        block_class.__call__ = block_call

    return restore


def _checkpointed_with_cache(
    block: nn.Module, block_call: Callable, x: mx.array, mask: Any, cache: Any
) -> mx.array:
    """One block call with a batch KV cache: the cache's keys and values before the call are
    inputs of the checkpointed function and after it its outputs; the bookkeeping (offsets,
    padding, write position) needs no gradient and is restored around each run."""
    cache_type = type(cache)
    keys, values, offset, left_padding, index = cache.state
    has_keys = keys is not None
    ran: dict[str, Any] = {}

    def run(params: dict, x: mx.array, *kv: mx.array) -> tuple[mx.array, ...]:
        block.update(params)
        private = cache_type.__new__(cache_type)
        private.__dict__.update(cache.__dict__)
        private.state = (*(kv if has_keys else (None, None)), offset, left_padding, index)
        out = block_call(block, x, mask, private)
        ran["state"] = private.state
        return out, private.keys, private.values

    kv_in = (keys, values) if has_keys else ()
    out, new_keys, new_values = mx.checkpoint(run)(block.trainable_parameters(), x, *kv_in)
    _, _, new_offset, new_left_padding, new_index = ran["state"]
    cache.state = (new_keys, new_values, new_offset, new_left_padding, new_index)
    return out
