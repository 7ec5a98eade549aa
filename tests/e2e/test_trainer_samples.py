"""Watching the model learn (mlx_dpo/trainer/samples.py): which prompts, how they are shown,
greedy answers checked against mlx-lm's own generate, the cost bound, resume, and that a run
trains exactly the same with them on."""

from __future__ import annotations

import numpy as np
import pytest

from mlx_dpo.config import build_config
from mlx_dpo.data import TokenizedPair, TokenizedSplit
from mlx_dpo.errors import UserError
from mlx_dpo.events import EventWriter, read_events, send_command
from mlx_dpo.generation import prompt_tokens
from mlx_dpo.session import open_session
from mlx_dpo.trainer import samples as samples_module
from mlx_dpo.trainer.reporting import Reporter, RunStatus, StatusFile
from mlx_dpo.trainer.run import RunOptions, train
from mlx_dpo.trainer.samples import (
    SamplePrompt,
    SampleWatch,
    messages_text,
    prompt_text,
    read_sample_prompts,
    reference_written,
    split_prompts,
)
from tests.conftest import preference_rows, write_jsonl
from tests.training import adapters, config_for, run, steps

MAX_TOKENS = 8


def samples_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "samples"]


def mlx_lm_greedy(model, tokenizer, prompt: list[int]) -> str:
    """mlx-lm's own generate, greedy: what an answer must be."""
    from mlx_lm.generate import generate
    from mlx_lm.sample_utils import make_sampler

    return generate(model, tokenizer, prompt, max_tokens=MAX_TOKENS, sampler=make_sampler(temp=0.0))


# ---- prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["llama_chatml", "qwen2_llama3", "llama_plain"])
def test_a_prompt_is_shown_without_its_chat_template(fixture, request):
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(request.getfixturevalue(fixture))
    alone = [{"role": "user", "content": "what color is item 3?"}]
    ids = prompt_tokens(tokenizer, alone)
    assert prompt_text(tokenizer, ids) == "what color is item 3?"
    with_system = [{"role": "system", "content": "be kind"}, *alone]
    shown = prompt_text(tokenizer, prompt_tokens(tokenizer, with_system))
    # A template shows the last user message; plain text (no template) is the text itself.
    assert shown == (
        "be kind\n\nwhat color is item 3?" if fixture == "llama_plain" else alone[0]["content"]
    )


class Digits:
    """A tokenizer without a chat template that reads ids as their digits."""

    chat_template = None

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(i) for i in ids)


def split_of(prompts: list[list[int]]) -> TokenizedSplit:
    pairs = [TokenizedPair(i, f"v:{i}", p, [7, 8], [9]) for i, p in enumerate(prompts)]
    return TokenizedSplit.from_pairs("valid", "v", pairs)


def test_split_prompts_are_spread_over_the_split_and_distinct():
    split = split_of([[i] for i in range(12)])
    chosen = split_prompts(split, Digits(), 4)
    assert [p.tokens for p in chosen] == [[0], [3], [6], [9]]
    assert [p.text for p in chosen] == ["0", "3", "6", "9"]
    # Repeated prompts are taken once; the next distinct one stands in.
    repeated = split_of([[1], [1], [1], [2], [2], [3]])
    assert [p.tokens for p in split_prompts(repeated, Digits(), 3)] == [[1], [2], [3]]
    assert [p.tokens for p in split_prompts(split_of([[5], [5]]), Digits(), 4)] == [[5]]


def test_sample_prompts_are_read_as_collect_reads_them(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("first?\n\nsecond?\nfirst?\nthird?\nfourth?\n")
    config = build_config({}, {"sample_prompts": str(path), "sample_count": 3})
    assert read_sample_prompts(config) == [
        [{"role": "user", "content": text}] for text in ("first?", "second?", "third?")
    ]
    assert (
        read_sample_prompts(build_config({}, {"sample_prompts": str(path), "sample_count": 0}))
        is None
    )
    assert read_sample_prompts(build_config({}, {})) is None
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 3}\n')
    with pytest.raises(UserError, match="prompts.jsonl"):
        read_sample_prompts(build_config({}, {"sample_prompts": str(bad)}))
    with pytest.raises(UserError, match="no such prompts file"):
        read_sample_prompts(build_config({}, {"sample_prompts": str(tmp_path / "none.txt")}))


def test_messages_text():
    assert messages_text([{"role": "user", "content": "hi"}]) == "hi"
    two = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"}]
    assert messages_text(two) == "system: be kind\nuser: hi"


def test_sample_settings_are_checked():
    with pytest.raises(UserError, match="sample_count"):
        build_config({}, {"sample_count": -1})
    with pytest.raises(UserError, match="sample_max_tokens"):
        build_config({}, {"sample_max_tokens": 0})


# ---- the cost bound --------------------------------------------------------------------------


class Timed(SampleWatch):
    """A SampleWatch whose rounds take `cost` seconds and answer "a{n}"."""

    cost = 1.0
    rounds = 0

    def generate(self, reference: bool) -> tuple[list[str], float]:
        self.rounds += 1
        return [f"a{self.rounds}"] * len(self.prompts), self.cost


def watch_in(tmp_path, lines: list[str]) -> Timed:
    events = EventWriter(tmp_path)
    reporter = Reporter(events, StatusFile(tmp_path, RunStatus()), lines.append, 0.0)
    prompts = [SamplePrompt("p1", [1]), SamplePrompt("p2", [2])]
    return Timed(None, prompts, "valid", MAX_TOKENS, reporter)  # type: ignore[arg-type]


def test_rounds_past_a_quarter_of_the_training_time_are_skipped_but_not_the_last(tmp_path):
    lines: list[str] = []
    watch = watch_in(tmp_path, lines)
    watch.start([])  # the reference's round: 1 s, the estimate of the next
    watch.at_eval(10, training_seconds=3.0)  # 0 + 1 > 0.75: skipped, said once
    watch.at_eval(20, training_seconds=3.9)  # still over: skipped quietly
    watch.at_eval(30, training_seconds=4.0)  # 0 + 1 <= 1: generated
    watch.at_eval(40, training_seconds=6.0)  # 1 + 1 > 1.5: skipped, said again
    watch.at_eval(50, training_seconds=6.0, final=True)  # the end's round always comes
    events = read_events(tmp_path)
    samples = samples_of(events)
    assert [e["step"] for e in samples] == [0, 30, 50]
    assert samples[0]["prompts"] == [
        {"prompt": "p1", "reference": "a1"},
        {"prompt": "p2", "reference": "a1"},
    ]
    assert samples[1]["prompts"] == [
        {"prompt": "p1", "policy": "a2"},
        {"prompt": "p2", "policy": "a2"},
    ]
    assert all(e["seconds"] == 1.0 and e["max_tokens"] == MAX_TOKENS for e in samples)
    skipped = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in skipped] == [10, 40]
    assert (
        "a round takes 1.0s, which would pass 25% of the time spent training"
        in skipped[0]["message"]
    )
    # Generating reads as evaluating on the dashboard.
    states = [(e["step"], e["state"]) for e in events if e["event"] == "state"]
    assert states == [(30, "evaluating"), (30, "training"), (50, "evaluating"), (50, "training")]


def test_reference_answers_already_written_are_kept(tmp_path):
    lines: list[str] = []
    watch = watch_in(tmp_path, lines)
    written = [{"event": "samples", "step": 0, "prompts": [
        {"prompt": "p1", "reference": "r"}, {"prompt": "p2", "reference": "r"}]}]  # fmt: skip
    watch.start(written)
    assert watch.rounds == 0 and samples_of(read_events(tmp_path)) == []
    assert reference_written(written, ["p1", "p2"])
    assert not reference_written(written, ["p1", "other"])
    assert not reference_written([{**written[0], "step": 4}], ["p1", "p2"])


# ---- in a run --------------------------------------------------------------------------------


@pytest.fixture
def unbounded(monkeypatch):
    """Tiny models train in milliseconds: without this their rounds would all be skipped."""
    monkeypatch.setattr(samples_module, "MAX_SHARE", float("inf"))


def test_answers_at_the_start_and_each_evaluation_are_mlx_lm_greedy_answers(
    llama_chatml, preference_data, tmp_path, unbounded
):
    run_dir = tmp_path / "run"
    config = config_for(
        llama_chatml, preference_data, run_dir, iters=5, eval_every=2,
        sample_max_tokens=MAX_TOKENS, learning_rate=2e-2,
    )  # fmt: skip
    status, events = run(config)
    assert status == "completed"
    samples = samples_of(events)
    assert [e["step"] for e in samples] == [0, 2, 4, 5]
    for event in samples:
        assert len(event["prompts"]) == 4 and event["source"] == "valid"
        assert event["max_tokens"] == MAX_TOKENS and event["seconds"] > 0
    assert all(set(p) == {"prompt", "reference"} for p in samples[0]["prompts"])
    assert all(set(p) == {"prompt", "policy"} for e in samples[1:] for p in e["prompts"])
    # Prompts spread over the 8 validation pairs (items 100..107), shown as their user text.
    assert [p["prompt"] for p in samples[0]["prompts"]] == [
        f"what color is item {i}?" for i in (100, 102, 104, 106)
    ]
    # The reference's answers are the base model's and the last ones the trained adapter's,
    # as mlx-lm generates them on its own.
    session = open_session(config, splits=("valid",))
    prompts = split_prompts(session.splits["valid"], session.tokenizer, 4)
    session.model.eval()
    base = [mlx_lm_greedy(session.model, session.tokenizer, p.tokens) for p in prompts]
    assert [p["reference"] for p in samples[0]["prompts"]] == base
    trained = open_session(config, splits=("valid",), adapter_path=str(run_dir))
    trained.model.eval()
    final = [mlx_lm_greedy(trained.model, trained.tokenizer, p.tokens) for p in prompts]
    assert [p["policy"] for p in samples[-1]["prompts"]] == final
    assert final != base  # the adapter changed the answers: the comparison can fail


def test_a_run_trains_the_same_with_answers_on(llama_chatml, preference_data, tmp_path, unbounded):
    """Greedy generation between steps draws no random numbers: with dropout on, the losses
    and the adapters are the same as without it."""
    common = dict(iters=3, eval_every=1, lora_dropout=0.2, sample_max_tokens=MAX_TOKENS)
    _, with_answers = run(config_for(llama_chatml, preference_data, tmp_path / "on", **common))
    _, without = run(
        config_for(llama_chatml, preference_data, tmp_path / "off", sample_count=0, **common)
    )
    assert len(samples_of(with_answers)) == 4 and samples_of(without) == []
    assert [e["loss"] for e in steps(with_answers)] == [e["loss"] for e in steps(without)]
    a, b = adapters(tmp_path / "on"), adapters(tmp_path / "off")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_a_resumed_run_keeps_the_reference_answers(
    llama_chatml, preference_data, tmp_path, unbounded, monkeypatch
):
    run_dir = tmp_path / "run"
    config = config_for(
        llama_chatml, preference_data, run_dir, iters=4, eval_every=2, save_every=1,
        sample_max_tokens=MAX_TOKENS,
    )  # fmt: skip
    rounds: list[bool] = []
    original = SampleWatch.generate

    def counted(self, reference):
        rounds.append(reference)
        return original(self, reference)

    monkeypatch.setattr(SampleWatch, "generate", counted)

    def stop_at_step_3(line: str) -> None:
        if line.startswith("step 3/"):
            send_command(run_dir, "stop")

    options = RunOptions(run_dir, on_line=stop_at_step_3, handle_signals=False)
    assert train(config, options) == "stopped"
    assert rounds == [True, False]  # the reference's, the policy's at step 2
    options = RunOptions(run_dir, resume=True, on_line=lambda _: None, handle_signals=False)
    assert train(config, options) == "completed"
    assert rounds == [True, False, False]  # the end's round; the reference's not again
    samples = samples_of(read_events(run_dir))
    assert [e["step"] for e in samples] == [0, 2, 4]


def test_prompts_from_a_file(llama_chatml, preference_data, tmp_path, unbounded):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": "what color is item 5?"}, {"prompt": "name a color", "system": "be brief"}],
    )
    config = config_for(
        llama_chatml, preference_data, tmp_path / "run", iters=2,
        sample_prompts=str(prompts), sample_max_tokens=MAX_TOKENS,
    )  # fmt: skip
    _, events = run(config)
    first, last = samples_of(events)
    assert first["source"] == str(prompts) and last["step"] == 2
    assert [p["prompt"] for p in first["prompts"]] == [
        "what color is item 5?",
        "system: be brief\nuser: name a color",
    ]


def test_no_validation_split_and_no_prompts_file_says_answers_are_off(
    llama_chatml, tmp_path, unbounded
):
    data = tmp_path / "data"
    write_jsonl(data / "train.jsonl", preference_rows(8))
    _, events = run(config_for(llama_chatml, data, tmp_path / "run", iters=2))
    assert samples_of(events) == []
    (off,) = [
        e for e in events if e["event"] == "log" and "answers to fixed prompts" in e["message"]
    ]
    assert "off (no validation split" in off["message"] and "--sample-prompts" in off["message"]


def test_a_bad_prompts_file_fails_before_the_model_is_loaded(preference_data, tmp_path):
    config = config_for(
        tmp_path / "no-model", preference_data, tmp_path / "run", sample_prompts=str(tmp_path / "x")
    )
    with pytest.raises(UserError, match="no such prompts file"):
        train(config, RunOptions(tmp_path / "run", on_line=lambda _: None, handle_signals=False))
    (end,) = read_events(tmp_path / "run")
    assert end["event"] == "run_end" and end["status"] == "failed" and "prompts" in end["error"]
