"""Watching the model learn: greedy answers to a few fixed prompts, the reference's once at the
start and the policy's at each evaluation, written as `samples` events (mlx_dpo/events.py) for
the dashboard's answers screen (`a`).

The prompts are the first `sample_count` of `--sample-prompts FILE` (read as `mlx-dpo collect`
reads prompts: mlx_dpo/prompts.py), or else as many of the validation split's, spread over it,
each formatted as training formats it. Answers are greedy (mlx_dpo/generation.greedy_answer: no
random state drawn, so the run trains exactly as without them), at most `sample_max_tokens`
tokens, generated in the trainer process between steps, with LoRA dropout off; the reference's
with the adapter switched off (mlx_dpo/model.reference_mode), as in training.

What it costs is reported (`seconds` in each event, a console line) and bounded: a round at an
evaluation is skipped while the time spent generating the policy's answers in this session, with
the next round (estimated as the last one), would pass MAX_SHARE of the time spent in training
steps so far; a log line says so once. The reference's round at the start and the policy's at the
end of a finished run are always generated. A resumed run keeps the reference's answers already
written for the same prompts.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from mlx_dpo.config import TrainConfig
from mlx_dpo.data import Message, TokenizedSplit, has_chat_template
from mlx_dpo.generation import greedy_answer, prompt_tokens
from mlx_dpo.model import reference_mode
from mlx_dpo.prompts import load_prompts, unique_prompts
from mlx_dpo.session import Session
from mlx_dpo.trainer.reporting import Reporter

# Generating the policy's answers may take at most this share of the time spent in training
# steps (rounds past it are skipped until it is back under; the end's round is always made).
MAX_SHARE = 0.25
# Stands for the user's text when the chat template is rendered, to find its frame.
_SENTINEL = "\u2063SAMPLE-PROMPT\u2063"


@dataclass(frozen=True)
class SamplePrompt:
    text: str  # as the dashboard shows it
    tokens: list[int]  # as the model reads it (training's formatting)


def read_sample_prompts(config: TrainConfig) -> list[list[Message]] | None:
    """The messages of the first `sample_count` distinct prompts of --sample-prompts, or None
    without one (or with samples off). A bad file is a UserError naming it and the line."""
    if not config.sample_count or config.sample_prompts is None:
        return None
    prompts, _ = unique_prompts(load_prompts(config.sample_prompts, fields=config.fields))
    return [p.messages for p in prompts[: config.sample_count]]


def messages_text(messages: list[Message]) -> str:
    """A prompt as shown: one user message is its text; more are `role: text` lines."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def file_prompts(tokenizer: Any, messages: list[list[Message]]) -> list[SamplePrompt]:
    return [SamplePrompt(messages_text(m), prompt_tokens(tokenizer, m)) for m in messages]


def split_prompts(split: TokenizedSplit, tokenizer: Any, count: int) -> list[SamplePrompt]:
    """`count` distinct prompts of a split, spread over it (the k-th from k/count of the way
    in, or the next one not taken yet), as training tokenized them."""
    n = len(split)
    chosen: list[SamplePrompt] = []
    seen: set[tuple[int, ...]] = set()
    for k in range(min(count, n)):
        start = k * n // count
        for offset in range(n):
            ids = tuple(int(t) for t in split.pair((start + offset) % n).prompt_ids)
            if ids not in seen:
                seen.add(ids)
                chosen.append(SamplePrompt(prompt_text(tokenizer, list(ids)), list(ids)))
                break
    return chosen


def prompt_text(tokenizer: Any, ids: list[int]) -> str:
    """A tokenized prompt as text without its chat-template frame: the last user message
    where the template's frame is found around it, else the text without special tokens."""
    if has_chat_template(tokenizer):
        body = tokenizer.decode(ids).rstrip()
        tail, markers = _user_turn_frame(tokenizer)
        if tail and body.endswith(tail):
            body = body[: len(body) - len(tail)]
            for marker in markers:
                if marker in body:
                    return body[body.rfind(marker) + len(marker) :].strip()
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _user_turn_frame(tokenizer: Any) -> tuple[str, list[str]]:
    """(what follows the last user message up to the answer, what may come before a user
    message) in the chat template, found by rendering stand-ins for the messages: before a
    user turn that follows another turn (`<|im_end|>\n<|im_start|>user\n`), and before the
    first (with what starts the conversation: a BOS, a default system turn)."""
    a, b, c = (f"{_SENTINEL}{n}" for n in "abc")

    def render(messages: list[Message]) -> str:
        try:
            return tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
        except Exception:  # a template that refuses these turns: that frame is not known
            return ""

    one = render([{"role": "user", "content": a}])
    head, _, tail = one.partition(a)
    three = render(
        [
            {"role": "user", "content": a},
            {"role": "assistant", "content": b},
            {"role": "user", "content": c},
        ]
    )
    markers = []
    if b in three and c in three:
        between = three[three.index(b) + len(b) : three.index(c)]
        if between.strip():
            markers.append(between)
    if head.strip():
        markers.append(head)
    return tail.rstrip(), markers


class SampleWatch:
    """The answers of one run: `start` writes the reference's (step 0), `at_eval` the
    policy's. With no prompts (samples off) both do nothing."""

    def __init__(
        self,
        session: Session,
        prompts: list[SamplePrompt],
        source: str,
        max_tokens: int,
        reporter: Reporter,
    ):
        self.session = session
        self.prompts = prompts
        self.source = source
        self.max_tokens = max_tokens
        self.reporter = reporter
        self.events = reporter.events
        self.say = reporter.say
        self.spent = 0.0  # seconds spent on the policy's rounds in this session
        self.last_cost: float | None = None
        self.skipping = False

    def generate(self, reference: bool) -> tuple[list[str], float]:
        """(the answers, seconds it took): greedy, dropout off, the adapter off for the
        reference; the model's training mode comes back after."""
        model, tokenizer = self.session.model, self.session.tokenizer
        was_training = model.training
        model.eval()
        switch = (
            reference_mode(model, self.session.frozen_adapter)
            if reference
            else contextlib.nullcontext()
        )
        tic = time.perf_counter()
        try:
            with switch:
                answers = [
                    greedy_answer(model, tokenizer, p.tokens, self.max_tokens).text
                    for p in self.prompts
                ]
        finally:
            model.train(was_training)
        return answers, time.perf_counter() - tic

    def start(self, written: list[dict]) -> None:
        """The reference's answers as step 0, unless `written` (the kept stream of a resumed
        run) has them for these prompts already."""
        if not self.prompts:
            return
        texts = [p.text for p in self.prompts]
        if reference_written(written, texts):
            self.say(f"answers to {len(texts)} fixed prompts: the reference's kept from before")
            return
        answers, seconds = self.generate(reference=True)
        self.last_cost = seconds
        self.write(0, [{"prompt": t, "reference": a} for t, a in zip(texts, answers, strict=True)])
        self.say(
            f"answers to {len(texts)} fixed prompts ({self.described_source()}, greedy, up to "
            f"{self.max_tokens} tokens): the reference's in {seconds:.1f}s; the policy's come "
            "at each evaluation (the dashboard's a screen)"
        )

    def at_eval(self, step: int, training_seconds: float, final: bool = False) -> None:
        """The policy's answers at an evaluation (`final`: the end of a finished run), unless
        the round would take generation past MAX_SHARE of `training_seconds` (the time spent
        in training steps in this session). The run reads as evaluating meanwhile."""
        if not self.prompts:
            return
        estimate = self.last_cost or 0.0
        if not final and self.spent + estimate > MAX_SHARE * training_seconds:
            if not self.skipping:
                self.skipping = True
                message = (
                    f"answers to the fixed prompts skipped from step {step}: a round takes "
                    f"{estimate:.1f}s, which would pass {MAX_SHARE:.0%} of the time spent "
                    "training; they come back when under it, and at the end"
                )
                self.events.write("log", step, level="info", message=message)
                self.say(message)
            return
        self.skipping = False
        self.reporter.enter_state(step, "evaluating")
        answers, seconds = self.generate(reference=False)
        self.reporter.enter_state(step, "training")
        self.spent += seconds
        self.last_cost = seconds
        texts = [p.text for p in self.prompts]
        self.write(step, [{"prompt": t, "policy": a} for t, a in zip(texts, answers, strict=True)])
        share = (
            f", {self.spent / training_seconds:.0%} of training time" if training_seconds else ""
        )
        self.say(f"answers at step {step}: {len(answers)} prompts in {seconds:.1f}s{share}")

    def write(self, step: int, prompts: list[dict]) -> None:
        self.events.write(
            "samples",
            step,
            prompts=prompts,
            seconds=self.last_cost,
            max_tokens=self.max_tokens,
            source=self.source,
        )

    def described_source(self) -> str:
        return "the validation split" if self.source == "valid" else self.source


def reference_written(events: list[dict], texts: list[str]) -> bool:
    """Whether a step-0 `samples` event has the reference's answer to each of these prompts."""
    for event in events:
        if event.get("event") != "samples" or event.get("step") != 0:
            continue
        prompts = event.get("prompts") or []
        if [p.get("prompt") for p in prompts] == texts and all(
            p.get("reference") is not None for p in prompts
        ):
            return True
    return False


def start_samples(
    config: TrainConfig,
    session: Session,
    reporter: Reporter,
    written: list[dict],
    enabled: bool = True,
) -> SampleWatch:
    """The run's SampleWatch, its reference answers written (or kept from `written`, the
    stream a resumed run kept). Off (no prompts) with sample_count 0, on ranks other than
    the first (`enabled`), or with neither --sample-prompts nor a validation split: said
    once as a log line."""
    watch = SampleWatch(session, [], "", config.sample_max_tokens, reporter)
    if not enabled or not config.sample_count:
        return watch
    messages = read_sample_prompts(config)
    valid = session.splits.get("valid")
    if messages is not None:
        watch.prompts = file_prompts(session.tokenizer, messages)
        watch.source = str(config.sample_prompts)
    elif valid is not None and len(valid):
        watch.prompts = split_prompts(valid, session.tokenizer, config.sample_count)
        watch.source = "valid"
    else:
        message = (
            "answers to fixed prompts: off (no validation split to take prompts from; "
            "--sample-prompts FILE gives some)"
        )
        reporter.events.write("log", 0, level="info", message=message)
        reporter.say(message)
        return watch
    watch.start(written)
    return watch
