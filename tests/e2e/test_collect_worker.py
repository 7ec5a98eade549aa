"""The generation worker's protocol, spoken to a real worker process on a tiny model: answers
streamed and equal to the seeded samples, the preference, cancel, errors; reference vs policy
with an adapter."""

from __future__ import annotations

import json
import subprocess
import sys

import mlx_lm
import pytest

from mlx_dpo.generation import load_generator, sample_answer
from mlx_dpo.logprobs import find_head_split
from mlx_dpo.sampling import Sampling
from mlx_dpo.scoring import model_preference
from tests.collect_models import mlx_lm_sample, random_adapter

PROMPT = [{"role": "user", "content": "what color is item 7?"}]
SAMPLING = Sampling(0.9, 0.9, 10)


def run_worker(args: list[str], requests: list[dict], timeout: float = 120) -> tuple[list, int]:
    """Send all requests, close stdin; every stdout line must be protocol JSON."""
    result = subprocess.run(
        [sys.executable, "-m", "mlx_dpo.collect_worker", *args],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return [json.loads(line) for line in result.stdout.splitlines()], result.returncode


def sampling_flags(sampling: Sampling) -> list[str]:
    return ["--temp", str(sampling.temp), "--top-p", str(sampling.top_p),
            "--max-tokens", str(sampling.max_tokens)]  # fmt: skip


def test_the_protocol_on_a_tiny_model(llama_chatml):
    requests = [
        {"op": "generate", "id": 1, "prompt": PROMPT, "seeds": {"a": 3, "b": 4}, "score": True},
        {"op": "score", "id": 2, "prompt": PROMPT, "a": "red.", "b": "blue."},
        {"op": "generate", "id": 3, "prompt": PROMPT, "seeds": {"a": 3, "b": 4}},
        {"op": "cancel", "id": 3},
        {"op": "dance", "id": 4},
        {"op": "quit"},
    ]
    lines, code = run_worker(["--model", str(llama_chatml), *sampling_flags(SAMPLING)], requests)
    assert code == 0
    ready = lines[0]
    assert ready == {
        "type": "ready",
        "model": str(llama_chatml),
        "adapter": None,
        "mode": "samples",
        "labels": {"a": "sample A", "b": "sample B"},
        "sampling": {"temp": 0.9, "top_p": 0.9, "max_tokens": 10},
    }
    first = [line for line in lines if line.get("id") == 1]
    assert [line["type"] for line in first][-2:] == ["preference", "done"]
    generator = load_generator(str(llama_chatml))
    answers = {}
    for side, seed in (("a", 3), ("b", 4)):
        streamed = "".join(x["text"] for x in first if x["type"] == "token" and x["side"] == side)
        (answer,) = [x for x in first if x["type"] == "answer" and x["side"] == side]
        expected = sample_answer(generator.model, generator.tokenizer, PROMPT, SAMPLING, seed)
        assert answer["text"] == streamed == expected.text
        assert (answer["tokens"], answer["finish_reason"], answer["seed"]) == (
            expected.tokens,
            expected.finish_reason,
            seed,
        )
        answers[side] = answer["text"]
    # A's answer streams completely before B's begins.
    sides = [x["side"] for x in first if x["type"] == "token"]
    assert sides == sorted(sides)
    (preference,) = [x for x in first if x["type"] == "preference"]
    split = find_head_split(generator.model)
    expected = model_preference(
        generator.model, generator.tokenizer, PROMPT, answers["a"], answers["b"], split
    )
    assert preference["logp_a"] == pytest.approx(expected["logp_a"], abs=1e-4)
    assert preference["prefers"] == expected["prefers"]
    second = [line for line in lines if line.get("id") == 2]
    assert [x["type"] for x in second] == ["preference", "done"]
    assert [x["type"] for x in lines if x.get("id") == 3][-1] == "cancelled"
    assert not any(x["type"] == "done" for x in lines if x.get("id") == 3)
    (unknown,) = [x for x in lines if x.get("id") == 4]
    assert unknown == {"type": "error", "id": 4, "message": "unknown op 'dance'", "fatal": False}


@pytest.mark.slow
def test_a_model_that_does_not_load_is_a_fatal_error(tmp_path):
    lines, code = run_worker(["--model", str(tmp_path / "nope")], [])
    assert code == 2
    (line,) = lines
    assert line["type"] == "error" and line["fatal"] is True
    assert "no such model folder" in line["message"]


@pytest.mark.slow
def test_reference_and_policy_are_drawn_with_one_seed(llama_chatml, tmp_path):
    adapter = random_adapter(llama_chatml, tmp_path / "adapter")
    requests = [
        {"op": "generate", "id": 1, "prompt": PROMPT, "seeds": {"a": 5, "b": 5}, "score": True},
    ]
    lines, code = run_worker(["--adapter-path", str(adapter), *sampling_flags(SAMPLING)], requests)
    assert code == 0
    assert lines[0]["mode"] == "adapter"
    assert lines[0]["labels"] == {"a": "reference (base)", "b": "policy (adapter)"}
    answers = {x["side"]: x["text"] for x in lines if x["type"] == "answer"}
    # Independently: mlx-lm's base model and base + adapter, each sampled with seed 5.
    base, tokenizer = mlx_lm.load(str(llama_chatml))
    policy, _ = mlx_lm.load(str(llama_chatml), adapter_path=str(adapter))
    assert answers["a"] == mlx_lm_sample(base, tokenizer, PROMPT, SAMPLING, 5)
    assert answers["b"] == mlx_lm_sample(policy, tokenizer, PROMPT, SAMPLING, 5)
    (preference,) = [x for x in lines if x["type"] == "preference"]
    assert preference["basis"] == "reward" and "reference_logp_a" in preference
