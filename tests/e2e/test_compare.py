"""Comparing (mlx_dpo/compare.py): the reference's and the policy's answers are exactly what
mlx-lm generates for the base and for base + adapter, from prompts formatted as training
formats them, with one model in memory. The command line's own checks are in
test_cli_compare.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_dpo.compare import (
    closer_to,
    compare_answers,
    format_comparison,
    user_prompts,
)
from mlx_dpo.data import load_splits, read_records
from mlx_dpo.generation import load_policy, prompt_tokens
from tests.conftest import preference_rows, write_jsonl
from tests.interop import train_run

PROMPTS = [
    [{"role": "user", "content": "what color is item 5?"}],
    [{"role": "system", "content": "be kind"}, {"role": "user", "content": "what color is it?"}],
]


def mlx_lm_answers(model_path: Path, adapter: Path | None, prompts, **settings) -> list[str]:
    """What mlx-lm itself generates for each prompt (same formatting, same seed)."""
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = mlx_lm.load(str(model_path), adapter_path=str(adapter) if adapter else None)
    answers = []
    for messages in prompts:
        mx.random.seed(settings.get("seed", 0))
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        answers.append(
            mlx_lm.generate(
                model,
                tokenizer,
                prompt,
                max_tokens=settings.get("max_tokens", 12),
                sampler=make_sampler(temp=settings.get("temp", 0.0)),
            )
        )
    return answers


@pytest.mark.parametrize("temp", [0.0, 0.9])
def test_answers_are_mlx_lms_for_base_and_for_base_plus_adapter(llama_chatml, compare_run, temp):
    policy = load_policy(str(compare_run))
    rows = compare_answers(policy, PROMPTS, max_tokens=12, temp=temp, seed=7)
    reference = mlx_lm_answers(llama_chatml, None, PROMPTS, temp=temp, seed=7)
    trained_answers = mlx_lm_answers(llama_chatml, compare_run, PROMPTS, temp=temp, seed=7)
    assert [r["reference"] for r in rows] == reference
    assert [r["policy"] for r in rows] == trained_answers
    assert reference != trained_answers  # training changed what the model says
    assert [r["prompt"] for r in rows] == PROMPTS
    # The adapter is back on after each reference answer, and the model was loaded once.
    again = compare_answers(policy, PROMPTS, max_tokens=12, temp=temp, seed=7)
    assert again == rows


@pytest.mark.parametrize("fixture", ["llama_chatml", "qwen2_llama3", "llama_plain"])
def test_prompts_are_formatted_as_training_formats_them(fixture, request, tmp_path):
    from mlx_lm.utils import load_tokenizer

    model_path = request.getfixturevalue(fixture)
    data = write_jsonl(tmp_path / "train.jsonl", preference_rows(6))
    tokenizer = load_tokenizer(model_path)
    split = load_splits(data, tokenizer, max_length=1024)["train"]
    records = read_records(data)
    for record, pair in zip(records, split.pairs, strict=True):
        assert prompt_tokens(tokenizer, record.prompt) == pair.prompt_ids.tolist()


def test_closer_to_and_the_summary_line():
    match = closer_to("the item is red and nice.", "the item is red and nice.", "ugh it is red.")
    assert match["closer_to"] == "chosen" and match["chosen_similarity"] == 1.0
    assert (
        closer_to("ugh it is blue", "the item is red", "ugh it is red")["closer_to"] == "rejected"
    )
    rows = [
        {
            "prompt": PROMPTS[0],
            "reference": "ugh",
            "policy": "the item",
            "chosen": "the item",
            "rejected": "ugh",
            "reference_match": closer_to("ugh", "the item", "ugh"),
            "policy_match": closer_to("the item", "the item", "ugh"),
        }
    ]
    text = format_comparison(rows)
    assert "closer to chosen: policy 1/1, reference (base) 0/1" in text
    assert "answers that changed: 1/1" in text


def test_user_prompts_put_the_system_message_first():
    assert user_prompts(["a", "b"]) == [
        [{"role": "user", "content": "a"}],
        [{"role": "user", "content": "b"}],
    ]
    assert user_prompts(["what color is it?"], "be kind") == [PROMPTS[1]]


def test_reference_of_an_init_adapter_run_is_base_plus_that_adapter(
    llama_chatml, compare_run, compare_data, tmp_path
):
    run_dir = tmp_path / "continued"
    status, _ = train_run(
        llama_chatml,
        compare_data,
        run_dir,
        iters=2,
        learning_rate=1e-2,
        init_adapter=str(compare_run),
    )
    assert status == "completed"
    policy = load_policy(str(run_dir))
    assert policy.reference_name == "base + init adapter"
    rows = compare_answers(policy, PROMPTS[:1], max_tokens=12)
    assert [r["reference"] for r in rows] == mlx_lm_answers(llama_chatml, compare_run, PROMPTS[:1])
