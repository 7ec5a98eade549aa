"""A local model as judge: which of two answers is better, asked in both orders.

The judging prompt (JUDGE_PROMPT below, or a file given with --judge-prompt) is filled with
the request and the two answers and sent as one user message through the judge's chat
template (the plain text without one). The judge is not asked to generate: its verdict is
read from its next-token distribution at the answer position, the log-odds of the two labels

    log-odds = log p("A" | judging prompt) − log p("B" | judging prompt)

where "A" and "B" are the first tokens of the assistant answers "A" and "B" as the template
tokenizes them (data.tokenize_record, so exactly what training would see). Positive means
the answer shown first is better.

Each comparison is asked twice, with the answers swapped, to cancel position bias: x wins
when it wins in both orders (log-odds > 0 with x first and < 0 with x second). The
confidence of that verdict is the mean of the two log-odds for x, (lo_xy − lo_yx) / 2; the
position bias is their other half, (lo_xy + lo_yx) / 2. A comparison whose two orders
disagree is inconsistent and yields no pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_dpo.data import Message
from mlx_dpo.errors import UserError
from mlx_dpo.logprobs import HeadSplit
from mlx_dpo.scoring import assistant, next_token_logps, tokenize_answers

LABELS = ("A", "B")
PLACEHOLDERS = ("{prompt}", "{answer_a}", "{answer_b}")

JUDGE_PROMPT = """\
You are comparing two answers to the same request. Decide which answer is better: more \
correct, more helpful, and clearer. Ignore which one comes first and how long each is.

[Request]
{prompt}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Which answer is better? Reply with one letter: A or B."""


def read_judge_prompt(path: str | Path) -> str:
    """A judging prompt from a file: UTF-8 text with each of {prompt}, {answer_a} and
    {answer_b} at least once (filled by plain replacement, so other braces are left alone)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read the judging prompt ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not valid UTF-8 (byte {err.start})") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise UserError(
            f"{path}: the judging prompt must contain {', '.join(PLACEHOLDERS)}; "
            f"missing {', '.join(missing)}"
        )
    return text


def request_text(messages: list[Message]) -> str:
    """The request as the judge reads it: a single user message as it is, otherwise each
    message on its own lines after its role."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def judge_messages(
    template: str, prompt: list[Message], answer_a: str, answer_b: str
) -> list[Message]:
    """The judging prompt filled in, as one user message. The placeholders are replaced in
    one pass, so an answer that itself contains "{answer_b}" is never filled again."""
    values = {
        "{prompt}": request_text(prompt),
        "{answer_a}": answer_a,
        "{answer_b}": answer_b,
    }
    parts, rest = [], template
    while rest:
        found = [(rest.find(p), p) for p in PLACEHOLDERS if p in rest]
        if not found:
            parts.append(rest)
            break
        index, placeholder = min(found)
        parts += [rest[:index], values[placeholder]]
        rest = rest[index + len(placeholder) :]
    return [{"role": "user", "content": "".join(parts)}]


@dataclass
class LabelScores:
    logp_a: float  # log p(label A) at the answer position
    logp_b: float

    @property
    def logodds(self) -> float:
        return self.logp_a - self.logp_b

    @property
    def label_mass(self) -> float:
        """p(A) + p(B): how much of the judge's next-token probability is on the labels
        at all (near 0 means the prompt did not get a letter out of it)."""
        return math.exp(self.logp_a) + math.exp(self.logp_b)


def label_scores(model: Any, tokenizer: Any, messages: list[Message], split: HeadSplit | None):
    """The judge's log-probabilities of the labels "A" and "B" as its answer to `messages`."""
    pair = tokenize_answers(tokenizer, messages, assistant(LABELS[0]), assistant(LABELS[1]))
    if not pair.chosen_ids or not pair.rejected_ids or pair.chosen_ids[0] == pair.rejected_ids[0]:
        raise UserError("the judge's tokenizer does not tell the labels A and B apart")
    # Only the label token itself counts (the end of turn after it would tilt the odds), and
    # both labels follow the same prompt: one forward.
    labels = [pair.chosen_ids[0], pair.rejected_ids[0]]
    return LabelScores(*next_token_logps(model, pair.prompt_ids, labels, split))


@dataclass
class Judgment:
    """The verdict on answers x and y, asked with x first (xy) and with y first (yx)."""

    xy: LabelScores
    yx: LabelScores

    @property
    def winner(self) -> str | None:
        """ "x", "y", or None when the two orders disagree (or a log-odds is exactly 0)."""
        if self.xy.logodds > 0 and self.yx.logodds < 0:
            return "x"
        if self.xy.logodds < 0 and self.yx.logodds > 0:
            return "y"
        return None

    @property
    def confidence(self) -> float:
        """Mean log-odds for the winner over the loser (for x when inconsistent)."""
        for_x = (self.xy.logodds - self.yx.logodds) / 2
        return -for_x if self.winner == "y" else for_x

    @property
    def position_bias(self) -> float:
        """Mean log-odds for whichever answer is shown first."""
        return (self.xy.logodds + self.yx.logodds) / 2

    def as_dict(self) -> dict[str, Any]:
        return {
            "winner": self.winner,
            "confidence": self.confidence,
            "position_bias": self.position_bias,
            "logodds_xy": self.xy.logodds,
            "logodds_yx": self.yx.logodds,
            "label_mass_xy": self.xy.label_mass,
            "label_mass_yx": self.yx.label_mass,
        }


def judge_pair(
    model: Any,
    tokenizer: Any,
    template: str,
    prompt: list[Message],
    x: str,
    y: str,
    split: HeadSplit | None,
) -> Judgment:
    """Both orders of one comparison."""
    xy = label_scores(model, tokenizer, judge_messages(template, prompt, x, y), split)
    yx = label_scores(model, tokenizer, judge_messages(template, prompt, y, x), split)
    return Judgment(xy, yx)
