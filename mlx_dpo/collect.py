"""`mlx-dpo collect` without its screen: the verdicts a person gives on two answers, as records.

Plain Python (the dashboard in tui/collect uses it; it never imports MLX). For each prompt two
answers A and B are shown: two samples of the model (independent seeds), or the reference's
and the adapter's policy's answer (one seed for both). The person's verdict becomes one line:

    a / b       A better / B better: a pair (chosen = the better answer) in OUT.jsonl
    edit        an answer edited and kept as chosen; rejected = the other answer (the edited
                answer's original text is kept in meta.edited)
    tie         skipped, both answers kept in meta.answers, in OUT.skipped.jsonl
    both_bad    the same, marked both bad

meta (every verdict): tool, item (the prompt's key), verdict, time, model, adapter, mode
("samples" or "adapter"), labels (what A and B are), sampling (temp, top_p, max_tokens),
seed (the base seed), draw (how many times the prompt was regenerated), seeds {a, b},
finish {a, b} ("stop" or "length"), tokens {a, b} (generated), prompt_source (file:line), model_preference (see
mlx_dpo/scoring.py: logp_a, logp_b, margin, prefers ...), agrees (whether the person's choice
is the model's preference; null for tie and both bad), and seq (the order of verdicts).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mlx_dpo.data import validate_record
from mlx_dpo.journal import VerdictFiles
from mlx_dpo.prompts import Prompt, make_prompt, prompt_field, prompt_from_record

TOOL = "mlx-dpo collect"
# verdict -> what the footer calls it
VERDICTS = {
    "a": "A better",
    "b": "B better",
    "tie": "tie",
    "both_bad": "both bad",
    "edit": "edit",
}
PAIR_VERDICTS = ("a", "b", "edit")
SIDES = ("a", "b")


class VerdictRefused(Exception):
    """The verdict cannot make a valid pair (the reason says why, for the person)."""


@dataclass
class Shown:
    """The two answers on screen for one prompt."""

    prompt: Prompt
    draw: int = 0
    seeds: dict[str, int] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=lambda: {"a": "", "b": ""})
    finish: dict[str, str] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    preference: dict[str, Any] | None = None

    @property
    def complete(self) -> bool:
        return all(side in self.finish for side in SIDES)


def other(side: str) -> str:
    return "b" if side == "a" else "a"


def verdict_record(
    shown: Shown,
    verdict: str,
    settings: dict[str, Any],
    edited: tuple[str, str] | None = None,
) -> tuple[dict[str, Any], bool]:
    """(record, is_pair) for a verdict on what is shown. `settings`: model, adapter, mode,
    labels, sampling, seed (copied into meta). `edited`: (side, new text) for "edit".
    Raises VerdictRefused when the pair would not be valid training data (an empty answer,
    two identical answers)."""
    if verdict not in VERDICTS:
        raise ValueError(f"unknown verdict {verdict!r}")
    preference = shown.preference
    meta: dict[str, Any] = {
        "tool": TOOL,
        "item": shown.prompt.key,
        "verdict": verdict,
        "time": time.time(),
        **settings,
        "draw": shown.draw,
        "seeds": dict(shown.seeds),
        "finish": dict(shown.finish),
        "tokens": dict(shown.tokens),
        "prompt_source": shown.prompt.source,
        "model_preference": preference,
    }
    record: dict[str, Any] = prompt_field(shown.prompt.messages)
    if verdict not in PAIR_VERDICTS:
        meta["answers"] = dict(shown.answers)
        meta["agrees"] = None
        record["meta"] = meta
        return record, False
    if verdict == "edit":
        if edited is None:
            raise ValueError("an edit verdict needs the edited side and text")
        side, text = edited
        chosen, rejected = text, shown.answers[other(side)]
        meta["edited"] = {"side": side, "original": shown.answers[side]}
        chosen_side = side
    else:
        chosen_side = verdict
        chosen, rejected = shown.answers[verdict], shown.answers[other(verdict)]
    record.update(chosen=chosen, rejected=rejected)
    _, problems = validate_record("", record, {})
    if problems:
        raise VerdictRefused(_refusal(chosen, rejected, verdict))
    prefers = preference.get("prefers") if preference else None
    meta["agrees"] = None if prefers in (None, "none") else prefers == chosen_side
    record["meta"] = meta
    return record, True


def _refusal(chosen: str, rejected: str, verdict: str) -> str:
    if not chosen.strip() or not rejected.strip():
        which = "the edited answer" if verdict == "edit" and not chosen.strip() else "an answer"
        return f"{which} is empty: a pair needs two answers with text; regenerate, edit or skip"
    return "the two answers are the same: regenerate, edit one, or skip (tie)"


def shown_from_record(record: dict[str, Any], prompts: dict[str, Prompt]) -> Shown:
    """What was on screen when a verdict was given (for undo): its prompt, answers, seeds."""
    meta = record["meta"]
    prompt = prompts.get(meta["item"]) or make_prompt(
        meta.get("prompt_source", "?"), prompt_from_record(record)
    )
    if meta["verdict"] not in PAIR_VERDICTS:
        answers = dict(meta["answers"])
    elif meta["verdict"] == "edit":
        side = meta["edited"]["side"]
        answers = {side: meta["edited"]["original"], other(side): record["rejected"]}
    else:
        side = meta["verdict"]
        answers = {side: record["chosen"], other(side): record["rejected"]}
    return Shown(
        prompt,
        draw=meta.get("draw", 0),
        seeds=dict(meta.get("seeds", {})),
        answers=answers,
        finish=dict(meta.get("finish") or {"a": "stop", "b": "stop"}),
        tokens=dict(meta.get("tokens") or {}),
        preference=meta.get("model_preference"),
    )


@dataclass
class Progress:
    judged: int  # prompts of this file with a verdict
    total: int
    pairs: int  # verdicts that made a pair (all in the file, this session's and earlier)
    skipped: int
    agreed: int  # pair verdicts where the person chose what the model prefers
    compared: int  # pair verdicts with a model preference to compare with

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None


def progress(files: VerdictFiles, prompts: list[Prompt]) -> Progress:
    verdicts = [r for r in files.verdicts() if r["meta"].get("tool") == TOOL]
    done = {r["meta"]["item"] for r in verdicts}
    pairs = [r for r in verdicts if r["meta"]["verdict"] in PAIR_VERDICTS]
    compared = [r for r in pairs if r["meta"].get("agrees") is not None]
    return Progress(
        judged=sum(p.key in done for p in prompts),
        total=len(prompts),
        pairs=len(pairs),
        skipped=len(verdicts) - len(pairs),
        agreed=sum(bool(r["meta"]["agrees"]) for r in compared),
        compared=len(compared),
    )


def next_prompt(prompts: list[Prompt], done: set[str]) -> Prompt | None:
    """The first prompt without a verdict, in file order."""
    return next((p for p in prompts if p.key not in done), None)
