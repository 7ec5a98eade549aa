"""Summed response log-probabilities, computed only where they count.

Only response positions go through the LM head, in chunks, with logsumexp: no
(rows × length × vocab) float32 log-softmax is ever built. When a chunk's logits would be
large, the chunk is checkpointed so the backward pass recomputes it instead of keeping it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mlx_dpo.losses import wpo_token_terms

# Largest float32 logits block (bytes) kept alive for one chunk.
LOGITS_BUDGET_BYTES = 1 << 28


@dataclass
class HeadSplit:
    """The model as backbone (tokens -> final hidden states) and LM head (hidden -> logits)."""

    backbone: Callable[[mx.array], mx.array]
    head: Callable[[mx.array], mx.array]


def find_head_split(model: nn.Module) -> HeadSplit | None:
    """mlx-lm models are `model.model` (the backbone) plus `lm_head` or tied embeddings. Check
    on a few tokens that head(backbone(x)) really equals model(x) — some architectures scale
    or cap logits — and fall back to full logits otherwise."""
    inner = getattr(model, "model", None)
    if inner is None or not callable(inner):
        return None
    if hasattr(model, "lm_head"):
        head = model.lm_head
    elif hasattr(getattr(inner, "embed_tokens", None), "as_linear"):
        head = inner.embed_tokens.as_linear
    else:
        return None
    probe = mx.array([[1, 2, 3, 4]], dtype=mx.int32)
    try:
        expected = model(probe).astype(mx.float32)
        split = head(inner(probe)).astype(mx.float32)
    except Exception:  # an architecture whose backbone needs other arguments
        return None
    if expected.shape != split.shape:
        return None
    scale = mx.maximum(mx.abs(expected).max(), 1e-6)
    if (mx.abs(expected - split).max() / scale).item() > 1e-3:
        return None
    return HeadSplit(backbone=inner, head=head)


def _token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    logits = logits.astype(mx.float32)
    target_logits = mx.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits - mx.logsumexp(logits, axis=-1)


def response_token_logps(
    model: nn.Module,
    tokens: mx.array,
    positions: mx.array,
    mask: mx.array,
    split: HeadSplit | None,
    hidden: mx.array | None = None,
    wpo: bool = False,
) -> tuple[mx.array, mx.array | None]:
    """log p(token | everything before it) at each response position, masked: (R, W) with 0
    past each row's response; and with `wpo`, WPO's per-token terms (losses.wpo_token_terms,
    no gradient) masked the same way, else None.

    tokens (R, L) int32; positions (R, W) target positions of response tokens in
    tokens[:, 1:]; mask (R, W) 1 for real response tokens. `hidden` may carry backbone
    outputs already computed (prefix sharing)."""
    targets = mx.take_along_axis(tokens[:, 1:], positions, axis=1)
    if split is None:
        logits = model(tokens[:, :-1])
        logits = mx.take_along_axis(logits, positions[..., None], axis=1)
        terms = wpo_token_terms(logits, targets) * mask if wpo else None
        return _token_logps(logits, targets) * mask, terms

    if hidden is None:
        hidden = split.backbone(tokens[:, :-1])
    hidden = mx.take_along_axis(hidden, positions[..., None], axis=1)
    values, terms = chunked_token_terms(hidden, targets, split.head, wpo)
    return values * mask, None if terms is None else terms * mask


def response_logps(
    model: nn.Module,
    tokens: mx.array,
    positions: mx.array,
    mask: mx.array,
    split: HeadSplit | None,
    hidden: mx.array | None = None,
) -> mx.array:
    """Sum over response tokens of log p(token | everything before it), one value per row
    (response_token_logps summed)."""
    return response_token_logps(model, tokens, positions, mask, split, hidden)[0].sum(axis=-1)


def shared_prompt_token_logps(
    model: nn.Module,
    prompt_tokens: mx.array,
    prompt_padding: mx.array,
    response_tokens: mx.array,
    mask: mx.array,
    split: HeadSplit,
    wpo: bool = False,
) -> tuple[mx.array, mx.array | None]:
    """response_token_logps computing each prompt once (prefix sharing).

    The B prompts (left-padded) run through the backbone filling mlx-lm's batch KV cache;
    the cache is then repeated so the k·B responses (k = rows / prompts: 2 for a batch of
    pairs, chosen rows then rejected rows; 1 for one response a prompt) continue from it.
    The prompt's last hidden state predicts the first response token. Gradients flow
    through the cached keys and values into the prompt's computation."""
    from mlx_lm.models.cache import BatchKVCache

    copies = response_tokens.shape[0] // prompt_tokens.shape[0]
    caches = []
    for _ in model.layers:
        # Built from arrays, not lists: inside mx.compile the padding is not known in Python.
        cache = BatchKVCache([0] * prompt_tokens.shape[0])
        cache.left_padding = prompt_padding
        cache.offset = -prompt_padding
        caches.append(cache)
    prompt_hidden = split.backbone(prompt_tokens, cache=caches)
    if copies > 1:
        for cache in caches:
            keys, values = cache.keys_and_values()
            cache.keys = mx.concatenate([keys] * copies)
            cache.values = mx.concatenate([values] * copies)
            cache.offset = mx.concatenate([cache.offset] * copies)
            cache.left_padding = mx.concatenate([cache.left_padding] * copies)
    response_hidden = split.backbone(response_tokens, cache=caches)
    last = prompt_hidden[:, -1:]
    hidden = mx.concatenate(
        [mx.concatenate([last] * copies), response_hidden[:, : response_tokens.shape[1] - 1]],
        axis=1,
    )
    values, terms = chunked_token_terms(hidden, response_tokens, split.head, wpo)
    return values * mask, None if terms is None else terms * mask


def supports_prefix_sharing(model: nn.Module, split: HeadSplit | None) -> bool:
    """Whether this architecture gives the same log-probs with a shared prompt (it needs the
    batch KV cache to work as in plain attention layers); checked on a tiny batch."""
    if split is None:
        return False
    from mlx_dpo.batching import collate
    from mlx_dpo.data import TokenizedPair

    pairs = [
        TokenizedPair(0, "", [5, 6, 7], [8, 9], [10, 11, 12]),
        TokenizedPair(1, "", [5, 13, 14, 15, 16, 17], [18], [19, 20]),
    ]
    try:
        rows = response_logps(model, *[mx.array(a) for a in collate(pairs).model_inputs()], split)
        shared_batch = collate(pairs, shared_prompt=True)
        shared_inputs = [mx.array(a) for a in shared_batch.model_inputs()]
        shared = shared_prompt_token_logps(model, *shared_inputs, split)[0].sum(axis=-1)
        mx.eval(rows, shared)
    except Exception:  # an architecture whose layers or caches work differently
        return False
    return bool(mx.allclose(rows, shared, rtol=1e-3, atol=1e-3).item())


def chunked_token_logps(
    hidden: mx.array, targets: mx.array, head: Callable[[mx.array], mx.array]
) -> mx.array:
    """log p(target) for hidden (R, W, D) and targets (R, W), through the head in chunks."""
    return chunked_token_terms(hidden, targets, head)[0]


def chunked_token_terms(
    hidden: mx.array, targets: mx.array, head: Callable[[mx.array], mx.array], wpo: bool = False
) -> tuple[mx.array, mx.array | None]:
    """(log p(target), WPO's per-token terms or None) for hidden (R, W, D) and targets (R, W),
    through the head in chunks. The WPO terms come from the same chunk's logits (no second
    pass through the head) and carry no gradient."""
    rows, width, _ = hidden.shape
    vocab = head(hidden[:1, :1]).shape[-1]
    chunk = max(1, LOGITS_BUDGET_BYTES // (rows * vocab * 4))
    if chunk >= width:
        logits = head(hidden)
        return _token_logps(logits, targets), wpo_token_terms(logits, targets) if wpo else None

    piece = _recomputing_token_logps(head, wpo)
    parts = [
        piece(hidden[:, start : start + chunk], targets[:, start : start + chunk])
        for start in range(0, width, chunk)
    ]
    values = mx.concatenate([part[0] for part in parts], axis=1)
    terms = mx.concatenate([part[2] for part in parts], axis=1) if wpo else None
    return values, terms


def _recomputing_token_logps(head: Callable[[mx.array], mx.array], wpo: bool = False) -> Callable:
    """`_token_logps(head(h), t)` (and the logsumexp) whose backward recomputes the chunk's
    logits rather than keeping them. Like `mx.checkpoint` around `_token_logps`, but the
    backward reuses the forward's logsumexp instead of recomputing it: one pass of exp over
    the (rows x chunk x vocab) logits less, and the same gradient bit for bit (the
    gradient of logsumexp is the precise softmax, as below). Only the hidden states get a
    gradient; the head is frozen (LoRA never wraps it) and targets are indices. With `wpo`
    a third output holds WPO's per-token terms of the chunk (no gradient: the backward
    ignores their cotangent)."""

    @mx.custom_function
    def piece(h: mx.array, t: mx.array) -> tuple[mx.array, ...]:
        logits = head(h).astype(mx.float32)
        target_logits = mx.take_along_axis(logits, t[..., None], axis=-1)[..., 0]
        logsumexp = mx.logsumexp(logits, axis=-1)
        if wpo:
            return target_logits - logsumexp, logsumexp, wpo_token_terms(logits, t)
        return target_logits - logsumexp, logsumexp

    @piece.vjp
    def piece_vjp(primals, cotangents, outputs):
        h, t = primals
        cotangent = cotangents[0]
        out = head(h)
        logits = out.astype(mx.float32)
        # d/dlogits of (logits[t] - logsumexp(logits)): one-hot(t) - softmax(logits). The
        # one-hot part is added at the target only (c + x == x + c and 0 + x == x exactly, so
        # this is the dense one-hot sum bit for bit, without two more vocabulary-wide arrays).
        grad = (-cotangent)[..., None] * mx.softmax(logits, axis=-1, precise=True)
        at_target = mx.take_along_axis(grad, t[..., None], axis=-1) + cotangent[..., None]
        grad = mx.put_along_axis(grad, t[..., None], at_target, axis=-1)
        _, (grad_h,) = mx.vjp(head, [h], [grad.astype(out.dtype)])
        return grad_h, mx.zeros_like(t)

    return piece
