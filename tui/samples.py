"""Answers to fixed prompts, reference next to policy, with what changed marked.

Plain Python: `samples_at(model, step)` pairs each prompt's reference answer with the
policy's at `step`; `word_diff` splits the two answers into kept and changed words.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from .run_model import RunModel


@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str | None
    policy: str | None


def samples_at(model: RunModel, step: int) -> list[Sample]:
    """Each prompt with its reference answer and the policy's answer at `step`."""
    event = model.samples.get(step) or {}
    prompts: list[dict[str, Any]] = event.get("prompts") or []
    result = []
    for index, known in enumerate(model.sample_prompts):
        given = prompts[index] if index < len(prompts) else {}
        reference = given.get("reference") if given.get("reference") is not None else None
        reference = reference if reference is not None else known.get("reference")
        policy = given.get("policy")
        result.append(
            Sample(
                str(given.get("prompt") or known.get("prompt") or ""),
                None if reference is None else str(reference),
                None if policy is None else str(policy),
            )
        )
    return result


def _words(text: str) -> list[str]:
    # Words with their trailing whitespace, so joining the pieces gives the text back.
    return re.findall(r"\S+\s*|\s+", text)


def word_diff(reference: str, policy: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both answers as (text, changed) pieces: in the reference, the words the policy dropped
    or replaced are changed; in the policy, the words it added or replaced."""
    old, new = _words(reference), _words(policy)
    matcher = difflib.SequenceMatcher(a=[w.strip() for w in old], b=[w.strip() for w in new])
    old_pieces: list[tuple[str, bool]] = []
    new_pieces: list[tuple[str, bool]] = []
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        changed = tag != "equal"
        if a1 > a0:
            old_pieces.append(("".join(old[a0:a1]), changed))
        if b1 > b0:
            new_pieces.append(("".join(new[b0:b1]), changed))
    return old_pieces, new_pieces
