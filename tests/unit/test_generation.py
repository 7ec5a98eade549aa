"""Seeded sampling: what mlx-lm itself samples for the same prompt, settings and seed, streamed
piece by piece, the same in every call."""

from __future__ import annotations

import mlx_lm
import numpy as np
import pytest

from mlx_dpo.errors import UserError
from mlx_dpo.generation import load_generator, prompt_tokens, sample_answer, stream_answer
from mlx_dpo.sampling import Sampling
from tests.collect_models import mlx_lm_sample

PROMPT = [{"role": "user", "content": "what color is item 3?"}]


@pytest.fixture(scope="module")
def tiny(llama_chatml):
    return load_generator(str(llama_chatml))


@pytest.mark.parametrize("sampling", [Sampling(0.9, 0.9, 12), Sampling(1.0, 1.0, 12)])
def test_answers_are_mlx_lms_for_the_seed(llama_chatml, tiny, sampling):
    model, tokenizer = mlx_lm.load(str(llama_chatml))
    for seed in (1, 2, 3):
        pieces, final = [], None
        for piece, answer in stream_answer(tiny.model, tiny.tokenizer, PROMPT, sampling, seed):
            if answer is None:
                pieces.append(piece)
            else:
                final = answer
        expected = mlx_lm_sample(model, tokenizer, PROMPT, sampling, seed)
        assert final.text == "".join(pieces) == expected
        assert sample_answer(tiny.model, tiny.tokenizer, PROMPT, sampling, seed).text == expected
    texts = {sample_answer(tiny.model, tiny.tokenizer, PROMPT, sampling, s).text for s in range(6)}
    assert len(texts) > 1  # the seed matters


def test_greedy_is_what_compare_generates(tiny):
    """compare asks for top_p 0 (mlx-lm's make_sampler(temp=temp)); greedy ignores top_p."""
    greedy = sample_answer(tiny.model, tiny.tokenizer, PROMPT, Sampling(0.0, 1.0, 10), seed=0)
    compared = mlx_lm_sample(tiny.model, tiny.tokenizer, PROMPT, Sampling(0.0, 0.0, 10), 0)
    assert greedy.text == compared


def test_token_count_and_why_it_ended(tiny):
    cut = sample_answer(tiny.model, tiny.tokenizer, PROMPT, Sampling(1.0, 1.0, 3), seed=4)
    assert (cut.tokens, cut.finish_reason) == (3, "length")
    ids = prompt_tokens(tiny.tokenizer, PROMPT)
    assert ids == list(tiny.tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True))


def test_a_model_is_needed():
    with pytest.raises(UserError, match="--model is needed"):
        load_generator(None, None)


def test_greedy_answer_is_mlx_lms_and_draws_no_random_numbers(llama_chatml, tiny):
    import mlx.core as mx

    from mlx_dpo.generation import greedy_answer

    model, tokenizer = mlx_lm.load(str(llama_chatml))
    ids = prompt_tokens(tiny.tokenizer, PROMPT)
    mx.random.seed(7)
    state = np.array(mx.random.state[0])
    answer = greedy_answer(tiny.model, tiny.tokenizer, ids, 10)
    assert np.array_equal(np.array(mx.random.state[0]), state)
    assert answer.text == mlx_lm_sample(model, tokenizer, PROMPT, Sampling(0.0, 0.0, 10), 0)
    assert answer.finish_reason in ("stop", "length") and 0 < answer.tokens <= 10
