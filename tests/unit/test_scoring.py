"""The model's own preference between two answers: log-probs checked against full logits
from mlx-lm's model (numpy log-softmax), with and without a chat template; with an adapter,
the DPO reward against the base model and mlx-lm's own base + adapter."""

from __future__ import annotations

import mlx_lm
import pytest

from mlx_dpo.generation import load_generator
from mlx_dpo.logprobs import find_head_split
from mlx_dpo.scoring import model_preference, next_token_logps
from tests.collect_models import chat_logp, full_logps, random_adapter, response_logp

PROMPTS = [
    [{"role": "user", "content": "what color is item 3?"}],
    [{"role": "system", "content": "be kind"}, {"role": "user", "content": "what color?"}],
]
ANSWERS = ("the item is red and nice.", "ugh it is blue obviously.")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logps_are_the_models_own(llama_chatml, prompt):
    generator = load_generator(str(llama_chatml))
    model, tokenizer = mlx_lm.load(str(llama_chatml))
    for split in (find_head_split(generator.model), None):
        result = model_preference(
            generator.model, generator.tokenizer, prompt, *ANSWERS, split=split
        )
        expected = [chat_logp(model, tokenizer, prompt, answer) for answer in ANSWERS]
        assert [result["logp_a"], result["logp_b"]] == pytest.approx(expected, abs=1e-3)
        assert result["basis"] == "logp" and "reference_logp_a" not in result
        assert result["margin"] == pytest.approx(expected[0] - expected[1], abs=1e-3)
        assert result["prefers"] == ("a" if expected[0] > expected[1] else "b")
    swapped = model_preference(
        generator.model, generator.tokenizer, prompt, ANSWERS[1], ANSWERS[0], split=None
    )
    assert swapped["prefers"] != result["prefers"]


def test_without_a_template_the_answer_ends_with_eos(llama_plain):
    generator = load_generator(str(llama_plain))
    model, tokenizer = mlx_lm.load(str(llama_plain))
    result = model_preference(
        generator.model, generator.tokenizer, PROMPTS[0], *ANSWERS, split=None
    )
    prompt_ids = tokenizer.encode(PROMPTS[0][0]["content"])
    for answer, value in zip(ANSWERS, (result["logp_a"], result["logp_b"]), strict=True):
        full = prompt_ids + tokenizer.encode(answer, add_special_tokens=False)
        full.append(tokenizer.eos_token_id)
        assert value == pytest.approx(response_logp(model, prompt_ids, full), abs=1e-3)


def test_with_an_adapter_the_preference_is_the_dpo_reward(llama_chatml, tmp_path):
    adapter = random_adapter(llama_chatml, tmp_path / "adapter")
    generator = load_generator(None, str(adapter))
    split = find_head_split(generator.model)
    result = model_preference(
        generator.model, generator.tokenizer, PROMPTS[0], *ANSWERS, split, generator.frozen_adapter
    )
    base, tokenizer = mlx_lm.load(str(llama_chatml))
    policy, _ = mlx_lm.load(str(llama_chatml), adapter_path=str(adapter))
    reference = [chat_logp(base, tokenizer, PROMPTS[0], a) for a in ANSWERS]
    trained = [chat_logp(policy, tokenizer, PROMPTS[0], a) for a in ANSWERS]
    assert [result["reference_logp_a"], result["reference_logp_b"]] == pytest.approx(
        reference, abs=1e-3
    )
    assert [result["logp_a"], result["logp_b"]] == pytest.approx(trained, abs=1e-3)
    assert trained != pytest.approx(reference, abs=1e-2)  # the adapter matters
    margin = (trained[0] - reference[0]) - (trained[1] - reference[1])
    assert result["basis"] == "reward"
    assert result["margin"] == pytest.approx(margin, abs=2e-3)
    assert result["prefers"] == ("a" if margin > 0 else "b")


def test_next_token_logps(llama_chatml):
    generator = load_generator(str(llama_chatml))
    ids = list(generator.tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True))
    expected = full_logps(generator.model, ids)[-1]
    for split in (find_head_split(generator.model), None):
        values = next_token_logps(generator.model, ids, [5, 17, 40], split)
        assert values == pytest.approx([expected[5], expected[17], expected[40]], abs=1e-4)
