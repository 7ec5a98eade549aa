"""Checkpointed blocks give the gradients of plain blocks, with and without prefix sharing
(where a block call also updates a KV cache), eagerly and in the compiled training step."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

from mlx_dpo.config import build_config
from mlx_dpo.grad_checkpoint import checkpoint_blocks
from mlx_dpo.session import open_session
from mlx_dpo.trainer.batch_logps import batch_arrays
from mlx_dpo.trainer.step import compiled_step, make_loss_fn, step_extras


def session_for(model, data, prefix_sharing: bool):
    config = build_config(
        {},
        dict(model=str(model), data=str(data), batch_size=4, lora_rank=4,
             prefix_sharing=prefix_sharing),
    )  # fmt: skip
    session = open_session(config, splits=("train",))
    assert session.prefix_sharing is prefix_sharing
    # Non-zero LoRA weights everywhere, so every adapter's gradient is exercised.
    mx.random.seed(3)
    session.model.update(
        tree_map(lambda p: 0.05 * mx.random.normal(p.shape), session.model.trainable_parameters())
    )
    return session, config


def step_inputs(session):
    split = session.splits["train"]
    batch = session.collate(split.pairs[:4])
    reference = np.zeros(len(split), np.float32) - 40.0
    extras = step_extras(batch, split, {"chosen": reference, "rejected": reference})
    return batch_arrays(batch), extras, {}


def loss_and_grads(session, config, checkpointed: bool):
    restore = checkpoint_blocks(session.model) if checkpointed else None
    try:
        value_and_grad = nn.value_and_grad(session.model, make_loss_fn(session, config))
        (loss, _), grads = value_and_grad(*step_inputs(session))
        mx.eval(loss, grads)
    finally:
        if restore is not None:
            restore()
    return loss.item(), dict(tree_flatten(grads))


@pytest.mark.parametrize("prefix_sharing", [False, True], ids=["rows", "shared-prompt"])
def test_checkpointed_gradients_equal_plain(llama_chatml, preference_data, prefix_sharing):
    session, config = session_for(llama_chatml, preference_data, prefix_sharing)
    plain_loss, plain = loss_and_grads(session, config, checkpointed=False)
    loss, grads = loss_and_grads(session, config, checkpointed=True)
    assert loss == pytest.approx(plain_loss, rel=1e-6)
    assert grads.keys() == plain.keys()
    for name in plain:
        assert float(mx.abs(plain[name]).max()) > 0, name  # a gradient that could differ
        np.testing.assert_allclose(np.array(grads[name]), np.array(plain[name]), rtol=1e-5,
                                   atol=1e-7, err_msg=name)  # fmt: skip


def test_the_prompt_gets_gradient_through_the_cache(llama_chatml, preference_data):
    """With a shared prompt the LoRA weights of the prompt's positions only get gradient
    through the cached keys and values: checkpointed and plain agree on them as well as
    the rows layout does (a checkpoint that closed over the cache would drop it)."""
    rows_session, config = session_for(llama_chatml, preference_data, prefix_sharing=False)
    _, rows = loss_and_grads(rows_session, config, checkpointed=False)
    shared_session, shared_config = session_for(llama_chatml, preference_data, True)
    _, shared = loss_and_grads(shared_session, shared_config, checkpointed=True)
    for name in rows:
        np.testing.assert_allclose(np.array(shared[name]), np.array(rows[name]), rtol=1e-3,
                                   atol=1e-6, err_msg=name)  # fmt: skip


def test_compiled_step_with_checkpointing_and_sharing(llama_chatml, preference_data):
    session, config = session_for(llama_chatml, preference_data, prefix_sharing=True)
    _, plain = loss_and_grads(session, config, checkpointed=False)
    restore = checkpoint_blocks(session.model)
    try:
        optimizer = optim.AdamW(learning_rate=1e-4)
        optimizer.init(session.model.trainable_parameters())
        accumulate, _ = compiled_step(session, config, optimizer)
        _, _, grads, _ = accumulate(None, *step_inputs(session))
        mx.eval(grads)
    finally:
        restore()
    # The step's gradient is of the loss summed over the batch's 4 pairs.
    for name, value in tree_flatten(grads):
        np.testing.assert_allclose(np.array(value), 4 * np.array(plain[name]), rtol=1e-4,
                                   atol=1e-6, err_msg=name)  # fmt: skip


def test_generation_in_a_checkpointed_model_is_plain_generation(llama_chatml):
    """A run with --grad-checkpoint writes greedy answers between steps (KV caches of mlx-lm's
    generate, not the batch cache of prefix sharing): the answers are those of the plain model."""
    from mlx_lm.utils import load

    from mlx_dpo.generation import greedy_answer

    model, tokenizer = load(str(llama_chatml))
    prompt = tokenizer.encode("what color is item 3?")
    plain = greedy_answer(model, tokenizer, prompt, 8).text
    restore = checkpoint_blocks(model)
    try:
        assert greedy_answer(model, tokenizer, prompt, 8).text == plain
    finally:
        restore()
