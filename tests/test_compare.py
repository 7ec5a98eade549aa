"""`mlx-dpo compare`: the reference's and the policy's answers are exactly what mlx-lm
generates for the base and for base + adapter, from prompts formatted as training formats
them, with one model in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlx_dpo.cli import main
from mlx_dpo.compare import (
    closer_to,
    compare_answers,
    format_comparison,
    load_policy,
    prompt_tokens,
)
from mlx_dpo.data import load_splits, read_records
from tests.conftest import preference_rows, write_jsonl
from tests.interop import train_run

PROMPTS = [
    [{"role": "user", "content": "what color is item 5?"}],
    [{"role": "system", "content": "be kind"}, {"role": "user", "content": "what color is it?"}],
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", preference_rows(12))
    write_jsonl(folder / "test.jsonl", preference_rows(3, seed=2, start=200))
    return folder


@pytest.fixture(scope="module")
def trained(llama_chatml, data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("compare") / "run"
    status, _ = train_run(llama_chatml, data, run_dir, iters=6, learning_rate=1e-2)
    assert status == "completed"
    return run_dir


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
def test_answers_are_mlx_lms_for_base_and_for_base_plus_adapter(llama_chatml, trained, temp):
    policy = load_policy(str(trained))
    rows = compare_answers(policy, PROMPTS, max_tokens=12, temp=temp, seed=7)
    reference = mlx_lm_answers(llama_chatml, None, PROMPTS, temp=temp, seed=7)
    trained_answers = mlx_lm_answers(llama_chatml, trained, PROMPTS, temp=temp, seed=7)
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


def test_compare_on_data_shows_the_pair(trained, data, capsys):
    code = main(
        [
            "compare",
            "--adapter-path",
            str(trained),
            "--data",
            str(data),
            "--limit",
            "2",
            "--max-tokens",
            "6",
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reference"] == "base" and len(out["results"]) == 2
    first = out["results"][0]
    # A data folder compares on its test split by default.
    assert first["source"].endswith("test.jsonl:1")
    expected = preference_rows(3, seed=2, start=200)[0]  # plain strings (200 % 3 == 2)
    assert first["chosen"] == expected["chosen"]
    assert first["rejected"] == expected["rejected"]
    assert first["policy_match"]["closer_to"] in ("chosen", "rejected", "neither")

    assert (
        main(["compare", "--adapter-path", str(trained), "--prompt", "hi", "--max-tokens", "4"])
        == 0
    )
    text = capsys.readouterr().out
    assert "reference: base" in text and "  policy " in text and "[user] hi" in text


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


def test_reference_of_an_init_adapter_run_is_base_plus_that_adapter(
    llama_chatml, trained, data, tmp_path
):
    run_dir = tmp_path / "continued"
    status, _ = train_run(
        llama_chatml, data, run_dir, iters=2, learning_rate=1e-2, init_adapter=str(trained)
    )
    assert status == "completed"
    policy = load_policy(str(run_dir))
    assert policy.reference_name == "base + init adapter"
    rows = compare_answers(policy, PROMPTS[:1], max_tokens=12)
    assert [r["reference"] for r in rows] == mlx_lm_answers(llama_chatml, trained, PROMPTS[:1])


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--adapter-path", "/no/such/run", "--prompt", "hi"], "no such adapter folder"),
        (["--adapter-path", "{run}", "--prompt", "hi", "--max-tokens", "0"], "--max-tokens"),
        (["--adapter-path", "{run}", "--data", "/no/such/data"], "no such data file or folder"),
    ],
)
def test_mistakes_exit_2(trained, capsys, args, expected):
    code = main(["compare", *[a.replace("{run}", str(trained)) for a in args]])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "Traceback" not in err
